"""Video Swin-B, Kinetics-400 (swin_base_patch244_window877_kinetics400_22k).

Official `configs/recognition/swin/swin_base_patch244_window877_kinetics400_22k.py`
(SwinTransformer/Video-Swin-Transformer): patch 2x4x4, window 8x7x7, 32x2 clips, 4 clips x 3 crops
at test with softmax averaging. Init: the 2D ImageNet-22K Swin-B
(swin_base_patch4_window7_224_22k.pth), inflated (`--config.init_from=` that .pth: patch kernel
averaged over time, bias tables tiled).
Fields not set here are those of `configs/swin_base_patch244_window877_kinetics400_1k.py`.
"""
from vtx import config


def get_config():
    c = config.get('swin_base_patch244_window877_kinetics400_1k')
    c.model.drop_path_rate = 0.2
    c.optimizer.learning_rate = 3e-4
    return c

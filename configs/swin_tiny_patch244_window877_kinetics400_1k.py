"""Video Swin-T, Kinetics-400 (swin_tiny_patch244_window877_kinetics400_1k).

Official `configs/recognition/swin/swin_tiny_patch244_window877_kinetics400_1k.py`
(SwinTransformer/Video-Swin-Transformer): patch 2x4x4, window 8x7x7, 32x2 clips, 4 clips x 3 crops
at test with softmax averaging. Init: the 2D ImageNet-1K Swin-T (swin_tiny_patch4_window7_224.pth),
inflated (`--config.init_from=` that .pth: patch kernel averaged over time, bias tables tiled).
Fields not set here are those of `configs/swin_base_patch244_window877_kinetics400_1k.py`.
"""
from vtx import config


def get_config():
    c = config.get('swin_base_patch244_window877_kinetics400_1k')
    c.model.embed_dim = 96
    c.model.depths = (2, 2, 6, 2)
    c.model.num_heads = (3, 6, 12, 24)
    c.model.drop_path_rate = 0.1

    c.train.batch_size = 256  # 8 GPUs x 8 clips x update_interval 4 (apex O1 fp16)
    c.train.grad_accum_steps = 4
    c.optimizer.weight_decay = 0.02
    return c

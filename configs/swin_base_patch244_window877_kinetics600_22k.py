"""Video Swin-B, Kinetics-600 (swin_base_patch244_window877_kinetics600_22k).

Official `configs/recognition/swin/swin_base_patch244_window877_kinetics600_22k.py`
(SwinTransformer/Video-Swin-Transformer): the recipe of the Kinetics-400 ImageNet-22K entry on
Kinetics-600, from the same inflated 2D ImageNet-22K Swin-B (swin_base_patch4_window7_224_22k.pth
as `--config.init_from`). Fields not set here are those of
`configs/swin_base_patch244_window877_kinetics400_22k.py`.
"""
from vtx import config


def get_config():
    c = config.get('swin_base_patch244_window877_kinetics400_22k')
    c.model.num_classes = 600

    c.data.num_classes = 600
    c.data.num_train_examples = 392622  # Kinetics-600 train clips as released; set your copy's
    return c

"""TPS Swin-T 2D, Something-Something v1 (tps_swin_tiny_2D_patch244_sthv1).

Official MartinXM/TPS: `configs/recognition/tps/swin_tiny_2D_patch244_tps_sthv1_1k.py`. 2D Swin with
window 1x7x7, temporal patch shift in odd blocks and channel shift in even blocks; patch 2x4x4 on
32-frame clips (exactly 16 frame tokens). Uniform 32-segment sampling, 1 clip x 3 crops at test,
softmax averaging. Init: a Kinetics-400 TPS model (`load_from`), converted and passed as
`--config.init_from`. The recipe is the Something-Something v2 one: fields not set here are those
of `configs/tps_swin_tiny_2D_patch244_sthv2.py`.
"""
from vtx import config


def get_config():
    c = config.get('tps_swin_tiny_2D_patch244_sthv2')
    c.data.num_train_examples = 86017  # Something-Something v1 train videos
    return c

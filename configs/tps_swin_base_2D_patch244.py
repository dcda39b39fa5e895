"""TPS Swin-B 2D, Kinetics-400 (tps_swin_base_2D_patch244).

Official MartinXM/TPS: `configs/_base_/models/swin/swin_base_2D_tps.py with the Swin-T recognition
recipe (no official recognition config uses it)`. 2D Swin with window 1x7x7, temporal patch shift in
odd blocks and channel shift in even blocks; patch 2x4x4 on 32-frame clips (exactly 16 frame
tokens). 32x2 clips, 4 clips x 3 crops at test, softmax averaging. Init: the 2D ImageNet Swin-B,
inflated (`--config.init_from=` its .pth).
Fields not set here are those of `configs/tps_swin_tiny_2D_patch244_k400.py`.
"""
from vtx import config


def get_config():
    c = config.get('tps_swin_tiny_2D_patch244_k400')
    c.model.embed_dim = 128
    c.model.depths = (2, 2, 18, 2)
    c.model.num_heads = (4, 8, 16, 32)
    return c

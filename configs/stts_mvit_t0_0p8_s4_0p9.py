"""STTS on MViT-B 16x4, Kinetics-400: zoo entry MViT-T0_0.8-S4_0.9 (official `t0_0.8_s4_0.9.yaml`).

Module name = the zoo name with '-' -> '_' and '.' -> 'p' (dots are not valid in module names).
Temporal selection before block 0 keeps int(8 x 0.75) = 6 of the 8 patch frames; fields not set
here are those of `configs/stts_mvit_t0_0p9_s4_0p9.py`.
"""
from vtx import config


def get_config():
    c = config.get('stts_mvit_t0_0p9_s4_0p9')
    c.model.time_left_ratio = 0.75
    return c

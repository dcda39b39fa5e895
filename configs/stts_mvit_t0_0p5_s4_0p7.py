"""STTS on MViT-B 16x4, Kinetics-400: zoo entry MViT-T0_0.5-S4_0.7 (official `t0_0.5_s4_0.7.yaml`).

Module name = the zoo name with '-' -> '_' and '.' -> 'p' (dots are not valid in module names).
Temporal selection before block 0 keeps int(8 x 0.5) = 4 of the 8 patch frames; spatial selection
before block 4 keeps one 12x12 window (int(196 x 0.7367) = 144 tokens) per frame of the 14x14 grid.
Fields not set here are those of `configs/stts_mvit_t0_0p9_s4_0p9.py`.
"""
from vtx import config


def get_config():
    c = config.get('stts_mvit_t0_0p9_s4_0p9')
    c.model.time_left_ratio = 0.5
    c.model.space_left_ratio = 0.7367
    return c

"""STTS on Video Swin-B, Kinetics-400: zoo entry VideoSwin-T0_0.5 (official `t0_0.5625.py`).

Module name = the zoo name with '-' -> '_' and '.' -> 'p' (dots are not valid in module names).
Keeps int(32 // 2 x 0.5625) = 9 of the 16 patch frames before stage 0; everything else is
`configs/stts_videoswin_t0_0p9.py` (the official configs differ only in this ratio).
"""
from vtx import config


def get_config():
    c = config.get('stts_videoswin_t0_0p9')
    c.model.time_left_ratio = 0.5625
    return c

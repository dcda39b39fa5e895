"""STTS on MViT-B 16x4, Kinetics-400: zoo entry MViT-T0_0.9-S4_0.9 (official `t0_0.9_s4_0.9.yaml`).

Module name = the zoo name with '-' -> '_' and '.' -> 'p' (dots are not valid in module names).
Temporal selection before block 0 keeps int(8 x 0.875) = 7 of the 8 patch frames; spatial
selection before block 4 keeps one 13x13 window (int(196 x 0.863) = 169 tokens) per frame
of the 14x14 grid. Fine-tunes MViT-B (`--config.init_from`, the official TRAIN.FINETUNE) with the
recipe of `configs/mvit_b_16x4_k400.py`; top-k sigma 0.1 decaying linearly to 0.
The other MViT-T0-S4 entries import this one and change only the keep ratios.
"""
from vtx import config


def get_config():
    c = config.get('mvit_b_16x4_k400')
    c.model.time_pruning_loc = 0
    c.model.time_left_ratio = 0.875
    c.model.space_pruning_loc = 4
    c.model.space_left_ratio = 0.863
    c.model.selection_sigma = 0.1
    c.model.selection_sigma_decay = True
    return c

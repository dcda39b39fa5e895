"""ViT (Video) Base16 224 & 8: the video-ViT baseline, no shift (TokShift zoo, Kinetics-400).

Official config `k400_vit_8x32_224.yml`: ViT-B/16 on 8 frames x 224^2,
ImageNet-21k init (`--config.init_from=ViT-B_16_Img21.npz`), SGD with gradient accumulation
over 10 batches. The recipe of `configs/tokshift_b16_224_8f.py` without the token shift.
"""
from vtx import config


def get_config():
    c = config.get('tokshift_b16_224_8f')
    c.model.temporal = 'none'
    return c

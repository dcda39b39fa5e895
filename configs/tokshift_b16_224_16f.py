"""TokShift Base16 224 & 16 (TokShift-Transformer zoo, Kinetics-400).

Official config `k400_tokshift_div4_16x32_base_224.yml`: ViT-B/16 on 16 frames x 224^2,
ImageNet-21k init (`--config.init_from=ViT-B_16_Img21.npz`), SGD with gradient accumulation
over 10 batches.
Fields not set here are those of `configs/tokshift_b16_224_8f.py`.
"""
from vtx import config


def get_config():
    c = config.get('tokshift_b16_224_8f')
    c.model.num_frames = 16
    c.data.num_frames = 16

    # 3 clips x 4 GPUs per iteration, an optimizer step every 10 iterations.
    c.train.batch_size = 120
    c.optimizer.learning_rate = 0.03
    return c

"""TokShift-Large (HR) Large16 384 & 12 (TokShift-Transformer zoo, Kinetics-400).

Official config `k400_tokshift_div4_12x32_large_384.yml`: ViT-L/16 on 12 frames x 384^2,
ImageNet-21k init (`--config.init_from=ViT-L_16_Img21.npz`), SGD with gradient accumulation
over 10 batches.
Fields not set here are those of `configs/tokshift_b16_224_8f.py`.
"""
from vtx import config


def get_config():
    c = config.get('tokshift_b16_224_8f')
    c.model.num_frames = 12
    c.model.image_size = 384
    c.model.hidden_size = 1024
    c.model.mlp_dim = 4096
    c.model.num_heads = 16
    c.model.num_layers = 24

    c.data.num_frames = 12
    c.data.min_resize = 384  # test: short side 384, then 3 crops of 384
    c.data.crop_size = 384
    c.data.train_scale_range = (384, 512)  # random short side, then a random 384 crop

    # 1 clip x 8 GPUs per iteration, an optimizer step every 10 iterations.
    c.train.batch_size = 80
    c.optimizer.learning_rate = 0.03
    return c

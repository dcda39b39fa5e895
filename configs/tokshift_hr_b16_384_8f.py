"""TokShift (HR) Base16 384 & 8 (TokShift-Transformer zoo, Kinetics-400).

Official config `k400_tokshift_div4_8x32_base_384.yml`: ViT-B/16 on 8 frames x 384^2,
ImageNet-21k init (`--config.init_from=ViT-B_16_Img21.npz`), SGD with gradient accumulation
over 10 batches.
Fields not set here are those of `configs/tokshift_b16_224_8f.py`.
"""
from vtx import config


def get_config():
    c = config.get('tokshift_b16_224_8f')
    c.model.image_size = 384

    c.data.min_resize = 384  # test: short side 384, then 3 crops of 384
    c.data.crop_size = 384
    c.data.train_scale_range = (384, 512)  # random short side, then a random 384 crop

    # 1 clip x 8 GPUs per iteration, an optimizer step every 10 iterations.
    c.train.batch_size = 80
    c.optimizer.learning_rate = 0.01
    return c

"""TPS Swin-T 2D, Something-Something v2 (tps_swin_tiny_2D_patch244_sthv2).

Official MartinXM/TPS: `configs/recognition/tps/swin_tiny_2D_patch244_tps_sthv2_1k.py`. 2D Swin with
window 1x7x7, temporal patch shift in odd blocks and channel shift in even blocks; patch 2x4x4 on
32-frame clips (exactly 16 frame tokens). Uniform 32-segment sampling, 1 clip x 3 crops at test,
softmax averaging. Init: a Kinetics-400 TPS model (`load_from`), converted and passed as
`--config.init_from`.
Fields not set here are those of `configs/tps_swin_tiny_2D_patch244_k400.py`.
"""
from vtx import config


def get_config():
    c = config.get('tps_swin_tiny_2D_patch244_k400')
    c.model.num_classes = 174

    c.data.num_classes = 174
    c.data.num_train_examples = 168913  # Something-Something v2 train videos
    c.data.sampling = 'uniform'  # 32 equal segments: random frame in each (train), middle (test)
    c.data.stride = 1  # not used by 'uniform' sampling
    # The official flips and swaps the labels of left/right classes (lazy_label); vtx cannot
    # swap labels, so it does not flip.
    c.data.random_flip = False
    c.data.random_erasing = 0.25
    # The official also applies Imgaug('default'), which vtx does not implement.
    c.data.eval_num_clips = 1

    c.train.label_smoothing = 0.1
    return c

"""Video Swin-B, Something-Something v2 (swin_base_patch244_window1677_sthv2).

Official `configs/recognition/swin/swin_base_patch244_window1677_sthv2.py` (SwinTransformer/Video-
Swin-Transformer): window 16x7x7 (the temporal window spans the 16 frame tokens, so no temporal
shift), uniform 32-segment sampling, 1 clip x 3 crops at test. Init: the Kinetics-400 Video Swin-B
`swin_base_patch244_window1677_kinetics400_22k` (`load_from`, its 400-class head skipped): convert
it with `python -m convert` and pass `--config.init_from`.
Fields not set here are those of `configs/swin_base_patch244_window877_kinetics400_1k.py`.
"""
from vtx import config


def get_config():
    c = config.get('swin_base_patch244_window877_kinetics400_1k')
    c.model.num_classes = 174
    c.model.window_size = (16, 7, 7)
    c.model.drop_path_rate = 0.4

    c.data.num_classes = 174
    c.data.num_train_examples = 168913  # Something-Something v2 train videos
    c.data.sampling = 'uniform'  # 32 equal segments: random frame in each (train), middle (test)
    c.data.stride = 1  # not used by 'uniform' sampling
    c.data.random_flip = False  # Flip(flip_ratio=0)
    c.data.randaugment_layers = 4  # RandAugment(n=4, m=7)
    c.data.randaugment_magnitude = 7
    c.data.random_erasing = 0.25
    c.data.eval_num_clips = 1

    c.train.num_epochs = 60
    c.train.label_smoothing = 0.1
    c.optimizer.learning_rate = 3e-4
    return c

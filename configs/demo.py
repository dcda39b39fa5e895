"""The built-in demo: a small TokShift learns the direction of motion on synthetic videos.

The label (left/right/up/down) can only be told from motion, so the same config with
`--config.model.temporal=none` (the video-ViT baseline, frames mixed only by the final logit
average) stays near chance. The data is generated on first use (no download) into data.*_shards.
"""
import os

from vtx import config


def get_config():
    c = config.defaults()
    root = os.path.join(os.environ.get('VTX_DATA_DIR', os.path.expanduser('~/.cache/vtx')), 'demo_motion_v2')
    c.data.synthetic = 'motion'  # generated on first use (data/synthetic.py)
    c.data.synthetic_num_train = 2000
    c.data.synthetic_num_eval = 400
    c.data.synthetic_frame_size = 16
    c.data.synthetic_target_size = 2
    c.data.synthetic_speed = (1, 1)
    c.data.synthetic_num_distractors = (0, 0)
    c.data.train_shards = os.path.join(root, 'train-*-of-*')
    c.data.eval_shards = os.path.join(root, 'eval-*-of-*')
    c.data.num_classes = 4
    c.data.num_train_examples = 2000
    c.data.num_frames = 8
    c.data.stride = 1
    c.data.min_resize = 16
    c.data.crop_size = 16
    c.data.train_scale_range = (16, 16)
    c.data.random_flip = False  # a flip turns 'left' into 'right'
    c.data.shard_short_side = 0  # the synthetic frames are stored at their final size
    c.data.zero_centering = True

    c.model = config.model_defaults('vit')
    c.model.temporal = 'token_shift'
    c.model.shift_div = 4
    c.model.num_classes = 4
    c.model.num_frames = 8
    c.model.image_size = 16
    c.model.patch_size = 4
    c.model.hidden_size = 64
    c.model.mlp_dim = 128
    c.model.num_heads = 4
    c.model.num_layers = 4

    c.train.batch_size = 32
    c.train.eval_batch_size = 50
    c.train.num_epochs = 40
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 200
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_epochs = 1
    c.optimizer.grad_clip_norm = 1.0
    return c

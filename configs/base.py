"""Defaults shared by every vtx config. Zoo configs override only what their paper states.

Units follow the papers: schedules are in epochs (converted to steps with
`data.num_train_examples` and `train.batch_size`), learning rates are for the global batch.
"""
import dataclasses

import ml_collections


def model_config(name: str) -> ml_collections.ConfigDict:
    """`config.model` for family `name` with every constructor field at its default, so any of
    them can be overridden from the command line; a zoo config then sets its paper's values."""
    from vtx.models import model_class
    fields = {f.name: f.default for f in dataclasses.fields(model_class(name))
              if f.name not in ('parent', 'name') and f.default is not dataclasses.MISSING}
    if 'dtype' in fields:
        fields['dtype'] = 'float32'
    return ml_collections.ConfigDict({'name': name, **fields})


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # A vtx params checkpoint (written by `python -m convert` or a vtx run), an ImageNet .npz
    # (ViT families) or a 2D ImageNet Swin .pth (inflated); '' trains from scratch.
    c.init_from = ''
    c.distributed = False  # call jax.distributed.initialize (TPU pods and SLURM auto-detect)

    c.model = ml_collections.ConfigDict({'name': ''})  # a zoo config sets model_config(family)

    c.data = ml_collections.ConfigDict()
    c.data.train_shards = ''   # glob(s) of DMVR shards, comma-separated
    c.data.eval_shards = ''
    c.data.tfds_name = ''      # alternative source: a prepared TFDS dataset with a video feature
    c.data.tfds_data_dir = ''
    c.data.tfds_train_split = 'train'
    c.data.tfds_eval_split = 'test'
    c.data.tfds_video_key = ''   # '' = the dataset's only Video feature
    c.data.tfds_label_key = ''   # '' = its only ClassLabel feature
    c.data.synthetic = ''      # name of a built-in synthetic set generated when shards are missing
    # How the shards were built (data/build_*.py --fps/--short_side/--qscale): vtx.predict makes
    # the same frames from a video file. fps 0: the native rate; short side 0: keep the size.
    c.data.shard_fps = 0.0
    c.data.shard_short_side = 256
    c.data.shard_qscale = 2
    c.data.num_classes = 0
    c.data.num_train_examples = 0
    c.data.num_frames = 8
    c.data.stride = 1
    c.data.sampling = 'dense'  # 'dense' (stride) or 'uniform' (TSN/SSv2 segments)
    c.data.min_resize = 256    # test short side
    c.data.crop_size = 224
    c.data.train_scale_range = (256, 320)  # short side before the random crop (scale jitter)
    c.data.random_resized_crop = False
    c.data.random_resized_crop_area = (0.08, 1.0)
    c.data.random_flip = True
    c.data.zero_centering = False  # [-1, 1] instead of [0, 1]
    c.data.normalization_mean = (0.0, 0.0, 0.0)
    c.data.normalization_std = (1.0, 1.0, 1.0)
    c.data.randaugment_layers = 0
    c.data.randaugment_magnitude = 0
    c.data.random_erasing = 0.0
    c.data.mixup_alpha = 0.0
    c.data.cutmix_alpha = 0.0
    c.data.eval_num_clips = 1
    c.data.eval_num_crops = 1
    c.data.eval_aggregation = 'logits'  # average 'logits' or softmax 'probs' over views
    c.data.shuffle_buffer = 256
    # Input readers, each over a disjoint subset of the shards; the global batch is the
    # concatenation of their batches. 0: one per process. Fixing it makes the data order
    # independent of how many processes run the job (each process runs readers/processes).
    c.data.num_readers = 0
    c.data.skip_bad_records = False

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64          # global, across all hosts
    c.train.eval_batch_size = 64
    c.train.num_epochs = 30.0
    c.train.num_steps = 0            # > 0 overrides num_epochs
    c.train.grad_accum_steps = 1
    c.train.label_smoothing = 0.0
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 0     # 0: only at the end
    c.train.checkpoint_every_steps = 1000
    c.train.keep_checkpoints = 3

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = 'adamw'       # 'adamw' or 'sgd'
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9       # sgd
    c.optimizer.nesterov = False
    c.optimizer.b1 = 0.9             # adamw
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    # Parameters whose path matches any of these regexes get no weight decay.
    c.optimizer.no_decay = (r'bias$', r'scale$', r'norm', r'pos_embed', r'cls_token',
                            r'relative_position_bias_table')
    # Learning-rate multipliers: '(regex, multiplier)' pairs, first match wins (mmcv's rule).
    c.optimizer.lr_multipliers = ()
    c.optimizer.grad_clip_norm = 0.0
    c.optimizer.schedule = 'cosine'  # 'cosine', 'step' or 'constant'
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_start_factor = 0.0
    c.optimizer.step_epochs = ()     # 'step': epochs at which lr *= step_factor
    c.optimizer.step_factor = 0.1
    c.optimizer.cosine_end_factor = 0.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.model_axis_size = 1       # devices on the 'model' axis; the rest form 'data'
    c.mesh.param_sharding = 'replicated'  # or 'fsdp': large kernels sharded over 'data'
    c.mesh.fsdp_min_size = 2 ** 18   # parameters with fewer elements stay replicated
    return c

"""STTS on Video Swin-B, Kinetics-400: zoo entry VideoSwin-T0_0.9 (official `t0_0.875.py`).

Module name = the zoo name with '-' -> '_' and '.' -> 'p' (dots are not valid in module names).
The other VideoSwin-T0 entries import this one and change only `time_left_ratio`, as the official
configs share `swin_base.py`. Temporal selection before stage 0 keeps int(32 // 2 x 0.875) = 14
of the 16 patch frames. Fine-tunes a Kinetics-400 Video Swin-B (`--config.init_from`, the
official `load_from`). Recipe of the mmcv config: AdamW 3e-4, 10 epochs, 0.8-epoch linear warmup
(mmcv's default warmup ratio 0.1), cosine to 0, 8 videos x 8 GPUs x 8 accumulation steps
(DistOptimizerHook update_interval = 8; the 8 GPUs are Video Swin's documented setup), the
predictor at lr x 0.001 (as written in the config), top-k sigma 0.05 decaying linearly to 0.
"""
from vtx import config


def get_config():
    c = config.defaults()
    c.model = config.model_defaults('stts_video_swin')
    c.model.num_classes = 400
    c.model.patch_size = (2, 4, 4)
    c.model.embed_dim = 128
    c.model.depths = (2, 2, 18, 2)
    c.model.num_heads = (4, 8, 16, 32)
    c.model.window_size = (8, 7, 7)
    c.model.mlp_ratio = 4.0
    c.model.qkv_bias = True
    c.model.patch_norm = True
    c.model.drop_path_rate = 0.2
    c.model.head_dropout_rate = 0.5
    c.model.time_left_ratio = 0.875
    c.model.num_frames = 32
    c.model.selection_sigma = 0.05
    c.model.selection_sigma_decay = True

    c.data.num_classes = 400
    c.data.num_train_examples = 240436  # Kinetics-400 train clips; set to your copy's count
    c.data.num_frames = 32
    c.data.stride = 2
    c.data.sampling = 'dense'
    c.data.min_resize = 224             # test: short side 224, then 3 crops of 224
    c.data.crop_size = 224
    c.data.train_scale_range = (256, 256)
    c.data.random_resized_crop = True
    c.data.random_flip = True
    c.data.normalization_mean = (0.485, 0.456, 0.406)  # (123.675, 116.28, 103.53) / 255
    c.data.normalization_std = (0.229, 0.224, 0.225)   # (58.395, 57.12, 57.375) / 255
    c.data.eval_num_clips = 4
    c.data.eval_num_crops = 3
    c.data.eval_aggregation = 'probs'
    c.data.test_protocol = 'mmaction'  # STTS's VideoSwin copy of mmaction's test pipeline

    c.train.batch_size = 512
    c.train.grad_accum_steps = 8
    c.train.num_epochs = 10
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 3e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.05
    # mmcv custom_keys: decay_mult 0 for names containing 'norm' (the scorer's LayerNorm is
    # 'in_conv.0' there, so it keeps its decay) and for relative_position_bias_table.
    c.optimizer.no_decay = (r'relative_position_bias_table', r'^(?!.*_selection/).*norm')
    c.optimizer.lr_multipliers = ((r'_selection/', 0.001),)
    c.optimizer.grad_clip_norm = 0.0
    c.optimizer.schedule = 'cosine'
    c.optimizer.warmup_epochs = 0.8
    c.optimizer.warmup_start_factor = 0.1
    c.optimizer.cosine_end_factor = 0.0
    return c

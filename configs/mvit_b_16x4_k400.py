"""MViT-B 16x4 on Kinetics-400 (Fan et al., ICCV 2021), plain (no token selection).

The backbone the STTS MViT entries fine-tune, as built by the STTS code base with selection off
(`parity/full/MViT-B_16x4_plain_no_selection.json`). Data protocol and recipe are those of the
STTS yamls (SlowFast Kinetics loader): 16 frames at stride 4, AdamW, 20 epochs at batch 16.
Known gaps: the official backbone lr is 0 for the first 3 epochs and then min(cosine lr,
0.1 x BASE_LR); here the backbone follows the cosine at 0.1 x BASE_LR throughout (vtx has one
schedule with constant per-group multipliers). AUG.NUM_SAMPLE = 2 (two augmented copies of each
decoded clip per batch) has no vtx field.
"""
from vtx import config


def get_config():
    c = config.defaults()
    c.model = config.model_defaults('mvit')
    c.model.num_classes = 400
    c.model.num_frames = 16
    c.model.image_size = 224
    c.model.embed_dim = 96
    c.model.num_heads = 1
    c.model.depth = 16
    c.model.mlp_ratio = 4.0
    c.model.dim_mul = ((1, 2.0), (3, 2.0), (14, 2.0))
    c.model.head_mul = ((1, 2.0), (3, 2.0), (14, 2.0))
    c.model.pool_q_stride = ((1, 1, 2, 2), (3, 1, 2, 2), (14, 1, 2, 2))
    c.model.pool_kvq_kernel = (3, 3, 3)
    c.model.pool_kv_stride_adaptive = (1, 8, 8)
    c.model.drop_path_rate = 0.2
    c.model.dropout_rate = 0.5

    c.data.num_classes = 400
    c.data.num_train_examples = 240436  # Kinetics-400 train list as distributed; set to your copy
    c.data.num_frames = 16
    c.data.stride = 4
    c.data.sampling = 'dense'
    c.data.min_resize = 256
    c.data.crop_size = 224
    c.data.train_scale_range = (256, 320)
    c.data.random_resized_crop = True   # relative scale [0.08, 1], aspect [0.75, 1.333]
    c.data.random_flip = True
    c.data.normalization_mean = (0.45, 0.45, 0.45)
    c.data.normalization_std = (0.225, 0.225, 0.225)
    c.data.randaugment_layers = 4       # rand-m7-n4-mstd0.5-inc1
    c.data.randaugment_magnitude = 7
    c.data.random_erasing = 0.25
    c.data.mixup_alpha = 0.8
    c.data.cutmix_alpha = 1.0
    c.data.eval_num_clips = 10
    c.data.eval_num_crops = 1
    c.data.eval_aggregation = 'probs'   # softmax scores summed over views
    c.data.test_protocol = 'slowfast_stts'  # PyAV segment decode, offset sampling, 30 fps

    c.train.batch_size = 16
    c.train.num_epochs = 20
    c.train.label_smoothing = 0.1
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 1e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.05
    # ZERO_WD_1D_PARAM: biases and 1-D params get no decay, except in the STTS predictor group;
    # cls_token and position embeddings are decayed (ZERO_DECAY_POS_CLS = False).
    c.optimizer.no_decay = (r'^(?!.*_selection/).*(bias|scale)$',)
    # STTS predictors at BASE_LR, the backbone at BACKBONE_LR = 0.1 x BASE_LR.
    c.optimizer.lr_multipliers = ((r'_selection/', 1.0), (r'.*', 0.1))
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.schedule = 'cosine'
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.cosine_end_factor = 0.01  # COSINE_END_LR 1e-6 of BASE_LR 1e-4
    return c

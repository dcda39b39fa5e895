"""XViT-B/16, 16 frames, Kinetics-600 (xvit_b16_16_k600: 84.5 top-1 at 3x1 views).

Official `configs/Kinetics/xvit_B16_16x16_k600.yaml` (1adrianb/video-transformers): space-time
mixing of keys and values in all 12 blocks, in two independent 8-frame shift groups per 16-frame
clip (NUM_SEGMENTS 8), SHIFT_DIV 8; 8-entry temporal embedding; 1-layer temporal transformer head.
Fine-tuned from ImageNet-21k ViT-B/16: `--config.init_from=` the timm
`jx_vit_base_patch16_224_in21k` .pth or the original .npz.
The other XViT zoo configs build on this one and set only what their official configs change.
"""
from vtx import config


def get_config():
    c = config.defaults()
    c.model = config.model_defaults('xvit')
    c.model.num_classes = 600
    c.model.image_size = 224
    c.model.patch_size = 16
    c.model.hidden_size = 768
    c.model.mlp_dim = 3072
    c.model.num_heads = 12
    c.model.num_layers = 12
    c.model.num_segments = 8
    c.model.shift_div = 8
    c.model.mixing_layers = tuple(range(12))
    c.model.temporal_embedding_size = 8
    c.model.head_num_layers = 1
    c.model.head_num_heads = 12
    c.model.head_mlp_dim = 768
    c.model.dropout_rate = 0.5

    c.data.num_classes = 600
    c.data.num_train_examples = 392622  # Kinetics-600 train clips as released; set yours
    c.data.num_frames = 16
    c.data.stride = 16  # 16 frames spread over 256 source frames (SAMPLING_RATE 16)
    c.data.sampling = 'dense'
    c.data.min_resize = 224  # test: short side 224, 3 crops of 224
    c.data.crop_size = 224
    c.data.train_scale_range = (256, 320)  # DATA.TRAIN_JITTER_SCALES
    c.data.random_flip = True
    c.data.zero_centering = True  # (x / 255 - 0.5) / 0.5
    c.data.mixup_alpha = 0.4
    c.data.eval_num_clips = 1
    c.data.eval_num_crops = 3
    c.data.eval_aggregation = 'logits'  # the official sums raw logits over views
    c.data.test_protocol = 'slowfast_xvit'  # JPEG frames from .h5, SlowFast linspace + crops

    c.train.batch_size = 64  # 8 GPUs x 8
    c.train.num_epochs = 30
    c.train.label_smoothing = 0.3
    c.optimizer.name = 'sgd'
    c.optimizer.learning_rate = 0.03
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-5
    c.optimizer.no_decay = (r'^temporal_head/mlp_head_\w+/bias$',)  # the "head" bias group only
    c.optimizer.schedule = 'cosine'
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.warmup_start_factor = 0.01 / 0.03  # WARMUP_START_LR / BASE_LR
    return c

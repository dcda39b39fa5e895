"""Video Swin-B, Kinetics-400 (swin_base_patch244_window877_kinetics400_1k).

Official `configs/recognition/swin/swin_base_patch244_window877_kinetics400_1k.py`
(SwinTransformer/Video-Swin-Transformer): patch 2x4x4, window 8x7x7, 32x2 clips, 4 clips x 3 crops
at test with softmax averaging. Init: the 2D ImageNet-1K Swin-B (swin_base_patch4_window7_224.pth),
inflated (`--config.init_from=` that .pth: patch kernel averaged over time, bias tables tiled).
The other Video Swin zoo configs build on this one and set only what their official configs change.
"""
from vtx import config


def get_config():
    c = config.defaults()
    c.model = config.model_defaults('video_swin')
    c.model.num_classes = 400
    c.model.patch_size = (2, 4, 4)
    c.model.embed_dim = 128
    c.model.depths = (2, 2, 18, 2)
    c.model.num_heads = (4, 8, 16, 32)
    c.model.window_size = (8, 7, 7)
    c.model.mlp_ratio = 4.0
    c.model.qkv_bias = True
    c.model.patch_norm = True
    c.model.drop_path_rate = 0.3
    c.model.head_dropout_rate = 0.5

    c.data.num_classes = 400
    c.data.num_train_examples = 240436  # Kinetics-400 train clips as distributed; set your copy's
    c.data.num_frames = 32
    c.data.sampling = 'dense'
    c.data.stride = 2  # SampleFrames(clip_len=32, frame_interval=2)
    c.data.min_resize = 224  # test: short side 224, then ThreeCrop 224
    c.data.crop_size = 224
    c.data.random_resized_crop = True  # RandomResizedCrop (area 0.08-1, ratio 3/4-4/3) -> 224x224
    c.data.random_flip = True
    # Normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]) on 0..255 RGB
    c.data.normalization_mean = (0.485, 0.456, 0.406)
    c.data.normalization_std = (0.229, 0.224, 0.225)
    c.data.eval_num_clips = 4
    c.data.eval_num_crops = 3
    c.data.eval_aggregation = 'probs'  # average_clips='prob': softmax per view, then mean
    c.data.test_protocol = 'mmaction'  # decord, SampleFrames, cv2 Resize(-1, 224), ThreeCrop

    c.train.batch_size = 512  # 8 GPUs x 8 clips x update_interval 8 (apex O1 fp16)
    c.train.grad_accum_steps = 8
    c.train.num_epochs = 30
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.05
    # paramwise_cfg custom_keys as mmcv resolves them (longest key first, first match only):
    # bias tables train at the full lr without decay; every other backbone parameter (its
    # norms included: 'backbone' matches before 'norm') at lr x0.1 with decay; the head x1.
    c.optimizer.no_decay = (r'relative_position_bias_table',)
    c.optimizer.lr_multipliers = ((r'relative_position_bias_table', 1.0), (r'^(?!head/)', 0.1))
    c.optimizer.schedule = 'cosine'  # CosineAnnealing to min_lr 0
    c.optimizer.warmup_epochs = 2.5
    c.optimizer.warmup_start_factor = 0.1  # mmcv linear warmup, warmup_ratio 0.1
    c.optimizer.cosine_end_factor = 0.0
    return c

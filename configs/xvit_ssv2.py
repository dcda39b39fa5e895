"""XViT-B/16, 16 frames, Something-Something v2 (xvit_b16_16_ss2).

Official `configs/SSv2/xvit_B16_16x16.yaml` (1adrianb/video-transformers): space-time mixing of
keys and values in all 12 blocks, one shift group per clip (NUM_SEGMENTS 16), SHIFT_DIV 4; 8-entry
temporal embedding; 1-layer temporal transformer head. Fine-tuned from ImageNet-21k ViT-B/16:
`--config.init_from=` the timm `jx_vit_base_patch16_224_in21k` .pth or the original .npz.
Fields not set here are those of `configs/xvit_k600.py`.
"""
from vtx import config


def get_config():
    c = config.get('xvit_k600')
    c.model.num_classes = 174
    c.model.num_segments = 16
    c.model.shift_div = 4

    c.data.num_classes = 174
    c.data.num_train_examples = 168913  # SSv2 train videos
    c.data.sampling = 'uniform'  # one frame per segment (TSN style)
    c.data.stride = 1  # not used by 'uniform' sampling
    c.data.random_flip = False  # SSv2 labels depend on left/right
    c.data.random_erasing = 0.5
    c.data.mixup_alpha = 0.0  # no mixup in the official SSv2 recipe
    c.data.eval_num_clips = 2

    c.train.num_epochs = 35
    c.train.label_smoothing = 0.0  # plain cross-entropy
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_start_factor = 0.003 / 0.03  # WARMUP_START_LR / BASE_LR
    return c

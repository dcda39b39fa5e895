"""XViT-B/16, 16 frames, Kinetics-400 (official yaml; no released checkpoint).

Official `configs/Kinetics/xvit_B16_16x16_k400.yaml` (1adrianb/video-transformers): space-time
mixing of keys and values in all 12 blocks, in two independent 8-frame shift groups per 16-frame
clip (NUM_SEGMENTS 8), SHIFT_DIV 8; 8-entry temporal embedding; 1-layer temporal transformer head.
Fine-tuned from ImageNet-21k ViT-B/16: `--config.init_from=` the timm
`jx_vit_base_patch16_224_in21k` .pth or the original .npz.
Fields not set here are those of `configs/xvit_k600.py`.
"""
from vtx import config


def get_config():
    c = config.get('xvit_k600')
    c.model.num_classes = 400

    c.data.num_classes = 400
    c.data.num_train_examples = 240436  # Kinetics-400 train clips; set to your copy's count
    return c

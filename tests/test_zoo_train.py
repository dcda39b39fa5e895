"""Each family's zoo config, shrunk to a tiny model on the demo data, trains and evaluates through
the trainer with its own recipe and multi-view test protocol (STTS on its differentiable top-k)."""
import numpy as np
import pytest

from conftest import tiny_demo_config
from vtx import train
from vtx import config as vtx_config

SWIN_TINY = {'embed_dim': 8, 'depths': (2, 2), 'num_heads': (1, 2), 'window_size': (2, 3, 3)}
CASES = {
    'xvit_k600': ({'hidden_size': 32, 'mlp_dim': 64, 'num_heads': 2, 'num_layers': 2,
                   'mixing_layers': (0, 1), 'image_size': 32, 'pos_embed_image_size': 32,
                   'patch_size': 8, 'head_num_heads': 2, 'head_mlp_dim': 32}, {'num_frames': 16}),
    'swin_tiny_patch244_window877_kinetics400_1k': (SWIN_TINY | {'num_frames': 8}, {'num_frames': 8}),
    'tps_swin_tiny_2D_patch244_k400': ({'embed_dim': 8, 'depths': (2, 2), 'num_heads': (1, 2),
                                        'patch_size': (2, 2, 2)}, {'num_frames': 32}),
    'stts_mvit_t0_0p6_s4_0p9': ({'depth': 5, 'embed_dim': 16, 'image_size': 32, 'num_frames': 8,
                                 'dim_mul': ((1, 2.0), (3, 2.0)), 'head_mul': ((1, 2.0), (3, 2.0)),
                                 'pool_q_stride': ((1, 1, 2, 2), (3, 1, 2, 2)),
                                 'pool_kv_stride_adaptive': (1, 2, 2), 'space_pruning_loc': None,
                                 'selection_num_samples': 8}, {'num_frames': 8}),
    'stts_videoswin_t0_0p6': (SWIN_TINY | {'num_frames': 16, 'selection_num_samples': 8},
                              {'num_frames': 16}),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_zoo_config_trains_and_evaluates(name, demo_data_dir, tmp_path):
    config = vtx_config.get(name)
    model_overrides, data_overrides = CASES[name]
    demo = tiny_demo_config(demo_data_dir)
    config.model.update(model_overrides)
    config.model.num_classes = 4
    for field in ('train_shards', 'eval_shards', 'synthetic', 'num_classes', 'crop_size',
                  'min_resize', 'train_scale_range', 'random_resized_crop'):
        config.data[field] = demo.data[field]
    config.data.update({k: v for k, v in demo.data.items() if k.startswith('synthetic_')})
    # The models below are sized for 32x32 frames: the demo's 16x16 frames are resized up.
    config.data.update({'min_resize': 32, 'crop_size': 32, 'train_scale_range': (32, 32)})
    config.data.update(data_overrides)
    config.data.num_train_examples = 64
    config.train.update({'batch_size': 4, 'eval_batch_size': 4, 'num_steps': 2, 'grad_accum_steps': 2,
                         'log_every_steps': 1, 'checkpoint_every_steps': 2})
    before = config.copy_and_resolve_references()
    metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert metrics['num_videos'] == 20  # every eval video once, over all its views
    assert np.isfinite(metrics['loss']) and 0 <= metrics['top1'] <= 1
    assert config.data.eval_num_clips == before.data.eval_num_clips  # the zoo protocol ran

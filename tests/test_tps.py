"""TPS: zoo configs against the official full-size checkpoints, window geometry against the
official derived values, the patch-shift pattern and bias index against the worked examples of
the spec (checked against the official op), and the refusal of frame counts it cannot run.

Logit parity of every case is in tests/test_parity.py. The spec is read from VTX_SPECS (default
../shared/specs, relative to the repo root).
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vtx.convert import engine, inflate
from tests.test_video_swin import REPO, cases, check_zoo_config, full_entries, load_case
from vtx.models import build_model, patch_shift, tps, video_swin

SPECS = os.path.join(REPO, os.environ.get('VTX_SPECS', '../shared/specs'))


def test_fixtures_found():
    assert full_entries('tps_'), 'no tps_*.json full-size entries'
    assert cases('tps'), 'no tps parity cases'


@pytest.mark.parametrize('stem', full_entries('tps_'))
def test_zoo_config_matches_official(stem):
    check_zoo_config(stem)


@pytest.mark.parametrize('case', cases('tps'))
def test_window_geometry_matches_official(case):
    _, manifest = load_case(case)
    derived = manifest['config']['derived']
    for grid, win, shift, head_dim, fold in zip(
            derived['stage_token_grids'], derived['stage_effective_window'],
            derived['stage_shift_in_odd_blocks'], derived['head_dim'], derived['tsm_fold']):
        assert video_swin.effective_window(grid, tps.WINDOW) == (tuple(win), tuple(shift))
        assert head_dim // 8 == fold


def _spec():
    path = os.path.join(SPECS, 'tps.md')
    if not os.path.isfile(path):
        pytest.fail(f'{path} is missing (set VTX_SPECS)')
    with open(path) as f:
        return f.read()


def test_patch_shift_matches_official_worked_example():
    spec = _spec()
    block = spec.split('for t = 0:', 1)[1].split('```')[1]
    rows = [line.split() for line in block.strip().splitlines()[1:]]
    expected_t0 = np.array([[int(v) for v in row[1:]] for row in rows])
    held = patch_shift.source_frames(16).reshape(16, 7, 7)
    np.testing.assert_array_equal(held[0], expected_t0)
    t5 = re.search(r'For t = 5 the top-left 3x3 holds frames (\[\[.*?\]\])', spec).group(1)
    np.testing.assert_array_equal(held[5, :3, :3], np.array(json.loads(t5)))
    # The shift applied to frame ids moves them exactly so; the inverse restores the clip.
    frames = jnp.broadcast_to(jnp.arange(16.0)[None, :, None, None, None], (1, 16, 2, 49, 3))
    shifted = patch_shift.temporal_patch_shift(frames)
    np.testing.assert_array_equal(np.asarray(shifted[0, :, 0, :, 0]), held.reshape(16, 49))
    np.testing.assert_array_equal(patch_shift.temporal_patch_shift(shifted, inverse=True), frames)


def test_bias_index_matches_official_worked_examples():
    pattern = r't=(\d+), query \((\d),(\d)\), key \((\d),(\d)\):[^\n]*= (\d+)\.'
    examples = re.findall(pattern, _spec())
    assert len(examples) >= 2
    index = tps.bias_index(shifted=True)
    for t, qr, qc, kr, kc, value in (map(int, e) for e in examples):
        assert index[t, qr * 7 + qc, kr * 7 + kc] == value


def test_channel_shift_follows_official_rule():
    # 2 heads of 16 channels: fold 2 -> channels {0,1,16,17} from t-1, {2,3,18,19} from t+1.
    x = jnp.broadcast_to(jnp.arange(4.0)[None, :, None], (1, 4, 32))
    y = np.asarray(patch_shift.channel_shift(x, num_heads=2))[0]
    for c in range(32):
        j = c % 16
        want = [0, 0, 1, 2] if j < 2 else [1, 2, 3, 3] if j < 4 else [0, 1, 2, 3]
        assert list(y[:, c]) == want, c


@pytest.mark.parametrize('num_frames, patch_t', [(16, 2), (48, 2), (64, 2), (8, 1)])
def test_refuses_frame_counts_at_construction(num_frames, patch_t):
    with pytest.raises(ValueError, match='16'):
        build_model({'name': 'tps', 'num_classes': 5, 'num_frames': num_frames,
                     'patch_size': (patch_t, 4, 4)})


def test_refuses_inputs_it_cannot_run():
    model = tps.TPS(num_classes=5, embed_dim=8, depths=(2, 2), num_heads=(1, 2), num_frames=32)
    with pytest.raises(ValueError, match='32 frames'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 64, 64, 3)))
    with pytest.raises(ValueError, match='7x7'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 48, 48, 3)))
    # T = 31 is padded to 32 by the patch embedding: accepted, as officially.
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 31, 56, 56, 3)))


def test_inflate_2d_swin_into_tps():
    """Official TPS inflation: patch kernel repeated over time / pt; each 2D table resized by
    torch's bicubic to the 13x13 offsets of a 7x7 window and repeated over the 31 frame offsets."""
    found = cases('video_swin', 'checkpoint_2d.pth')
    assert found, 'no parity case ships a 2D Swin checkpoint (checkpoint_2d.pth)'
    path = os.path.join(load_case(found[0])[0], 'checkpoint_2d.pth')
    state_2d = engine.load_checkpoint(path)
    model_config = {'name': 'tps', 'num_classes': 5, 'embed_dim': 8, 'depths': (2, 2, 2, 2),
                    'num_heads': (1, 2, 2, 4), 'num_frames': 32}
    abstract = engine.abstract_params_of(build_model(model_config),
                                         jnp.zeros((1, 32, 224, 224, 3), jnp.float32))
    params = engine.flatten_params(inflate.inflate_2d_swin(path, model_config, abstract, log=None))
    kernel_2d = state_2d['patch_embed.proj.weight']  # [E, 3, 4, 4]
    for t in range(2):
        np.testing.assert_array_equal(params['patch_embed/proj/kernel'][t],
                                      kernel_2d.transpose(2, 3, 1, 0) / 2)
    table_2d = state_2d['layers.2.blocks.1.attn.relative_position_bias_table']
    side, heads = int(round(len(table_2d) ** 0.5)), table_2d.shape[1]
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(table_2d.T.copy()).reshape(1, heads, side, side), size=(13, 13),
        mode='bicubic', align_corners=False).reshape(heads, 169).T.numpy()
    np.testing.assert_array_equal(params['layers_2/blocks_1/attn/relative_position_bias_table'],
                                  np.tile(resized, (31, 1)))

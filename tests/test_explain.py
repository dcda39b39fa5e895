"""vtx.explain: every family explains a video on a tiny model (overlay shaped as the frames); the
STTS overlay is exactly the selectors' own output, also with keep ratios changed at inference;
attention rollout is row-stochastic and is Abnar & Zuidema's product where nothing mixes frames;
`vtx-predict --explain` writes the pictures."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from test_zoo_train import CASES, SWIN_TINY
from vtx import checkpoint, explain, predict
from vtx import config as vtx_config
from vtx.convert import engine
from vtx.models import build_model

FRAMES = 16  # frames of the test video; the clips sample (and wrap) what they need
ONE_STAGE = {'depths': (2,), 'num_heads': (1,)}  # one compile each: the smallest that runs
# test_mvit's tiny STTS-MViT: 8 frames -> 4 patch frames of 2; 48x48 -> 12x12 tokens, pooled to
# 6x6 (8x8 pixels each) by block 1; block 0 keeps half the frames, block 2 a 4x4 window per frame.
MVIT_TINY = {'num_frames': 8, 'image_size': 48, 'embed_dim': 8, 'depth': 3,
             'dim_mul': ((1, 2.0),), 'head_mul': ((1, 2.0),), 'pool_q_stride': ((1, 1, 2, 2),),
             'pool_kv_stride_adaptive': (1, 4, 4), 'time_pruning_loc': 0, 'time_left_ratio': 0.5,
             'space_pruning_loc': 2, 'space_left_ratio': 0.5, 'selection_num_samples': 8}
MVIT_DATA = {'num_frames': 8, 'min_resize': 48, 'crop_size': 48}
# config -> (model fields, data fields, method); the shapes of test_zoo_train's CASES.
FAMILIES = {
    'demo': ({'hidden_size': 32, 'mlp_dim': 64, 'num_layers': 2}, {}, explain.ROLLOUT),
    'xvit_k600': CASES['xvit_k600'] + (explain.ROLLOUT,),
    'swin_tiny_patch244_window877_kinetics400_1k':
        (CASES['swin_tiny_patch244_window877_kinetics400_1k'][0] | ONE_STAGE, {'num_frames': 8},
         explain.GRAD_CAM),
    'tps_swin_tiny_2D_patch244_k400': (CASES['tps_swin_tiny_2D_patch244_k400'][0] | ONE_STAGE,
                                       {'num_frames': 32}, explain.GRAD_CAM),
    'mvit_b_16x4_k400': (MVIT_TINY | {'time_pruning_loc': None, 'space_pruning_loc': None},
                         MVIT_DATA, explain.GRAD_CAM),
    'stts_mvit_t0_0p6_s4_0p9': (MVIT_TINY, MVIT_DATA, explain.SELECTION),
    'stts_videoswin_t0_0p6': (
        SWIN_TINY | ONE_STAGE | {'num_frames': 16, 'selection_num_samples': 8},
        {'num_frames': 16}, explain.SELECTION),
}


def tiny_config(name, **overrides):
    model, data, _ = FAMILIES[name]
    config = vtx_config.get(name)
    config.model.update(model)
    side = 16 if name == 'demo' else 32
    config.data.update({'num_classes': 4, 'min_resize': side, 'crop_size': side,
                        'eval_num_clips': 2, 'eval_num_crops': 1, 'shard_short_side': 0, **data})
    config.model.num_classes = 4
    for key, value in overrides.items():
        config.model[key] = value
    return vtx_config.prepare(config)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    """An mp4 of the demo's task (the STTS-MViT protocol decodes files itself)."""
    from test_predict import write_motion_mp4
    return write_motion_mp4(str(tmp_path_factory.mktemp('video') / 'clip.mp4'), 0,
                            num_frames=FRAMES)


# Set when loading, after the checkpoint was saved with the config's own value.
INFERENCE_OVERRIDES = {'stts_mvit_t0_0p6_s4_0p9': {'model.time_left_ratio': 0.75}}


def tiny_predictor(config, folder, overrides=None):
    """A randomly initialised model of `config`, saved, then loaded as a user's checkpoint is."""
    from vtx import pretrained
    model = build_model(config.model)
    d = config.data
    shapes = engine.abstract_params_of(
        model, jnp.zeros((1, d.num_frames, d.crop_size, d.crop_size, 3)), train=False)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(a.dtype), shapes)
    checkpoint.save_params(str(folder), params, config.model.to_dict())
    return pretrained.load(str(folder), config=config, overrides=overrides)


@pytest.fixture(scope='module')
def explained(video, tmp_path_factory):
    """name -> (predictor, explanation of the video), each family made and explained once."""
    done = {}

    def get(name):
        if name not in done:
            predictor = tiny_predictor(tiny_config(name), tmp_path_factory.mktemp(name) / 'params',
                                       INFERENCE_OVERRIDES.get(name))
            done[name] = predictor, predictor.explain([video], top_k=3)[0]
        return done[name]
    return get


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_every_family_explains(name, explained, tmp_path):
    _, result = explained(name)
    assert result.method == FAMILIES[name][2]
    assert result.frames.dtype == np.uint8 and result.frames.shape[-1] == 3
    assert result.overlay.shape == result.frames.shape[:3]
    assert np.all(np.isfinite(result.overlay)) and 0 <= result.overlay.min()
    assert result.overlay.max() == pytest.approx(1.0)
    assert len(result.top_k) == 3 and result.top_k[0]['score'] >= result.top_k[1]['score']
    assert 'first of the 2 views' in result.caption
    with Image.open(result.save_png(str(tmp_path / 'x.png'))) as png:
        assert png.format == 'PNG'


def selection(result, selector, k):
    """The indices `selector` sowed, checked to be a hard top-k (in order) of the scores it sowed
    (the test video repeats, so scores tie)."""
    scores, indices = result.selected[selector]['scores'], result.selected[selector]['indices']
    assert indices.shape == (len(scores), k) and np.all(np.diff(indices, axis=1) > 0)
    for row, kept in zip(scores, indices):
        assert row[kept].min() >= np.delete(row, kept).max(initial=-np.inf)
    return indices


def test_stts_mvit_overlay_is_the_selection_at_an_inference_ratio(explained):
    """Saved with time_left_ratio 0.5, loaded with 0.75: 3 of the 4 patch frames (2 frames each)
    are kept, and in each the kept 4x4 window of the 6x6 grid of 8x8-pixel tokens (window
    positions 3x3 at stride 1, raster order)."""
    predictor, result = explained('stts_mvit_t0_0p6_s4_0p9')
    frames = selection(result, 'time_selection', 3)[0]
    windows = selection(result, 'space_selection', 1)[:, 0]
    expected = np.zeros((8, 48, 48))
    for patch_frame, window in zip(frames, windows):
        top, left = 8 * (window // 3), 8 * (window % 3)
        expected[2 * patch_frame:2 * patch_frame + 2, top:top + 32, left:left + 32] = 1
    np.testing.assert_array_equal(result.overlay, expected)
    assert 'time_left_ratio=0.75' in result.caption and 'space_left_ratio=0.5' in result.caption


def test_stts_video_swin_overlay_is_the_selection(explained):
    """16 frames -> 8 patch frames of 2; the config's time_left_ratio 0.625 keeps 5 of them."""
    _, result = explained('stts_videoswin_t0_0p6')
    kept = selection(result, 'time_selection', 5)[0]
    expected = np.zeros((16, 32, 32))
    for patch_frame in kept:
        expected[2 * patch_frame:2 * patch_frame + 2] = 1
    np.testing.assert_array_equal(result.overlay, expected)


def test_attention_weights_are_sown_only_when_asked(explained, video):
    """The rollout's input: recorded when 'intermediates' is mutable, the logits unchanged."""
    predictor, _ = explained('demo')
    clip = jnp.asarray(predict.video_views(video, predictor.config.data)[:1])
    variables = {'params': predictor.params}
    plain = predictor.model.apply(variables, clip)
    logits, state = predictor.model.apply(variables, clip, mutable=['intermediates'])
    np.testing.assert_array_equal(plain, logits)
    weights = state['intermediates']['layer_0']['attn']['attention_weights'][0]
    assert weights.shape == (8, 4, 17, 17)  # frames, heads, [CLS] + 4x4 patches (twice)
    np.testing.assert_allclose(weights.sum(axis=-1), 1, rtol=1e-5)


def random_attention(rng, frames, tokens):
    w = rng.random((frames, tokens, tokens))
    return w / w.sum(axis=-1, keepdims=True)


def test_rollout_rows_sum_to_one_through_shifts_and_mixing():
    rng = np.random.default_rng(0)
    frames, tokens = 4, 5
    mixing = explain.frame_mixing(frames, group=2, fraction=1 / 8)
    operations = [('shift_cls', explain.frame_mixing(frames, frames, 1 / 4)),
                  ('attention', random_attention(rng, frames, tokens), None),
                  ('attention', random_attention(rng, frames, tokens), mixing)]
    identity = np.eye(frames * tokens).reshape(-1, frames, tokens)
    rollout = explain.attention_rollout(identity, operations).reshape(frames * tokens, -1)
    assert rollout.min() >= 0
    np.testing.assert_allclose(rollout.sum(axis=1), 1, atol=1e-12)
    # XViT's mixing stays within groups of 2 frames: frame 0 never reads frames 2 and 3 (the
    # [CLS] shift over the whole clip does).
    mixed_only = explain.attention_rollout(identity, operations[1:]).reshape(frames * tokens, -1)
    assert not mixed_only[:tokens, 2 * tokens:].any() and rollout[:tokens, 2 * tokens:].any()


def test_rollout_is_the_product_of_residual_attention_without_frame_mixing():
    """Abnar & Zuidema: R = A_L ... A_1 with A = (W + I) / 2, W head-averaged."""
    rng = np.random.default_rng(1)
    layers = [random_attention(rng, 1, 6) for _ in range(3)]
    expected = np.eye(6)
    for w in layers:  # each later layer multiplies from the left
        expected = (0.5 * w[0] + 0.5 * np.eye(6)) @ expected
    rollout = explain.attention_rollout(np.eye(6)[:, None, :],
                                        [('attention', w, None) for w in layers])[:, 0]
    np.testing.assert_allclose(rollout, expected, atol=1e-12)


def test_predict_cli_writes_the_pictures(video, tmp_path):
    """`vtx-predict --explain` on the tiny demo model: one PNG (and GIF) per video."""
    config = tiny_config('demo')
    tiny_predictor(config, tmp_path / 'params')
    model = [f'--config.model.{k}={v}' for k, v in FAMILIES['demo'][0].items()]
    result = subprocess.run(
        [sys.executable, '-m', 'vtx.predict', '--config=demo',
         f'--checkpoint={tmp_path / "params"}', *model, f'--explain={tmp_path / "out"}',
         '--explain_gif', video],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / 'out')) == ['clip.gif', 'clip.png']
    assert 'class' in result.stdout  # the predictions are still printed

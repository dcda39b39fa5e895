"""Video Swin: zoo configs against the official full-size checkpoints, window geometry against the
official stage traces, the clipped-window bias quirk, remat, and 2D ImageNet inflation.

Logit parity of every case is in tests/test_parity.py; the cases here are read from
VTX_PARITY_CASES (default ../shared/parity/cases) and the full-size key lists from
VTX_PARITY_FULL (default ../shared/parity/full), both relative to the repo root.
"""
import glob
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtx import families as registry
from vtx.convert import engine, families, inflate
from convert.verify import to_model_layout, verify_case
from tests.test_families import full_size_models
from vtx import optim
from vtx import config as vtx_config
from vtx.kernels import native
from vtx.kernels.attention import attention
from vtx.models import build_model, video_swin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))
FULL = os.path.join(REPO, os.environ.get('VTX_PARITY_FULL', '../shared/parity/full'))


def full_entries(prefix):
    """parity/full stems starting with `prefix` (test_tps's lookup; the zoo itself is
    `vtx.families`)."""
    paths = glob.glob(os.path.join(FULL, prefix + '*.json'))
    return sorted(os.path.basename(p)[:-len('.json')] for p in paths)


def cases(family, required_file='checkpoint.pth'):
    if not os.path.isdir(CASES):
        return []
    found = []
    for name in sorted(os.listdir(CASES)):
        path = os.path.join(CASES, name, 'manifest.json')
        if os.path.isfile(path) and os.path.isfile(os.path.join(CASES, name, required_file)):
            with open(path) as f:
                if json.load(f)['family'] == family:
                    found.append(name)
    return found


def load_case(name):
    with open(os.path.join(CASES, name, 'manifest.json')) as f:
        return os.path.join(CASES, name), json.load(f)


def run_case(name, **model_overrides):
    """(our logits, official logits, tolerance) of a case, with model fields overridden."""
    path, manifest = load_case(name)
    family = manifest['family']
    model_config = {**families.converter(family).model_config_from_manifest(manifest),
                    **model_overrides}
    model = build_model(model_config)
    video = to_model_layout(np.load(os.path.join(path, manifest['input']['file'])),
                            manifest['input']['layout'])
    abstract = engine.abstract_params_of(model, jnp.asarray(video))
    params = families.convert_checkpoint(family, os.path.join(path, 'checkpoint.pth'), model_config,
                                         abstract, log=None)
    logits = jax.jit(lambda p, v: model.apply({'params': p}, v))(params, video)
    return np.asarray(logits), np.load(os.path.join(path, 'logits.npy')), manifest['tolerance']


def check_zoo_config(stem):
    """The zoo config builds the official architecture: exactly the official parameter count, the
    official hyperparameters, and a state dict of the official keys/shapes fills every param."""
    with open(os.path.join(FULL, stem + '.json')) as f:
        full = json.load(f)
    family, zoo = registry.find_in_zoo(official_model=stem)
    config = vtx_config.get(zoo.config)
    converter = family.converter_module()
    model = build_model(config.model)
    official = converter.model_config_from_manifest(full)
    for field, value in official.items():
        ours = config.model.name if field == 'name' else getattr(model, field)
        assert (tuple(ours) if isinstance(ours, (list, tuple)) else ours) == value, (stem, field)
    assert config.data.num_classes == config.model.num_classes
    shape = (1, config.data.num_frames, config.data.crop_size, config.data.crop_size, 3)
    abstract = engine.abstract_params_of(model, jnp.zeros(shape, jnp.float32))
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(abstract)) == full['params']
    source = {key: np.zeros(shape, dtype) for key, (shape, dtype) in full['state_dict'].items()}
    _, report = engine.convert_with_report(source, converter.table(config.model.to_dict()),
                                           abstract)
    assert report.ok and not report.filled, report.format()
    check_official_param_groups(config, abstract)


def check_official_param_groups(config, abstract):
    """mmcv's custom_keys, longest key first and first match only: the bias tables get lr x1 and
    no decay, every other backbone param (norms included) lr x0.1 with decay, the head lr x1."""
    lr = engine.flatten_params(optim.lr_multipliers(config, abstract))
    decay = engine.flatten_params(optim.decay_mask(config, abstract))
    for path in lr:
        table, head = path.endswith('relative_position_bias_table'), path.startswith('head/')
        assert lr[path] == (1.0 if table or head else 0.1), path
        assert decay[path] == (not table), path


def test_fixtures_found():
    assert full_size_models('video_swin'), f'no parity/full folder at {FULL}'
    assert cases('video_swin'), f'no video_swin cases under {CASES}'


@pytest.mark.parametrize('stem', full_size_models('video_swin'))
def test_zoo_config_matches_official(stem):
    check_zoo_config(stem)


@pytest.mark.parametrize('case', cases('video_swin'))
def test_window_geometry_matches_official_trace(case):
    _, manifest = load_case(case)
    backbone = manifest['config']['model']['backbone']
    _, _, t, h, w = manifest['input']['shape']
    grid = [-(-n // p) for n, p in zip((t, h, w), backbone['patch_size'])]
    for stage in manifest['stage_trace']:
        assert list(grid) == stage['tokens_DHW']
        win, shift = video_swin.effective_window(grid, backbone['window_size'])
        assert list(win) == stage['effective_window']
        assert list(shift) == stage['effective_shift_for_odd_blocks']
        assert [-(-g // s) * s for g, s in zip(grid, win)] == stage['padded_DHW']
        grid = [grid[0], -(-grid[1] // 2), -(-grid[2] // 2)]


WINDOW_ATTENTION_CASES = (cases('video_swin') + cases('tps')
                          + [c for c in cases('stts') if 'videoswin' in c])


@pytest.mark.parametrize('case', WINDOW_ATTENTION_CASES)
def test_official_parity_through_the_native_window_attention(monkeypatch, case, native_build):
    """On a CPU where vtx's native window attention runs (`vtx.kernels.native`), the eval of the
    official Video Swin, TPS and STTS-Video Swin cases goes through it (head_dim 4 and 8 here,
    shifted windows with the -100 mask, TPS's bias per frame) and still matches the official
    logits, in each build of the kernel."""
    calls = []
    kernel = native.window_attention
    monkeypatch.setattr(native, 'window_attention',
                        lambda qkv, *args: calls.append(qkv.shape) or kernel(qkv, *args))
    result = verify_case(os.path.join(CASES, case))
    assert calls, f'{case}: no window attention ran natively'
    assert result['passed'], f'{case}: {json.dumps(result)}'


def test_clipped_window_bias_quirk_is_reproduced():
    """In video_swin_tiny_pad the last stage clips the window spatially: only the official
    top-left index block reproduces the official logits; the true offsets do not."""
    ours, ref, tol = run_case('video_swin_tiny_pad')
    np.testing.assert_allclose(ours, ref, atol=tol['atol'], rtol=tol['rtol'])
    exact, _, _ = run_case('video_swin_tiny_pad', clipped_window_bias='exact')
    assert np.abs(exact - ref).max() > 100 * tol['atol']


def test_remat_matches_official_and_trains():
    ours, ref, tol = run_case('video_swin_window_clip', remat=True)
    np.testing.assert_allclose(ours, ref, atol=tol['atol'], rtol=tol['rtol'])
    model = video_swin.VideoSwin(num_classes=3, embed_dim=8, depths=(2,), num_heads=(1,),
                                 window_size=(2, 3, 3), drop_path_rate=0.3, remat=True)
    video = jnp.ones((2, 4, 24, 24, 3))
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), video)['params'])

    def loss(p):
        logits = model.apply({'params': p}, video, train=True,
                             rngs={'dropout': jax.random.PRNGKey(1)})
        return jnp.mean(logits ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads['layers_0']['blocks_1']['attn']['qkv']['kernel']).sum()) > 0


@pytest.mark.parametrize('case', cases('video_swin', 'checkpoint_2d.pth'))
def test_inflate_2d_swin_matches_official(case):
    path, manifest = load_case(case)
    model_config = families.converter('video_swin').model_config_from_manifest(manifest)
    video = to_model_layout(np.load(os.path.join(path, 'input.npy')), manifest['input']['layout'])
    abstract = engine.abstract_params_of(build_model(model_config), jnp.asarray(video))
    ours = engine.flatten_params(inflate.inflate_2d_swin(
        os.path.join(path, 'checkpoint_2d.pth'), model_config, abstract, log=None))
    official = engine.flatten_params(families.convert_checkpoint(
        'video_swin', os.path.join(path, 'checkpoint.pth'), model_config, abstract, log=None))
    backbone = [k for k in official if not k.startswith('head/')]
    assert len(backbone) == len(official) - 2
    for key in backbone:
        np.testing.assert_allclose(ours[key], official[key], atol=1e-6, rtol=0, err_msg=key)
    assert float(np.abs(ours['head/bias']).max()) == 0.0
    assert 0.005 < float(np.std(ours['head/kernel'])) < 0.02  # normal(0, 0.01) init


@pytest.mark.parametrize('with_mask', [False, True])
def test_attention_vjp_equals_autodiff_of_the_formula(with_mask):
    """The hand-written backward of `attention` against JAX autodiff of the plain formula
    softmax(q k^T / sqrt(d) + bias + mask) v, for q/k/v and the bias broadcast over windows."""
    rng = np.random.default_rng(0)
    windows, n, heads, hd = (2, 3), 10, 2, 4
    qkv = jnp.asarray(rng.normal(size=(1, *windows, n, 3, heads, hd)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(heads, n, n)), jnp.float32)
    mask = (jnp.asarray(np.where(rng.random((*windows, 1, n, n)) < 0.3, -100.0, 0.0), jnp.float32)
            if with_mask else None)
    cotangent = jnp.asarray(rng.normal(size=(1, *windows, n, heads, hd)), jnp.float32)

    def formula(qkv, bias):
        q, k, v = (qkv[..., i, :, :] for i in range(3))
        s = jnp.einsum('...qhd,...khd->...hqk', q, k) / math.sqrt(hd) + bias
        if mask is not None:
            s = s + mask
        return jnp.einsum('...hqk,...khd->...qhd', jax.nn.softmax(s, axis=-1), v)

    def vjp(fn):
        out, pullback = jax.vjp(fn, qkv, bias)
        return out, pullback(cotangent)

    out, (dqkv, dbias) = vjp(lambda a, b: attention(*(a[..., i, :, :] for i in range(3)), b, mask))
    ref_out, (ref_dqkv, ref_dbias) = vjp(formula)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dqkv, ref_dqkv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dbias, ref_dbias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('padded,win,shift,lead,axes', [
    ((8, 6, 3), (4, 3, 3), (2, 1, 1), 1, (True, True, True)),     # 2 x 2 x 1 windows
    ((12, 9, 6), (4, 3, 3), (1, 1, 2), 3, (True, True, True)),    # 3 x 3 x 2, one bias per D
    ((4, 6, 6), (4, 3, 3), (2, 1, 1), 1, (True, False, False)),   # one window along D; D apart
    ((3, 9, 6), (1, 3, 3), (0, 1, 2), 3, (True, False, True)),    # TPS-like: frames unshifted
])
def test_shifted_windows_apart_is_the_masked_attention(padded, win, shift, lead, axes):
    """On CPU a shifted block's regions attend as windows of their own (boxes of the windows,
    split along the `axes` that are apart) instead of through the -100 mask: output and gradients
    (qkv, bias table) equal the masked windows' formula to rounding, the axes not apart still
    masked, the bias one per temporal window or shared."""
    rng = np.random.default_rng(3)
    heads, hd, rows = 2, 4, 50
    n = math.prod(win)
    counts = tuple(p // w for p, w in zip(padded, win))
    windows = (counts[0], counts[1] * counts[2])
    qkv = jnp.asarray(rng.normal(size=(1, *windows, n, 3, heads, hd)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(rows, heads)), jnp.float32)
    index = rng.integers(0, rows, size=(lead, n, n))
    mask = video_swin.shift_mask(padded, win, shift)
    cotangent = jnp.asarray(rng.normal(size=(1, *windows, n, heads, hd)), jnp.float32)

    def formula(qkv, table):
        q, k, v = (qkv[..., i, :, :] for i in range(3))
        s = (jnp.einsum('...qhd,...khd->...hqk', q, k) / math.sqrt(hd)
             + video_swin.position_bias(table, index) + mask.additive())
        return jnp.einsum('...hqk,...khd->...qhd', jax.nn.softmax(s, axis=-1), v)

    def apart(qkv, table):
        return video_swin.shifted_windows_apart(
            lambda x, bias, mask: attention(*(x[..., i, :, :] for i in range(3)), bias, mask),
            qkv, table, index, counts, win, shift, axes)

    def value_and_grads(fn):
        out, pullback = jax.vjp(fn, qkv, table)
        return out, pullback(cotangent)

    (out, grads), (ref_out, ref_grads) = (jax.jit(value_and_grads, static_argnums=0)(fn)
                                          for fn in (apart, formula))
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)

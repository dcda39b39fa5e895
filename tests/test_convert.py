"""The conversion engine (strict reports, wrapper detection, layout transforms), the ImageNet
imports, the interpolation kernels the converters and XViT reproduce, and the CLI."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vtx.convert import engine
from vtx.convert.engine import ConversionTable, Rule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))


def _case(name):
    path = os.path.join(CASES, name)
    if not os.path.isdir(path):
        pytest.fail(f'parity case {path} is missing (set VTX_PARITY_CASES)')
    with open(os.path.join(path, 'manifest.json')) as f:
        return path, json.load(f)


# --------------------------------------------------------------------------- engine reports

ABSTRACT = {'proj': {'kernel': jax.ShapeDtypeStruct((3, 4), jnp.float32),
                     'bias': jax.ShapeDtypeStruct((4,), jnp.float32)},
            'attn': {n: {'kernel': jax.ShapeDtypeStruct((2, 2), jnp.float32)}
                     for n in ('query', 'key', 'value')}}
TABLE = ConversionTable(
    rules=[Rule(r'proj\.weight', 'proj/kernel', 'linear'),
           Rule(r'proj\.bias', 'proj/bias'),
           Rule(r'qkv\.weight', ('attn/query/kernel', 'attn/key/kernel', 'attn/value/kernel'),
                'qkv_linear'),
           Rule(r'extra\.weight', 'nowhere/kernel')],
    ignore=[(r'.*\.relative_position_index', 'recomputed buffer')])


def _source():
    rng = np.random.default_rng(0)
    return {'proj.weight': rng.normal(size=(4, 3)).astype(np.float32),
            'proj.bias': rng.normal(size=(4,)).astype(np.float32),
            'qkv.weight': rng.normal(size=(6, 2)).astype(np.float32),
            'blk.relative_position_index': np.zeros((3, 3), np.int64)}


def test_exact_mapping_transposes_and_splits():
    src = _source()
    params, report = engine.convert_with_report(src, TABLE, ABSTRACT)
    assert report.ok, report.format()
    np.testing.assert_array_equal(params['proj']['kernel'], src['proj.weight'].T)
    w = src['qkv.weight']  # rows [0,2) query, [2,4) key, [4,6) value; Flax kernels are (in, out)
    np.testing.assert_array_equal(params['attn']['query']['kernel'], w[0:2].T)
    np.testing.assert_array_equal(params['attn']['key']['kernel'], w[2:4].T)
    np.testing.assert_array_equal(params['attn']['value']['kernel'], w[4:6].T)
    assert report.ignored == {'blk.relative_position_index': 'recomputed buffer'}


def _failure(src):
    with pytest.raises(engine.ConversionError) as e:
        engine.convert(src, TABLE, ABSTRACT, log=None)
    return str(e.value)


def test_missing_key_fails_naming_param():
    src = _source()
    del src['proj.bias']
    assert 'model params not filled (1):\n  proj/bias' in _failure(src)


def test_unexpected_key_fails_naming_key():
    src = {**_source(), 'head.new_fc.weight': np.zeros((2, 2), np.float32)}
    message = _failure(src)
    assert 'source tensors not used (no rule, not ignorable) (1):\n  head.new_fc.weight' in message


def test_shape_mismatch_fails_naming_key_and_shapes():
    src = {**_source(), 'proj.weight': np.zeros((5, 3), np.float32)}
    message = _failure(src)
    assert 'proj.weight -> proj/kernel: converted (3, 5), model wants (3, 4)' in message
    assert 'model params not filled' not in message  # a mismatch is reported once, as such


def test_rule_to_absent_param_fails():
    src = {**_source(), 'extra.weight': np.zeros((1,), np.float32)}
    assert 'extra.weight -> nowhere/kernel' in _failure(src)


def test_fill_rules_are_reported_not_missing():
    src = _source()
    del src['proj.bias']
    table = ConversionTable(TABLE.rules, TABLE.ignore, fill=[('proj/bias', 'zeros', 'zero head')])
    params, report = engine.convert_with_report(src, table, ABSTRACT)
    assert report.ok and report.filled == {'proj/bias': 'zero head'}
    np.testing.assert_array_equal(params['proj']['bias'], np.zeros(4, np.float32))


# --------------------------------------------------------------------------- wrappers

def _weights():
    return {'a.weight': torch.arange(6, dtype=torch.float32).reshape(2, 3),
            'a.bias': torch.ones(2, dtype=torch.bfloat16)}


@pytest.mark.parametrize('wrapper,obj', [
    ('mmcv', lambda w: {'meta': {'epoch': 3}, 'state_dict': w, 'optimizer': {'state': {}}}),
    ('slowfast', lambda w: {'epoch': 1, 'model_state': w, 'optimizer_state': {}, 'cfg': 'A: 1\n'}),
    ('ddp', lambda w: {'epoch': 1, 'state_dict': {'module.' + k: v for k, v in w.items()},
                       'best_acc1': 0.5, 'optimizer': {}, 'scheduler': {'milestones': [1]}}),
    ('swin', lambda w: {'model': w, 'optimizer': {}, 'epoch': 2}),
    ('state_dict', lambda w: dict(w)),
])
def test_wrapper_detection(tmp_path, wrapper, obj):
    path = str(tmp_path / 'ckpt.pth')
    torch.save(obj(_weights()), path)
    ckpt = engine.read_checkpoint(path)
    assert ckpt.wrapper == wrapper
    assert sorted(ckpt.state) == ['a.bias', 'a.weight']
    np.testing.assert_array_equal(ckpt.state['a.weight'], np.arange(6).reshape(2, 3))
    assert ckpt.state['a.bias'].dtype == np.float32
    if wrapper == 'slowfast':
        assert ckpt.extras['cfg'] == 'A: 1\n'


def test_unknown_layout_names_file_and_keys(tmp_path):
    path = str(tmp_path / 'odd.pth')
    torch.save({'weights_here': {'x': 1}, 'step': 3}, path)
    with pytest.raises(engine.CheckpointFormatError, match=r"odd\.pth.*\['weights_here', 'step'\]"):
        engine.load_checkpoint(path)


def test_npz_keys_are_kept(tmp_path):
    path = str(tmp_path / 'vit.npz')
    np.savez(path, **{'Transformer/encoder_norm/scale': np.ones(3, np.float32)})
    assert list(engine.load_checkpoint(path)) == ['Transformer/encoder_norm/scale']


def test_official_tokshift_checkpoint_is_unwrapped():
    path, _ = _case('tokshift_tiny_div4')
    state = engine.load_checkpoint(os.path.join(path, 'checkpoint.pth'))
    assert all(k.startswith('base_model.') for k in state), sorted(state)[:3]


# --------------------------------------------------------------------------- interpolation kernels

@pytest.mark.parametrize('g_old,g_new', [(3, 5), (14, 16), (14, 24), (7, 4)])
def test_align_corners_resize_matches_torch(g_old, g_new):
    from vtx.convert.tokshift import resize_pos_embedding_align_corners
    pe = np.random.default_rng(1).normal(size=(1, 1 + g_old ** 2, 6)).astype(np.float32)
    ours = resize_pos_embedding_align_corners(pe, [(1, 1 + g_new ** 2, 6)])
    grid = torch.from_numpy(pe[0, 1:]).reshape(1, g_old, g_old, 6).permute(0, 3, 1, 2).double()
    ref = torch.nn.functional.interpolate(grid, size=(g_new, g_new), mode='bilinear',
                                          align_corners=True).float()
    ref = ref.permute(0, 2, 3, 1).reshape(1, g_new ** 2, 6).numpy()
    np.testing.assert_array_equal(ours[:, :1], pe[:, :1])
    np.testing.assert_allclose(ours[:, 1:], ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize('grid,image_size', [(14, 32), (28, 40), (14, 48), (14, 384), (14, 320)])
def test_bicubic_matrix_matches_torch(grid, image_size):
    from vtx.models.xvit import torch_bicubic_matrix
    scale = (image_size / 16) / (224 / 16)
    x = np.random.default_rng(2).normal(size=(grid, grid)).astype(np.float32)
    m = torch_bicubic_matrix(grid, scale)
    ours = m @ x.astype(np.float64) @ m.T
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], scale_factor=scale,
                                          mode='bicubic', align_corners=False)[0, 0].numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- ImageNet imports

def _abstract(model_config, shape):
    from vtx.models import build_model
    return engine.abstract_params_of(build_model(model_config), jnp.zeros(shape), train=False)


def test_tokshift_npz_import_matches_official_load_from():
    """The case's checkpoint is the official model after `load_from(pretrained.npz)` with only the
    head randomised: every other tensor must be what our npz import produces."""
    import vtx.convert
    from vtx.convert import tokshift
    path, manifest = _case('tokshift_tiny_t5_img44_npz')
    model_config = tokshift.model_config_from_manifest(manifest)
    abstract = _abstract(model_config, tokshift.example_input_shape(model_config))
    ours = engine.flatten_params(vtx.convert.import_pretrained(
        os.path.join(path, manifest['config']['tune_from']), model_config, abstract, log=None))
    official = engine.flatten_params(engine.convert(
        engine.load_checkpoint(os.path.join(path, 'checkpoint.pth')), tokshift.table(), abstract,
        log=None))
    assert sorted(ours) == sorted(official)
    compared = [k for k in official if not k.startswith('head/')]
    assert 'pos_embedding' in compared and len(compared) == len(official) - 2
    for k in compared:
        np.testing.assert_allclose(ours[k], official[k], rtol=0, atol=1e-6, err_msg=k)
    assert not np.any(ours['head/kernel']) and not np.any(ours['head/bias'])


def test_xvit_timm_import_zero_temp_embed_and_fresh_head(tmp_path):
    """A timm-layout image ViT (the backbone keys of an XViT checkpoint without `base_model.`,
    plus the image classifier) initialises the backbone; temp_embed starts at zero."""
    import vtx.convert
    from vtx.convert import xvit
    path, manifest = _case('xvit_tiny_8f_partialshift')
    state = engine.load_checkpoint(os.path.join(path, 'checkpoint.pth'))
    image = {k[len('base_model.'):]: torch.from_numpy(v) for k, v in state.items()
             if k.startswith('base_model.') and k != 'base_model.temp_embed'}
    image['head.weight'] = torch.zeros(1000, image['cls_token'].shape[-1])
    image['head.bias'] = torch.zeros(1000)
    torch.save(image, str(tmp_path / 'vit_in21k.pth'))
    model_config = xvit.model_config_from_manifest(manifest)
    abstract = _abstract(model_config, xvit.example_input_shape(model_config))
    params = engine.flatten_params(vtx.convert.import_pretrained(
        str(tmp_path / 'vit_in21k.pth'), model_config, abstract, log=None))
    np.testing.assert_array_equal(params['blocks_1/attn/key/kernel'],
                                  state['base_model.blocks.1.attn.qkv.weight'][32:64].T)
    np.testing.assert_array_equal(params['pos_embed'], state['base_model.pos_embed'])
    assert not np.any(params['temp_embed'])
    assert np.any(params['temporal_head/mlp_head_fc1/kernel'])


def test_xvit_npz_import_maps_per_head_layout(tmp_path):
    """An ImageNet `.npz` (google-research layout: per-head attention kernels, HWIO patch kernel)
    written from an XViT fixture's backbone must give back that backbone."""
    from vtx.convert import xvit
    path, manifest = _case('xvit_tiny_8f_partialshift')
    sd = engine.load_checkpoint(os.path.join(path, 'checkpoint.pth'))
    b = lambda k: sd['base_model.' + k]
    dim, heads = b('cls_token').shape[-1], 4
    npz = {'embedding/kernel': b('patch_embed.proj.weight').transpose(2, 3, 1, 0),
           'embedding/bias': b('patch_embed.proj.bias'), 'cls': b('cls_token'),
           'Transformer/posembed_input/pos_embedding': b('pos_embed'),
           'Transformer/encoder_norm/scale': b('norm.weight'),
           'Transformer/encoder_norm/bias': b('norm.bias'),
           'head/kernel': np.zeros((dim, 3), np.float32)}
    for i in range(4):
        blk, src = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
        qkv_w, qkv_b = b(src + 'attn.qkv.weight'), b(src + 'attn.qkv.bias')
        for j, name in enumerate(('query', 'key', 'value')):
            w = qkv_w[j * dim:(j + 1) * dim]
            npz[blk + f'MultiHeadDotProductAttention_1/{name}/kernel'] = w.T.reshape(dim, heads, -1)
            npz[blk + f'MultiHeadDotProductAttention_1/{name}/bias'] = (
                qkv_b[j * dim:(j + 1) * dim].reshape(heads, -1))
        npz[blk + 'MultiHeadDotProductAttention_1/out/kernel'] = (
            b(src + 'attn.proj.weight').T.reshape(heads, -1, dim))
        npz[blk + 'MultiHeadDotProductAttention_1/out/bias'] = b(src + 'attn.proj.bias')
        for ln, norm in (('LayerNorm_0', 'norm1'), ('LayerNorm_2', 'norm2')):
            npz[blk + ln + '/scale'] = b(src + norm + '.weight')
            npz[blk + ln + '/bias'] = b(src + norm + '.bias')
        for dense, fc in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
            npz[blk + f'MlpBlock_3/{dense}/kernel'] = b(src + f'mlp.{fc}.weight').T
            npz[blk + f'MlpBlock_3/{dense}/bias'] = b(src + f'mlp.{fc}.bias')
    np.savez(str(tmp_path / 'in21k.npz'), **npz)
    model_config = xvit.model_config_from_manifest(manifest)
    abstract = _abstract(model_config, xvit.example_input_shape(model_config))
    ours = engine.flatten_params(xvit.import_npz(str(tmp_path / 'in21k.npz'), model_config,
                                                 abstract, log=None))
    official = engine.flatten_params(engine.convert(sd, xvit.table(), abstract, log=None))
    backbone = [k for k in official if not k.startswith(('temporal_head/', 'temp_embed'))]
    assert len(backbone) == 4 + 4 * 16 + 2
    for k in backbone:
        np.testing.assert_array_equal(ours[k], official[k], err_msg=k)
    assert not np.any(ours['temp_embed'])


# --------------------------------------------------------------------------- CLI

def test_cli_writes_params_checkpoint_that_loads(tmp_path):
    from vtx.convert import families, tokshift
    from vtx import checkpoint
    path, manifest = _case('vit_tiny_baseline')
    out = str(tmp_path / 'converted')
    cmd = [sys.executable, '-m', 'vtx.convert', '--family', 'tokshift',
           '--checkpoint', os.path.join(path, 'checkpoint.pth'),
           '--official_config', os.path.join(path, 'manifest.json'), '--out', out]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': REPO})
    assert proc.returncode == 0, proc.stderr[-2000:]
    model_config = tokshift.model_config_from_manifest(manifest)
    abstract = _abstract(model_config, tokshift.example_input_shape(model_config))
    params, meta = checkpoint.load_params(out, abstract)
    assert meta['family'] == 'tokshift' and meta['model']['num_frames'] == 4
    direct = families.convert_checkpoint('tokshift', os.path.join(path, 'checkpoint.pth'),
                                         model_config, abstract, log=None)
    for k, v in engine.flatten_params(direct).items():
        np.testing.assert_array_equal(np.asarray(engine.flatten_params(params)[k]), v, err_msg=k)


def test_cli_refuses_wrong_family(tmp_path):
    path, _ = _case('xvit_tiny_k600cfg')
    proc = subprocess.run(
        [sys.executable, '-m', 'vtx.convert', '--family', 'tokshift', '--checkpoint',
         os.path.join(path, 'checkpoint.pth'), '--official_config',
         os.path.join(CASES, 'tokshift_tiny_div4', 'manifest.json'), '--out', str(tmp_path / 'x')],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': REPO})
    assert proc.returncode == 2
    assert 'base_model.blocks.0.attn.qkv.weight' in proc.stdout
    assert not os.path.exists(tmp_path / 'x')


# --------------------------------------------------------------------------- XViT mechanism

def test_space_time_mixing_groups_and_borders():
    """16 frames in groups of 8: frames 7 and 8 exchange nothing, borders are zero."""
    from vtx.models.space_time_mixing import temporal_channel_shift
    frames, tokens, channels, fold = 16, 2, 6, 2
    x = np.arange(1, frames * tokens * channels + 1, dtype=np.float32).reshape(
        frames, tokens, channels)
    out = np.asarray(temporal_channel_shift(jnp.asarray(x), num_segments=8, fold=fold))
    for t in range(frames):
        s = t % 8
        nxt = x[t + 1, :, :fold] if s < 7 else 0
        prev = x[t - 1, :, fold:2 * fold] if s > 0 else 0
        np.testing.assert_array_equal(out[t, :, :fold], np.broadcast_to(nxt, (tokens, fold)))
        np.testing.assert_array_equal(out[t, :, fold:2 * fold],
                                      np.broadcast_to(prev, (tokens, fold)))
        np.testing.assert_array_equal(out[t, :, 2 * fold:], x[t, :, 2 * fold:])


def test_cli_reads_official_cfg_from_slowfast_checkpoint(tmp_path):
    """Without --config the XViT converter builds the model from the checkpoint's own YAML cfg;
    the tiny fixture names a test-only backbone, which must be refused by name."""
    path, _ = _case('xvit_tiny_k600cfg')
    proc = subprocess.run(
        [sys.executable, '-m', 'vtx.convert', '--family', 'xvit', '--checkpoint',
         os.path.join(path, 'checkpoint.pth'), '--out', str(tmp_path / 'x')],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': REPO})
    assert proc.returncode == 2
    assert "XVIT.BASE_MODEL='vit_xvittest_xvit_tiny_k600cfg' is not a known backbone" in proc.stderr

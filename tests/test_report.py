"""vtx.report: MACs/FLOPs/params/memory against counts derived here by hand and against the
official code's measured MACs (parity/full/*.json, read from VTX_PARITY_FULL, default
../shared/parity/full relative to the repo root); the README table renderer's region rewrite."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

from scripts import render_model_table
from vtx import families, report
from vtx import config as vtx_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.path.join(REPO, os.environ.get('VTX_PARITY_FULL', '../shared/parity/full'))

# A tiny TokShift video-ViT: T frames of S x S, patch P, width D, MLP M, L layers, K classes.
T, S, P, D, M, L, K, HEADS = 2, 32, 8, 64, 96, 2, 4, 4
TINY = {'model.num_frames': T, 'data.num_frames': T, 'model.image_size': S, 'data.crop_size': S,
        'model.patch_size': P, 'model.hidden_size': D, 'model.mlp_dim': M, 'model.num_layers': L,
        'model.num_heads': HEADS, 'model.num_classes': K, 'data.num_classes': K}


def tiny_config(**extra):
    return vtx_config.load('demo', {**TINY, **extra})


def analytic_vit():
    """(params, forward MACs, forward MACs without the attention matmuls) of the tiny ViT."""
    n = (S // P) ** 2 + 1  # tokens per frame, with [CLS]
    patch_macs = T * (n - 1) * P * P * 3 * D
    projections = 4 * n * D * D + 2 * n * D * M  # q, k, v, out; fc1, fc2
    attention = 2 * n * n * D  # q k^T and weights @ v, all heads together
    head = T * D * K  # the head runs on every frame's [CLS]
    macs = patch_macs + T * L * (projections + attention) + head
    params = (P * P * 3 * D + D) + D + n * D + L * (4 * (D * D + D) + 2 * 2 * D + D * M + M + M * D + D) \
        + 2 * D + D * K + K
    return params, macs, macs - T * L * attention, patch_macs


@pytest.fixture(scope='module')
def tiny_report():
    return report.analyse(tiny_config(), batch=2)


def test_tiny_vit_counts_equal_analytic(tiny_report):
    params, macs, macs_no_attention, patch_macs = analytic_vit()
    r = tiny_report
    assert r['params'] == params
    assert r['forward']['macs_per_view'] == macs
    assert r['forward']['macs_excluding_attention_per_view'] == macs_no_attention
    # Backward: every matmul twice more (input and weight gradients), except that no gradient
    # flows into the video, so the patch projection has only its weight gradient.
    assert r['train']['macs_per_view'] == 3 * macs - patch_macs


def test_xla_flops_and_memory_sane(tiny_report):
    r = tiny_report
    for mode in report.MODES:
        m = r[mode]
        # XLA counts 2 per multiply-add plus the elementwise ops (softmax, norms, GELU).
        assert 2 * m['macs_per_view'] <= m['xla_flops_per_view'] <= 1.5 * 2 * m['macs_per_view']
        assert m['transcendentals_per_view'] > 0
        assert m['compiled']
    # Forward holds at least the fp32 params; the AdamW train step also both moments.
    assert r['forward']['peak_memory_bytes'] >= 4 * r['params']
    assert r['train']['peak_memory_bytes'] >= 3 * 4 * r['params']
    assert r['input_shape_per_view'] == [1, T, S, S, 3] and r['batch'] == 2


def test_uncompiled_flops_close_to_compiled(tiny_report):
    r = report.analyse(tiny_config(), batch=2, modes=('train',), compile_modes=())
    assert r['train']['peak_memory_bytes'] is None and not r['train']['compiled']
    assert r['train']['macs_per_view'] == tiny_report['train']['macs_per_view']
    assert r['train']['xla_flops_per_view'] == pytest.approx(tiny_report['train']['xla_flops_per_view'],
                                                              rel=0.02)


def test_count_macs_loops_and_branches():
    w = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    x = jax.ShapeDtypeStruct((4, 8), jnp.float32)

    def fn(w, x):
        def body(h, _):
            return h @ w @ w.T, None  # 2 x 4*8*16 MACs per iteration
        h, _ = jax.lax.scan(body, x, None, length=5)
        y = jax.lax.cond(h.sum() > 0, lambda a: a * 2, lambda a: a @ w @ w.T, h)  # max: 2 matmuls
        return y.sum() + (x @ x.T).sum()  # activation x activation: 4*4*8

    jaxpr = jax.make_jaxpr(fn)(w, x).jaxpr
    counts = report.count_macs(jaxpr, {jaxpr.invars[0]})
    assert counts['macs'] == 5 * 2 * 4 * 8 * 16 + 2 * 4 * 8 * 16 + 4 * 4 * 8
    assert counts['attention_macs'] == 4 * 4 * 8


def test_cli_json(capsys):
    from vtx.commands import report as command
    command.main(['--config', os.path.join(REPO, 'configs', 'demo.py'), '--json',
                  '--mode', 'forward'] + [f'--config.{k}={v}' for k, v in TINY.items()])
    out = json.loads(capsys.readouterr().out)
    assert out['forward']['macs_per_view'] == analytic_vit()[1]
    assert 'train' not in out and out['params'] == analytic_vit()[0]


# One full-size config per family (traced only, never compiled or materialised) against the
# MACs the official code performs (torch FlopCounterMode / 2).
FULL_SIZE = ('vit_b16_224_8f', 'xvit_k600', 'swin_tiny_patch244_window877_kinetics400_1k',
             'tps_swin_tiny_2D_patch244_k400', 'mvit_b_16x4_k400', 'stts_mvit_t0_0p6_s4_0p9',
             'stts_videoswin_t0_0p6')


@pytest.mark.parametrize('config_name', sorted(FULL_SIZE))
def test_full_size_macs_equal_official(config_name):
    _, zoo = families.find_in_zoo(config_name)
    with open(os.path.join(FULL, zoo.official_model + '.json')) as f:
        official = json.load(f)['flops_measured']['macs']
    config = vtx_config.load(config_name)
    assert report.model_macs(config, 1, 'forward') == pytest.approx(official, rel=1e-6)


def test_render_replaces_only_the_marked_region():
    text = 'intro\n<!-- model-table:start -->\nold\n<!-- model-table:end -->\noutro\n'
    new = render_model_table.replace_region(text, '| new |', 'README.md')
    assert new == 'intro\n<!-- model-table:start -->\n| new |\n<!-- model-table:end -->\noutro\n'
    with pytest.raises(SystemExit, match='model-table:start'):
        render_model_table.replace_region('no markers', '| new |', 'README.md')


def test_published_gflops_parsing():
    assert render_model_table.published_gflops({'published': {'gflops': '87.9G'}}) == 87.9
    assert render_model_table.published_gflops({'published': {'gflops_per_view': 134.7}}) == 134.7
    assert render_model_table.published_gflops({'published': {'gflops': None}}) is None
    assert render_model_table.published_gflops({}) is None

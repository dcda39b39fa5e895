"""MViT and STTS: block schedule, head input and selected tokens against the official ones, the
training path, and the full-size zoo (the mvit and stts_video_swin zoos of `vtx.families`): each zoo
config builds (shape inference only) the official model with the official parameter count and
keep counts, and a state dict of exactly the official keys and shapes fills every parameter with
nothing left over.
(Logit/probability parity of the `stts` cases runs in tests/test_parity.py.)"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtx import families
from vtx.convert import engine
from vtx.convert import families as converters
from tests.conftest import REPO
from tests.test_families import FULL, full_size_models
from vtx.models import build_model
from vtx import config as vtx_config
from vtx.models import mvit

CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))


STTS_FAMILIES = ('mvit', 'stts_video_swin')


def _stts_cases():
    out = []
    for name in sorted(os.listdir(CASES)) if os.path.isdir(CASES) else []:
        path = os.path.join(CASES, name, 'manifest.json')
        if os.path.isfile(path):
            with open(path) as f:
                if json.load(f).get('family') == 'stts':
                    out.append(name)
    return out


def test_block_schedule_is_mvit_b():
    """Spec table of MViT-B 16x4 (dims, heads, strides; widening in the last block of a stage)."""
    schedule = mvit.MViT(num_classes=400).schedule()
    dims = [(b['dim'], b['dim_out'], b['num_heads']) for b in schedule]
    assert dims == ([(96, 192, 1), (192, 192, 2), (192, 384, 2)] + [(384, 384, 4)] * 10
                    + [(384, 768, 4), (768, 768, 8), (768, 768, 8)])
    assert [i for i, b in enumerate(schedule) if b['stride_q']] == [1, 3, 14]
    kv = [b['stride_kv'] for b in schedule]
    assert kv[:1] == [(1, 8, 8)] and kv[1:3] == [(1, 4, 4)] * 2 and kv[3:14] == [(1, 2, 2)] * 11
    assert kv[14:] == [(1, 1, 1)] * 2 and all(b['kernel_kv'] == (3, 3, 3) for b in schedule)
    grid = (8, 56, 56)
    for b in schedule:
        grid = mvit.pooled_grid(grid, b['kernel_q'], b['stride_q'])
    assert grid == (8, 7, 7)
    # STTS windows: 13 -> 7, 12 -> 6, 11 -> 6 after block 14's q pooling.
    assert [mvit.pooled_grid((3, n, n), (3, 3, 3), (1, 2, 2))[1] for n in (13, 12, 11)] == [7, 6, 6]


def test_round_width():
    assert mvit.round_width(96, 2.0, divisor=2) == 192
    assert mvit.round_width(1, 2.0) == 2
    assert mvit.round_width(100, 1.0, divisor=64) == 128  # 64 would be < 90% of 100


def _tiny(**overrides):
    """3 blocks, q pooling in block 1; keeps 2 of 4 frames, then a 4x4 window of the 6x6 grid."""
    fields = dict(num_classes=5, num_frames=8, image_size=48, embed_dim=8, depth=3,
                  dim_mul=((1, 2.0),), head_mul=((1, 2.0),), pool_q_stride=((1, 1, 2, 2),),
                  pool_kv_stride_adaptive=(1, 4, 4), time_pruning_loc=0, time_left_ratio=0.5,
                  space_pruning_loc=2, space_left_ratio=0.5, selection_num_samples=50)
    fields.update(overrides)
    return mvit.MViT(**fields)


def test_keep_counts_official_quirks_and_exact_option():
    """Official: frames from num_frames // 2, spatial grid after the selection block's q stride."""
    model = _tiny(num_frames=12, patch_stride=(3, 4, 4), space_pruning_loc=1)  # block 1 pools q
    assert model.selection_counts(model.schedule()) == (3, 18)  # 6 * 0.5 frames; 6x6 * 0.5
    exact = _tiny(num_frames=12, patch_stride=(3, 4, 4), space_pruning_loc=1, keep_counts='exact')
    assert exact.selection_counts(exact.schedule()) == (2, 72)  # 4 * 0.5 frames; 12x12 * 0.5


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError, match='num_frames'):
        jax.eval_shape(lambda: _tiny().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 40, 40, 3))))


def _random_params(model, video):
    """Random params of the model's shapes without compiling its initialisers (slow on CPU)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype),
                        engine.abstract_params_of(model, video))


def test_training_needs_progress_and_trains_the_selectors():
    model = _tiny()
    video = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 48, 48, 3))
    params = _random_params(model, video)
    with pytest.raises(ValueError, match='train_progress'):
        model.apply({'params': params}, video, train=True, rngs={'dropout': jax.random.PRNGKey(2)})

    @jax.jit
    def loss_and_grads(params, progress):
        def loss(p):
            logits = model.apply({'params': p}, video, train=True, train_progress=progress,
                                 rngs={'dropout': jax.random.PRNGKey(2)})
            return jnp.sum(logits * jnp.arange(10.0).reshape(2, 5))
        return jax.value_and_grad(loss)(params)

    _, grads = loss_and_grads(params, jnp.float32(0.25))
    grads = engine.flatten_params(grads)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    for selector in ('time_selection', 'space_selection'):
        assert np.abs(grads[f'{selector}/score_network/in_fc/kernel']).sum() > 0, selector
    # At the end of training sigma is 0: hard selection, so the scorers get no gradient.
    _, grads = loss_and_grads(params, jnp.float32(1.0))
    grads = engine.flatten_params(grads)
    assert not np.any(grads['time_selection/score_network/in_fc/kernel'])


# Official module names in `selection_debug` -> vtx selector module names.
SELECTORS = {'time_score_predictor.0': 'time_selection',
             'space_score_predictor.0': 'space_selection',
             'backbone.time_score_predictor.0': 'time_selection'}


@pytest.mark.parametrize('case', _stts_cases())
def test_features_and_selection_match_official(case):
    """Head input vs `features.npy`; kept indices and normalised scores vs `selection_debug`."""
    from convert.verify import to_model_layout
    case_dir = os.path.join(CASES, case)
    with open(os.path.join(case_dir, 'manifest.json')) as f:
        manifest = json.load(f)
    model_config = converters.converter('stts').model_config_from_manifest(manifest)
    model = build_model(model_config)
    video = jnp.asarray(to_model_layout(np.load(os.path.join(case_dir, manifest['input']['file'])),
                                        manifest['input']['layout']))
    params = converters.convert_checkpoint(
        'stts', os.path.join(case_dir, manifest['checkpoint']['file']), model_config,
        engine.abstract_params_of(model, video, train=False), log=None)
    (_, features), state = jax.jit(lambda p, v: model.apply(
        {'params': p}, v, return_features=True, mutable=['intermediates']))(params, video)
    expected = np.load(os.path.join(case_dir, manifest['outputs']['features']))
    if expected.ndim == 5:  # Video Swin backbone output (B, C, T, H, W)
        expected = expected.transpose(0, 2, 3, 4, 1)
    tol = manifest['tolerance']
    np.testing.assert_allclose(features, expected, atol=tol['atol'], rtol=tol['rtol'])
    sown = state.get('intermediates', {})
    assert sorted(sown) == sorted(SELECTORS[d['module']] for d in manifest['selection_debug'])
    for debug in manifest['selection_debug']:
        selector = sown[SELECTORS[debug['module']]]
        np.testing.assert_array_equal(selector['indices'][0], debug['indices'],
                                      err_msg=debug['module'])
        np.testing.assert_allclose(selector['scores'][0], debug['scores'], atol=1e-4,
                                   err_msg=debug['module'])


def test_full_entries_found():
    assert full_size_models(*STTS_FAMILIES), f'no parity/full folder at {FULL}'


def _fields(module):
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ('parent', 'name')}


@pytest.mark.parametrize('stem', full_size_models(*STTS_FAMILIES))
def test_zoo_config_builds_the_official_model(stem):
    from vtx import optim
    with open(os.path.join(FULL, stem + '.json')) as f:
        entry = json.load(f)
    config = vtx_config.get(families.find_in_zoo(official_model=stem)[1].config)
    model = build_model(config.model)
    # The zoo config states exactly the official architecture (including the selection ratios).
    official = converters.converter('stts').model_config_from_manifest(entry)
    assert _fields(model) == _fields(build_model(official))

    d = config.data
    abstract = engine.abstract_params_of(
        model, jnp.zeros((1, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32), train=False)
    flat = engine.flatten_params(abstract)
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == entry['params']

    state = {k: np.broadcast_to(np.float32(0.5), shape) for k, (shape, _) in
             entry['state_dict'].items()}
    params, report = engine.convert_with_report(state, converters.converter('stts').table(
        config.model), abstract)
    assert report.ok, report.format()
    assert not report.filled and set(report.mapped) | set(report.ignored) == set(state)

    # Keep counts fixed at construction equal the official selectors' k.
    selectors = entry['selection_modules']
    if isinstance(model, mvit.MViT):
        time_keep, space_keep = model.selection_counts(model.schedule())
        assert time_keep == (selectors['time_score_predictor'][0]['k'] if selectors else None)
        assert space_keep == (selectors['space_score_predictor'][0]['k'] if selectors else None)
    else:
        keep = int(model.num_frames // 2 * model.time_left_ratio)
        assert keep == selectors['time_score_predictor'][0]['k']

    # The recipe builds an optimizer; the scorers get their official lr multiplier.
    optim.make_optimizer(config, abstract)
    multipliers = engine.flatten_params(optim.lr_multipliers(config, abstract))
    scorer = {k: v for k, v in multipliers.items() if '_selection/' in k}
    assert len(scorer) == (0 if not selectors else 10 * len(selectors))
    assert set(scorer.values()) <= {1.0 if isinstance(model, mvit.MViT) else 0.001}


def test_backbone_checkpoint_without_scorers_initialises_them(tmp_path):
    """STTS fine-tuning starts from a checkpoint without the predictors (official TRAIN.FINETUNE /
    load_from): every other tensor maps, the scorers get their initialisation."""
    import torch
    from vtx.convert import stts
    case_dir = os.path.join(CASES, 'stts_mvit_tiny_t0_s4')
    if not os.path.isdir(case_dir):
        pytest.skip(f'fixture {case_dir} is not available')
    with open(os.path.join(case_dir, 'manifest.json')) as f:
        manifest = json.load(f)
    checkpoint = torch.load(os.path.join(case_dir, 'checkpoint.pth'), map_location='cpu',
                            weights_only=True)
    backbone = {k: v for k, v in checkpoint['model_state'].items() if 'score_predictor' not in k}
    torch.save({'model_state': backbone, 'cfg': checkpoint['cfg']}, tmp_path / 'plain.pyth')
    model_config = converters.converter('stts').model_config_from_manifest(manifest)
    abstract = engine.abstract_params_of(build_model(model_config), jnp.zeros((1, 8, 80, 80, 3)))
    params = engine.flatten_params(stts.import_backbone(str(tmp_path / 'plain.pyth'), model_config,
                                                        abstract, log=None))
    scorer = {k: v for k, v in params.items() if '_selection/' in k}
    assert len(scorer) == 20
    assert np.all(scorer['time_selection/score_network/norm/scale'] == 1)
    assert np.std(scorer['space_selection/score_network/in_fc/kernel']) > 0
    np.testing.assert_array_equal(params['blocks_4/attn/qkv/kernel'],
                                  backbone['blocks.4.attn.qkv.weight'].numpy().T)

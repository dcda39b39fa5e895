"""The precision policy (docs/accelerators.md, "Precision"): 'auto' is float32 on CPU; bfloat16
compute keeps float32 parameters, optimizer state and loss; a bfloat16 forward of a small model
of each family stays within BF16_LOGIT_TOLERANCE of its float32 forward; and the fused attention
entry point (`jax.nn.dot_product_attention`) computes vtx's attention.

The models are those of the official parity cases (shared/parity/cases), with random weights:
the point is the numerics of each family's layers, not the official values."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_demo_config
from vtx import sharding, steps
from vtx.kernels.attention import attention_with_weights, dot_product_attention, fused_attention
from vtx.models import build_model, resolve_dtype

CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))
# max |bf16 logits - fp32 logits| <= this x max |fp32 logits|: bfloat16 keeps 8 significant
# bits (relative rounding 2^-9 per operation), a few layers deep; measured 0.7-2% on these models.
BF16_LOGIT_TOLERANCE = 0.05


# Left out: token selection (STTS on Swin), whose top-k is a discrete choice that bfloat16's
# rounding of near-equal scores can flip, so its logits may move by more than rounding; and TPS,
# Video Swin with a patch shift, a permutation with no arithmetic of its own. Their backbones are here.
LEFT_OUT = ('stts_video_swin', 'tps')


def one_case_per_model():
    """{vtx model name: its parity case with the smallest input}: each family's layers once."""
    from vtx.convert import families
    chosen = {}
    for case in sorted(os.listdir(CASES)) if os.path.isdir(CASES) else []:
        with open(os.path.join(CASES, case, 'manifest.json')) as f:
            manifest = json.load(f)
        config = families.converter(manifest['family']).model_config_from_manifest(manifest)
        size = np.prod(manifest['input']['shape'])
        if config['name'] not in LEFT_OUT and size < chosen.get(config['name'], (np.inf,))[0]:
            chosen[config['name']] = (size, case, manifest, dict(config))
    return {name: found[1:] for name, found in chosen.items()}


CASES_BY_MODEL = one_case_per_model()


def random_params(model, video):
    """Random weights of the model's shapes (no init compile): LayerNorm scales near 1."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video, train=False))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        noise = rng.normal(0, 0.05, leaf.shape).astype(np.float32)
        return noise + 1 if jax.tree_util.keystr(path).endswith("'scale']") else noise
    from flax import linen as nn
    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract['params']))


@pytest.mark.parametrize('name', sorted(CASES_BY_MODEL))
def test_bfloat16_forward_is_close_to_float32(name):
    from convert.verify import to_model_layout
    case, manifest, config = CASES_BY_MODEL[name]
    video = to_model_layout(np.load(os.path.join(CASES, case, manifest['input']['file'])),
                            manifest['input']['layout'])[:1]
    params = random_params(build_model(config), video)
    logits = {}
    for dtype in ('float32', 'bfloat16'):
        model = build_model({**config, 'dtype': dtype})
        logits[dtype] = np.asarray(jax.jit(lambda p, v: model.apply({'params': p}, v, train=False))(
            params, video), np.float32)
    scale = np.abs(logits['float32']).max()
    assert scale > 0
    assert np.abs(logits['bfloat16'] - logits['float32']).max() <= BF16_LOGIT_TOLERANCE * scale
    assert not np.array_equal(logits['bfloat16'], logits['float32']), 'bfloat16 did not compute'


def test_auto_is_float32_on_cpu_and_bfloat16_keeps_float32_state(tmp_path):
    assert jax.default_backend() == 'cpu' and resolve_dtype('auto') == 'float32'
    config = tiny_demo_config(str(tmp_path))
    assert config.model.dtype == 'auto'  # the default of every config
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    assert steps.build(config, mesh).config.model.dtype == 'float32'
    config.model.dtype = 'bfloat16'
    built = steps.build(config, mesh)
    assert {x.dtype for x in jax.tree.leaves(built.abstract_state.params)} == {jnp.dtype('float32')}
    opt_dtypes = {x.dtype for x in jax.tree.leaves(built.abstract_state.opt_state)}
    assert opt_dtypes <= {jnp.dtype('float32'), jnp.dtype('int32')}
    batch = {'image': jax.ShapeDtypeStruct(steps.input_shape(config, 2), jnp.float32),
             'label': jax.ShapeDtypeStruct((2,), jnp.int32)}
    state, metrics = jax.eval_shape(built.train_step, built.abstract_state, batch)
    assert metrics['loss'].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}


def test_fused_attention_entry_point_matches_vtx_attention():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 3, 17, 4, 8)), jnp.float32) for _ in range(3))
    reference, _ = attention_with_weights(q, k, v)
    np.testing.assert_allclose(fused_attention(q, k, v, 'xla'), reference, rtol=1e-5, atol=1e-6)
    # 'auto' (the ViT family's default) is the exact parity path on CPU.
    np.testing.assert_array_equal(dot_product_attention(q, k, v, implementation='auto'), reference)

"""Fast paths that change how a model computes, not what: `fused_qkv` and `scan_layers` keep the
parameter tree, and give the reference path's logits and gradients; scan really scans (ViT,
XViT, and STTS-MViT, whose selectors split the stack).

(That they also reproduce the official logits is `test_benchmark.py::
test_fast_paths_keep_official_parity`.)"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import primitive_sites
from vtx.models import layers
from vtx.models.mvit import MViT
from vtx.models.vit import VideoViT
from vtx.models.xvit import XViT

FRAMES = 8


def tiny(family, **fields):
    if family == 'vit':
        return VideoViT(num_classes=5, num_frames=FRAMES, image_size=16, patch_size=8,
                        hidden_size=32, mlp_dim=48, num_heads=4, num_layers=3,
                        temporal='token_shift', head_zero_init=False, **fields)
    if family == 'stts':
        # STTS-MViT, 5 blocks: block 0 widens, block 1 pools q, blocks 2-4 are equal, but the
        # window selection before block 3 splits them: one scan, of blocks 3-4.
        return MViT(num_classes=5, num_frames=FRAMES, image_size=48, embed_dim=8, depth=5,
                    dim_mul=((1, 2.0),), head_mul=((1, 2.0),), pool_q_stride=((1, 1, 2, 2),),
                    pool_kvq_kernel=(1, 3, 3), pool_kv_stride_adaptive=(1, 4, 4),
                    time_pruning_loc=0, time_left_ratio=0.5, space_pruning_loc=3,
                    space_left_ratio=0.5, selection_num_samples=20, **fields)
    # Mixing in blocks 0 and 2 only: the scan splits the stack into runs of equal blocks.
    return XViT(num_classes=5, image_size=16, patch_size=8, pos_embed_image_size=16,
                hidden_size=32, mlp_dim=48, num_heads=4, num_layers=4, mixing_layers=(0, 1, 3),
                head_num_heads=4, head_mlp_dim=16, dropout_rate=0.0, **fields)


def video(size=16):
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, FRAMES, size, size, 3)),
                       jnp.float32)


def video_for(family):
    return video(48 if family == 'stts' else 16)


def loss_and_grads(model, params, x, train=False, rng=None):
    # STTS's selectors train with a noise scale that follows the training progress.
    progress = {'train_progress': 0.5} if train and isinstance(model, MViT) else {}

    def loss(p):
        logits = model.apply({'params': p}, x, train=train,
                             rngs=None if rng is None else {'dropout': rng}, **progress)
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize('family,fields', [
    (family, fields) for family in ('vit', 'xvit') for fields in (
        {'fused_qkv': True}, {'scan_layers': True},
        {'scan_layers': True, 'remat': True, 'fused_qkv': True})] + [
    ('stts', {'scan_layers': True, 'remat': True})],
    ids=['vit-fused_qkv', 'vit-scan', 'vit-scan_remat_fused', 'xvit-fused_qkv', 'xvit-scan',
         'xvit-scan_remat_fused', 'stts-scan_remat'])
def test_same_tree_logits_and_grads(family, fields):
    x = video_for(family)
    reference = tiny(family)
    params = reference.init(jax.random.PRNGKey(0), x)['params']
    fast = tiny(family, **fields)
    fast_params = fast.init(jax.random.PRNGKey(0), x)['params']
    same = jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)),
                        nn.meta.unbox(params), nn.meta.unbox(fast_params))
    assert all(jax.tree.leaves(same)), 'the fast path must create the same parameters'
    params = nn.meta.unbox(params)
    ref_loss, ref_grads = loss_and_grads(reference, params, x)
    fast_loss, fast_grads = loss_and_grads(fast, params, x)
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-5)
    # float32 rounding of a different summation order, relative to the gradients' scale (some,
    # like the key bias's, are zero up to rounding).
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
                 fast_grads, ref_grads)


@pytest.mark.parametrize('family,runs', [('vit', [3]), ('xvit', [2]), ('stts', [2])])
def test_scan_compiles_one_body_per_run(family, runs):
    """Runs of two or more equal blocks are one scan each (a lone block, which may change the
    shape, is applied as it is); drop-path rates differ per layer and still train."""
    model = tiny(family, scan_layers=True, drop_path_rate=0.5)
    x = video_for(family)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), x)['params'])
    progress = {'train_progress': 0.5} if family == 'stts' else {}
    jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, x, train=True, **progress,
                                                 rngs={'dropout': jax.random.PRNGKey(1)}))(params)
    lengths = [e.params['length'] for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']
    assert lengths == runs
    # Drop-path is live: two dropout keys give different losses, and gradients are finite.
    loss_a, grads = loss_and_grads(model, params, x, train=True, rng=jax.random.PRNGKey(1))
    loss_b, _ = loss_and_grads(model, params, x, train=True, rng=jax.random.PRNGKey(2))
    assert loss_a != loss_b
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_unknown_attention_implementation_names_the_field():
    from vtx.errors import VtxError
    model = tiny('vit', attention_implementation='flash')
    with pytest.raises(VtxError, match=r"config.model.attention_implementation='flash'.*'cudnn'"):
        model.init(jax.random.PRNGKey(0), video())


def test_stochastic_depth_keeps_each_branch_with_one_minus_its_rate():
    """Layer i's branches are kept with probability 1 - rates[i], each sample and branch on its
    own, and a kept branch is scaled by 1 / (1 - rates[i])."""
    class Stack(nn.Module):
        rates: tuple
        deterministic: bool = False

        @nn.compact
        def __call__(self):
            return layers.stochastic_depth(self, self.rates, 20000, self.deterministic)

    draw = lambda stack: stack.apply({}, rngs={'dropout': jax.random.PRNGKey(0)})
    scales = np.asarray(draw(Stack((0.0, 0.25, 0.5))))
    assert scales.shape == (3, 2, 20000)
    for rate, layer in zip((0.0, 0.25, 0.5), scales):
        assert set(np.unique(layer)) <= {0.0, np.float32(1 / (1 - rate))}
        np.testing.assert_allclose((layer > 0).mean(axis=1), 1 - rate, atol=0.015)
    assert 0.2 < (scales[2, 0] == scales[2, 1]).mean() < 0.8   # branches drawn independently
    assert draw(Stack((0.0, 0.25), deterministic=True)) is None
    assert draw(Stack((0.0, 0.0))) is None


@pytest.mark.parametrize('family,stacks', [('vit', 1), ('xvit', 1), ('stts', 2)])
def test_stochastic_depth_is_one_draw_per_stack(family, stacks):
    """All blocks' drop-path masks come from one draw per stack (the tiny STTS's window selector
    cuts MViT's in two): drawn per residual branch, the random bits were expanded 2 x depth times in
    the compiled step (STTS-MViT's SGD train step compiled in 24.1-24.9 s then, 22.7-22.9 s now)."""
    x = video_for(family)
    progress = {'train_progress': 0.5} if family == 'stts' else {}

    def draws(rate):
        model = tiny(family, drop_path_rate=rate)
        params = model.init(jax.random.PRNGKey(0), x)['params']
        jaxpr = jax.make_jaxpr(lambda p: model.apply(
            {'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)},
            **progress))(params)
        return primitive_sites(jaxpr, 'random_bits')
    assert draws(0.3) - draws(0.0) == stacks

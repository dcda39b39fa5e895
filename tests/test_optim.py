"""vtx.optim's gradient clipping is torch.nn.utils.clip_grad_norm_, the official recipes' clip,
and its global norm compiles to one reduction over the leaves' sums instead of a chain of adds,
with the small leaves squared and summed together."""
import jax
import numpy as np
import pytest

from tests.conftest import primitive_sites
from vtx import optim


def gradients():
    rng = np.random.default_rng(0)
    return {'blocks_0': {'kernel': rng.normal(size=(6, 4)).astype(np.float32),
                         'bias': rng.normal(size=(4,)).astype(np.float32)},
            'head': {'kernel': rng.normal(size=(4, 3)).astype(np.float32)}}


@pytest.mark.parametrize('max_norm', [0.5, 100.0])   # clipped, and left as it is
def test_clipping_is_torchs_clip_grad_norm(max_norm):
    import torch
    grads = gradients()
    leaves = jax.tree.leaves(grads)
    tensors = [torch.zeros(g.shape, requires_grad=True) for g in leaves]
    for t, g in zip(tensors, leaves):
        t.grad = torch.tensor(g)
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    clipped, _ = optim.clip_by_global_norm(max_norm).update(grads, None)
    np.testing.assert_allclose(optim.global_norm(grads), total.item(), rtol=1e-6)
    for ours, t in zip(jax.tree.leaves(clipped), tensors):
        np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-6)


def test_global_norm_sums_the_leaves_at_once():
    tree = [np.ones((3,), np.float32)] * 40
    assert primitive_sites(jax.make_jaxpr(optim.global_norm)(tree), 'add') == 0
    np.testing.assert_allclose(optim.global_norm(tree), np.sqrt(120), rtol=1e-6)


def test_global_norm_sums_the_small_leaves_as_one_vector():
    # 40 small leaves and 2 large ones: one sum of the small ones, one per large leaf, one total.
    large = optim.GLOBAL_NORM_CONCAT_BELOW
    tree = [np.ones((3,), np.float32)] * 40 + [np.full((large,), 2.0, np.float32)] * 2
    assert primitive_sites(jax.make_jaxpr(optim.global_norm)(tree), 'reduce_sum') == 4
    np.testing.assert_allclose(optim.global_norm(tree), np.sqrt(120 + 2 * 4 * large), rtol=1e-6)

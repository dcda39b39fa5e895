"""STTS token selection: the two selectors and their training path (the top-k operators are in
tests/test_kernels.py, the official indices of the parity cases in tests/test_mvit.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vtx.models import token_selection as ts


def test_min_max_normalize():
    s = ts.min_max_normalize(jnp.array([[2.0, 4.0, 3.0]]))
    np.testing.assert_allclose(s, [[0.0, 2 / (2 + 1e-5), 1 / (2 + 1e-5)]], rtol=1e-6)


def test_window_token_indices_match_torch_unfold():
    for side, window, stride in [(14, 11, 1), (14, 12, 1), (5, 3, 1), (9, 3, 3), (8, 4, 2)]:
        grid = torch.arange(side * side, dtype=torch.float64).reshape(1, 1, side, side)
        unfolded = torch.nn.functional.unfold(grid, kernel_size=window, stride=stride)[0]
        np.testing.assert_array_equal(ts.window_token_indices(side, window, stride),
                                      unfolded.T.numpy().astype(np.int64))


def _params(module, x):
    """Random params of the module's shapes (compiling its initialisers is slow on CPU)."""
    rng = np.random.default_rng(0)
    abstract = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x)))
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), a.dtype), abstract)


def _run(module, x):
    """(variables, eval output, sown intermediates)."""
    variables = _params(module, x)
    out, state = jax.jit(lambda v, x: module.apply(v, x, mutable=['intermediates']))(variables, x)
    return variables, out, state['intermediates']


def _train_apply(module):
    """Jitted training-mode call (v, x, sigma) -> output; sigma is traced, so one compile."""
    return jax.jit(lambda v, x, s: module.apply(v, x, s, rngs={'dropout': jax.random.PRNGKey(5)}))


def test_temporal_selection_gathers_the_selected_frames_in_order():
    frames = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 3, 3, 8))
    _, out, inter = _run(ts.TemporalSelection(num_keep=4), frames)
    indices = np.asarray(inter['indices'][0])
    assert indices.shape == (2, 4) and np.all(np.diff(indices, axis=1) > 0)
    expected = np.stack([np.asarray(frames)[b, indices[b]] for b in range(2)])
    np.testing.assert_array_equal(out, expected)


def test_spatial_selection_gathers_one_window_per_frame():
    tokens = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 6, 6, 4))
    _, out, inter = _run(ts.SpatialWindowSelection(num_keep=17), tokens)  # window 4, stride 1
    assert out.shape == (2, 3, 4, 4, 4)
    anchors = np.asarray(inter['indices'][0])[:, 0]                    # (B*T,), 3x3 anchors
    flat = np.asarray(tokens).reshape(6, 6, 6, 4)
    for bt, anchor in enumerate(anchors):
        r, c = divmod(int(anchor), 3)
        np.testing.assert_array_equal(out.reshape(6, 4, 4, 4)[bt], flat[bt, r:r + 4, c:c + 4])


def test_spatial_selection_refuses_non_square_grids():
    with pytest.raises(ValueError, match='square'):
        _run(ts.SpatialWindowSelection(num_keep=4), jnp.zeros((1, 2, 4, 5, 8)))


@pytest.mark.parametrize('module,shape', [(ts.TemporalSelection(num_keep=3), (2, 5, 4, 4, 8)),
                                          (ts.SpatialWindowSelection(num_keep=9), (2, 2, 5, 5, 8))])
def test_training_path_at_zero_sigma_equals_eval_and_is_soft_otherwise(module, shape):
    x = jax.random.normal(jax.random.PRNGKey(4), shape)
    variables, hard, _ = _run(module, x)
    train_apply = _train_apply(module)
    np.testing.assert_allclose(train_apply(variables, x, jnp.float32(0.0)), hard, atol=1e-6)
    soft = train_apply(variables, x, jnp.float32(10.0))
    assert soft.shape == hard.shape and not np.allclose(soft, hard, atol=1e-3)


@pytest.mark.parametrize('module,shape', [(ts.TemporalSelection(num_keep=3), (2, 5, 4, 4, 8)),
                                          (ts.SpatialWindowSelection(num_keep=9), (2, 2, 5, 5, 8))])
def test_gradients_reach_the_scorer_in_training(module, shape):
    x = jax.random.normal(jax.random.PRNGKey(6), shape)
    variables = _params(module, x)

    def loss(params):
        out = module.apply({'params': params}, x, 0.5, rngs={'dropout': jax.random.PRNGKey(7)})
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

    grads = jax.jit(jax.grad(loss))(variables['params'])
    leaves = jax.tree.leaves(grads['score_network'])
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert np.abs(grads['score_network']['out_fc2']['kernel']).sum() > 0
    assert np.abs(grads['score_network']['in_fc']['kernel']).sum() > 0


def test_top_k_sigma_schedule():
    assert ts.top_k_sigma(False, 0.3, 0.1) is None
    np.testing.assert_allclose(ts.top_k_sigma(True, 0.25, 0.1), 0.075, rtol=1e-6)
    np.testing.assert_allclose(ts.top_k_sigma(True, 1.0, 0.1), 0.0)
    assert ts.top_k_sigma(True, 0.5, 0.05, decay=False) == 0.05
    with pytest.raises(ValueError, match='train_progress'):
        ts.top_k_sigma(True, None, 0.1)

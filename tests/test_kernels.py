"""vtx.kernels: each kernel against the plain computation it stands for.

(The window-attention VJP against autodiff of the attention formula is
tests/test_video_swin.py::test_window_attention_vjp_equals_autodiff_of_the_formula; that the
fast paths keep official parity is tests/test_benchmark.py.)"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtx.errors import VtxError
from vtx.kernels.attention import dot_product_attention
from vtx.kernels.pooling import shifted_sum_conv
from vtx.kernels.projection import dense_projections
from vtx.kernels.top_k import hard_top_k, perturbed_top_k
from vtx.kernels.window_attention import sum_to_shape, window_attention


# --------------------------------------------------------------------------- window attention

@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('with_mask', [False, True])
def test_window_attention_trains_with_the_forward_it_evaluates(dtype, with_mask):
    """Eval (the primal), the VJP's forward and every other vtx attention give the same bits."""
    rng = np.random.default_rng(1)
    windows, n, heads, hd = (2, 3), 10, 2, 4
    qkv = jnp.asarray(rng.normal(size=(1, *windows, n, 3, heads, hd)), dtype)
    bias = jnp.asarray(rng.normal(size=(heads, n, n)), jnp.float32)
    mask = (jnp.asarray(np.where(rng.random((*windows, 1, n, n)) < 0.3, -100.0, 0.0), jnp.float32)
            if with_mask else None)
    evaluated = window_attention(qkv, bias, mask)
    trained, _ = jax.vjp(lambda a: window_attention(a, bias, mask), qkv)
    shared = dot_product_attention(*(qkv[..., i, :, :] for i in range(3)),
                                   bias=bias if mask is None else bias + mask)
    assert evaluated.dtype == dtype
    np.testing.assert_array_equal(trained, evaluated)
    np.testing.assert_array_equal(shared, evaluated)


@pytest.mark.parametrize('shape,target', [
    ((2, 3, 4, 5, 6), (1, 1, 4, 5, 6)),          # Video Swin: one bias for every window
    ((2, 16, 3, 2, 5, 5), (1, 16, 1, 2, 5, 5)),  # TPS: one bias per frame
    ((3, 4), (3, 4))])                           # nothing broadcast
def test_sum_to_shape_sums_over_the_broadcast_axes(shape, target):
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, target)) if t == 1 and s != 1)
    out = sum_to_shape(x, target)
    assert out.shape == target
    np.testing.assert_allclose(out, jnp.sum(x, axis=axes, keepdims=True), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- pooling

@pytest.mark.parametrize('kernel,strides', [((3, 3, 3), (1, 1, 1)), ((3, 3, 3), (1, 2, 2)),
                                            ((3, 3, 3), (2, 4, 4)), ((1, 3, 3), (1, 8, 8)),
                                            ((3, 3, 3), (1, 8, 8))])
def test_shifted_sum_conv_is_the_depthwise_convolution(kernel, strides):
    """Same parameters as nn.Conv's own convolution, the same output and gradients up to float
    rounding."""
    channels = 5
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 9, 8, channels)), jnp.float32)

    def conv(**implementation):
        return nn.Conv(channels, kernel, strides=strides, padding=[(k // 2, k // 2) for k in kernel],
                       feature_group_count=channels, use_bias=False, **implementation)

    params = conv().init(jax.random.PRNGKey(0), x)
    shifted_params = conv(conv_general_dilated=shifted_sum_conv).init(jax.random.PRNGKey(0), x)
    jax.tree.map(np.testing.assert_array_equal, shifted_params, params)
    reference, reference_vjp = jax.vjp(conv().apply, params, x)
    out, vjp = jax.vjp(conv(conv_general_dilated=shifted_sum_conv).apply, params, x)
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
    # The hand-written backward against the convolution's autodiff, for the input and the weights.
    grad = jnp.asarray(np.random.default_rng(4).normal(size=out.shape), jnp.float32)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 vjp(grad), reference_vjp(grad))


def test_shifted_sum_conv_refuses_a_dense_convolution():
    x, w = jnp.zeros((1, 4, 4, 4, 3)), jnp.zeros((3, 3, 3, 3, 3))
    with pytest.raises(VtxError, match='depthwise'):
        shifted_sum_conv(x, w, (1, 1, 1), [(1, 1)] * 3, feature_group_count=1)


# --------------------------------------------------------------------------- projections

@pytest.mark.parametrize('with_bias', [False, True])
def test_fused_projections_equal_the_separate_ones(with_bias):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 7, 6)), jnp.float32)
    kernels = [jnp.asarray(rng.normal(size=(6, 8)), jnp.float32) for _ in range(3)]
    biases = [jnp.asarray(rng.normal(size=(8,)), jnp.float32) if with_bias else None
              for _ in range(3)]
    separate = dense_projections(x, kernels, biases)
    fused = dense_projections(x, kernels, biases, fused=True)
    for f, s, k, b in zip(fused, separate, kernels, biases):
        np.testing.assert_allclose(s, x @ k + (0 if b is None else b), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- top-k

def test_hard_top_k_keeps_the_k_largest_in_ascending_order():
    scores = jnp.array([[0.1, 0.9, 0.3, 0.8, 0.5], [1.0, 0.0, 0.2, 0.4, 0.3]])
    np.testing.assert_array_equal(hard_top_k(scores, 3), [[1, 3, 4], [0, 3, 4]])


def test_perturbed_top_k_forward_and_backward_follow_the_estimator():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(2, 6)).astype(np.float32)
    noise = rng.standard_normal((2, 50, 6)).astype(np.float32)
    sigma, k = 0.3, 2
    cotangent = rng.standard_normal((2, k, 6)).astype(np.float32)
    # Independent numpy computation of the official forward and custom backward.
    perturbed = scores[:, None] + sigma * noise
    idx = np.sort(np.argsort(-perturbed, axis=-1)[..., :k], axis=-1)
    one_hot = np.eye(6, dtype=np.float32)[idx]                     # b n k d
    expected_forward = one_hot.mean(1)
    expected_grad = np.einsum('bkd,bkd->bd', cotangent,
                              np.einsum('bnkd,bnd->bkd', one_hot, noise) / 50 / sigma)
    out, vjp = jax.vjp(lambda s: perturbed_top_k(s, jnp.asarray(noise), jnp.float32(sigma), k),
                       jnp.asarray(scores))
    np.testing.assert_allclose(out, expected_forward, atol=1e-6)
    np.testing.assert_allclose(vjp(jnp.asarray(cotangent))[0], expected_grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        perturbed_top_k(jnp.asarray(scores), jnp.asarray(noise), jnp.float32(sigma), k), out)


def test_perturbed_top_k_at_zero_sigma_is_hard_top_k_with_zero_gradient():
    scores = jax.random.uniform(jax.random.PRNGKey(0), (3, 8))
    noise = jax.random.normal(jax.random.PRNGKey(1), (3, 500, 8))
    indicators, vjp = jax.vjp(lambda s: perturbed_top_k(s, noise, jnp.float32(0.0), 3), scores)
    np.testing.assert_array_equal(indicators, jax.nn.one_hot(hard_top_k(scores, 3), 8))
    grad = vjp(jnp.ones_like(indicators))[0]
    assert np.all(np.isfinite(grad)) and not np.any(grad)

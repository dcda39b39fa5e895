"""STTS's top-k operators: the hard top-k of eval and the perturbed (differentiable) top-k of
training (the perturbed-maximum estimator of Berthet et al., as Cordonnier et al. and STTS use it).
"""
import functools

import jax
import jax.numpy as jnp

# Below this sigma the official backward returns a zero gradient instead of dividing by sigma.
_MIN_SIGMA = 1e-20


def hard_top_k(scores, k: int):
    """Indices [b, k] of the k largest scores of each row, in ascending (temporal/raster) order."""
    return jnp.sort(jax.lax.top_k(scores, k)[1], axis=-1)


def _forward(scores, noise, sigma, k):
    """(indicators, residuals): the mean over the samples of the one-hot top-k [b, n, k, d] of
    each perturbed copy (ascending index order within k), and what the backward needs."""
    one_hot = jax.nn.one_hot(hard_top_k(scores[:, None, :] + sigma * noise, k), scores.shape[-1],
                             dtype=scores.dtype)
    return one_hot.mean(axis=1), (one_hot, noise, sigma)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def perturbed_top_k(scores, noise, sigma, k: int):
    """Differentiable top-k indicators [b, k, d] of scores [b, d] under noise [b, n, d] ~ N(0, 1).

    Forward: mean over the n samples of the one-hot top-k of `scores + sigma * noise`.
    Backward: d scores[b, j] = sum_i g[b, i, j] * E[b, i, j] with
    E = mean_n(one_hot[b, n, i, j] * noise[b, n, j]) / sigma (zero when sigma <= 1e-20).
    """
    return _forward(scores, noise, sigma, k)[0]


def _backward(k, residuals, g):
    one_hot, noise, sigma = residuals
    positive = sigma > _MIN_SIGMA
    expected = jnp.einsum('bnkd,bnd->bkd', one_hot, noise) / noise.shape[1]
    expected = jnp.where(positive, expected / jnp.where(positive, sigma, 1.0), 0.0)
    return jnp.einsum('bkd,bkd->bd', g, expected), jnp.zeros_like(noise), jnp.zeros_like(sigma)


perturbed_top_k.defvjp(_forward, _backward)

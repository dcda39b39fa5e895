"""Blocks shared by every model family: attention core, MLP, patch embedding, drop-path.

Parameters carry logical axis names (see `vtx.sharding` for the rules that map them onto the
mesh). Compute runs in `dtype` (float32 or bfloat16); parameters are stored in `param_dtype`.
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vtx.errors import VtxError

Dtype = Any

# PyTorch's default Linear/Conv init is not reproduced: vtx trains from scratch with the
# initialisers the JAX ViT lineage uses, and imports official weights through `convert/`.
default_kernel_init = nn.initializers.xavier_uniform()
default_bias_init = nn.initializers.zeros


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          kernel_init: Callable = default_kernel_init, name: Optional[str] = None) -> nn.Dense:
    """A Dense layer whose kernel/bias carry the logical axis names `axes` = (in, out)."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(default_bias_init, (axes[1],)))


def layer_norm(eps: float, dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)))


def dot_product_attention(query, key, value, *, bias=None, mask=None, dropout_rng=None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          implementation: str = 'xla'):
    """softmax(q k^T / sqrt(d) + bias) v over [..., length, heads, head_dim] inputs.

    `bias` broadcasts against the [..., heads, q_length, kv_length] scores; `mask` is True where
    attention is allowed. The softmax runs in float32 whatever the compute dtype, as the official
    models do. `implementation='cudnn'` uses `jax.nn.dot_product_attention`'s fused GPU kernel
    (no bias, mask or dropout on that path).
    """
    if implementation != 'xla':
        if bias is not None or mask is not None or (dropout_rate > 0 and not deterministic):
            raise VtxError(f"attention implementation {implementation!r} supports neither bias, "
                             "mask nor attention dropout; use 'xla'")
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    head_dim = query.shape[-1]
    scores = jnp.einsum('...qhd,...khd->...hqk', query, key) / jnp.sqrt(head_dim).astype(query.dtype)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    if dropout_rate > 0 and not deterministic:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(value.dtype)
    return jnp.einsum('...hqk,...khd->...qhd', weights, value)


class Mlp(nn.Module):
    """Linear -> GELU (exact erf) -> dropout -> Linear -> dropout; names fc1/fc2 as the officials."""
    hidden_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        out_dim = x.shape[-1]
        x = dense(self.hidden_dim, ('embed', 'mlp'), dtype=self.dtype, name='fc1')(x)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
        x = nn.gelu(x, approximate=False)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = dense(out_dim, ('mlp', 'embed'), dtype=self.dtype, name='fc2')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescales survivors by 1/(1-p)."""
    rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if self.rate == 0.0 or deterministic:
            return x
        keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.rate,
                                    (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a conv with kernel = stride = patch), VALID padding.

    Works for 2D (`patch_size` of length 2, input [N, H, W, C]) and 3D (length 3, input
    [N, T, H, W, C]) patches. Trailing pixels that do not fill a patch are dropped, as in the
    official 2D ViTs; families that pad first (Video Swin) pad before calling this.
    """
    embed_dim: int
    patch_size: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        patch = tuple(self.patch_size)
        return nn.Conv(
            self.embed_dim, kernel_size=patch, strides=patch, padding='VALID', dtype=self.dtype,
            name='proj',
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None,) * len(patch) + ('channels', 'embed')),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(x)


def truncated_normal(stddev: float = 0.02) -> Callable:
    return nn.initializers.truncated_normal(stddev)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections and an output projection.

    Feature j of q/k/v belongs to head j // head_dim (head-major), as in every official model.
    Subclasses change what attends to what by overriding `mix_keys_values` (XViT's space-time
    mixing), which sees the projected keys and values [..., L, D] before the head split.
    """
    num_heads: int
    qkv_bias: bool = True
    attention_dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    implementation: str = 'xla'

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        *lead, length, dim = x.shape
        head_dim = dim // self.num_heads

        def project(name):
            return dense(dim, ('embed', 'heads'), use_bias=self.qkv_bias, dtype=self.dtype,
                         name=name)(x)

        query = project('query')
        key, value = self.mix_keys_values(project('key'), project('value'))
        split = lambda y: y.reshape(*lead, length, self.num_heads, head_dim)
        dropout_rng = None
        if self.attention_dropout_rate > 0 and not deterministic:
            dropout_rng = self.make_rng('dropout')
        context = dot_product_attention(
            split(query), split(key), split(value), dropout_rng=dropout_rng,
            dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
            implementation=self.implementation)
        context = context.reshape(*lead, length, dim)
        return dense(dim, ('heads', 'embed'), dtype=self.dtype, name='out')(context)

    def mix_keys_values(self, key, value):
        return key, value

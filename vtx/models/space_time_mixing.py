"""XViT's space-time mixing attention (Bulat et al., NeurIPS 2021).

Attention stays spatial (each frame's tokens attend to the tokens of the same frame), but the keys
and values carry channels from the neighbouring frames: a fold of channels is taken from frame t+1
and the next fold from frame t-1. Queries are never mixed.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vtx.errors import VtxError
from vtx.models import layers


def temporal_channel_shift(x, num_segments: int, fold: int):
    """x: [B*T', L, C] with consecutive groups of `num_segments` images.

    Within each group, channels [0, fold) take image s+1's value and [fold, 2*fold) image s-1's;
    group edges are zero-filled (no wrap, nothing crosses groups). Every token is shifted.
    """
    images, length, channels = x.shape
    if images % num_segments:
        raise VtxError(f'space-time mixing: {images} images are not a multiple of '
                         f'num_segments={num_segments}')
    z = x.reshape(images // num_segments, num_segments, length, channels)
    from_next = jnp.pad(z[:, 1:, :, :fold], ((0, 0), (0, 1), (0, 0), (0, 0)))
    from_prev = jnp.pad(z[:, :-1, :, fold:2 * fold], ((0, 0), (1, 0), (0, 0), (0, 0)))
    z = jnp.concatenate([from_next, from_prev, z[..., 2 * fold:]], axis=-1)
    return z.reshape(x.shape)


class SpaceTimeMixingAttention(nn.Module):
    """Multi-head self-attention over [N, L, D] whose keys/values are time-shifted when `mix`.

    Projections are named query/key/value/out (the official fused `qkv` is split on import).
    The shift acts on channel c = head * head_dim + j, before the head split, as in the official.
    """
    num_heads: int
    mix: bool = False
    num_segments: int = 8
    shift_div: int = 8
    qkv_bias: bool = True
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    attention_implementation: str = 'xla'

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        *lead, length, dim = x.shape
        head_dim = dim // self.num_heads

        def project(name):
            return layers.dense(dim, ('embed', 'heads'), use_bias=self.qkv_bias, dtype=self.dtype,
                                name=name)(x)

        q, k, v = project('query'), project('key'), project('value')
        if self.mix:
            fold = dim // self.shift_div
            k = temporal_channel_shift(k, self.num_segments, fold)
            v = temporal_channel_shift(v, self.num_segments, fold)
        split = lambda y: y.reshape(*lead, length, self.num_heads, head_dim)
        dropout_rng = None
        if self.attention_dropout_rate > 0 and not deterministic:
            dropout_rng = self.make_rng('dropout')
        context = layers.dot_product_attention(
            split(q), split(k), split(v), dropout_rng=dropout_rng,
            dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
            implementation=self.attention_implementation)
        context = context.reshape(*lead, length, dim)
        return layers.dense(dim, ('heads', 'embed'), dtype=self.dtype, name='out')(context)

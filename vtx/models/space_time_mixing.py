"""XViT's space-time mixing attention (Bulat et al., NeurIPS 2021).

Attention stays spatial (each frame's tokens attend to the tokens of the same frame), but the keys
and values carry channels from the neighbouring frames: a fold of channels is taken from frame t+1
and the next fold from frame t-1. Queries are never mixed.
"""

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


class SpaceTimeMixingAttention(layers.SelfAttention):
    """Multi-head self-attention over [N, L, D] whose keys/values are time-shifted when `mix`.

    Projections are named query/key/value/out (the official fused `qkv` is split on import).
    The shift acts on channel c = head * head_dim + j, before the head split, as in the official.
    """
    mix: bool = False
    num_segments: int = 8
    shift_div: int = 8

    def mix_keys_values(self, key, value):
        if not self.mix:
            return key, value
        fold = key.shape[-1] // self.shift_div
        return (temporal_channel_shift(key, self.num_segments, fold),
                temporal_channel_shift(value, self.num_segments, fold))

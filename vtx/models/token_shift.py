"""TokShift's temporal mechanism: shift part of the [CLS] token's channels across neighbouring frames."""
import flax.linen as nn
import jax.numpy as jnp

from vtx.errors import VtxError


class TokenShift(nn.Module):
    """Shifts channels of token 0 ([CLS]) along time within each clip; patch tokens are untouched.

    Input [B*T, N+1, D] with frame index fastest. With fold = D // shift_div, channels [0, fold)
    take frame t+1's value and [fold, 2*fold) take frame t-1's; borders are zero-filled (no wrap).
    """
    num_frames: int
    shift_div: int = 4

    @nn.compact
    def __call__(self, x):
        frames_total, tokens, dim = x.shape
        if frames_total % self.num_frames:
            raise VtxError(f'TokenShift: leading dim {frames_total} is not a multiple of '
                             f'num_frames={self.num_frames}')
        fold = dim // self.shift_div
        z = x.reshape(frames_total // self.num_frames, self.num_frames, tokens, dim)
        cls = z[:, :, 0]
        from_next = jnp.pad(cls[:, 1:, :fold], ((0, 0), (0, 1), (0, 0)))
        from_prev = jnp.pad(cls[:, :-1, fold:2 * fold], ((0, 0), (1, 0), (0, 0)))
        cls = jnp.concatenate([from_next, from_prev, cls[:, :, 2 * fold:]], axis=-1)
        return z.at[:, :, 0].set(cls).reshape(x.shape)

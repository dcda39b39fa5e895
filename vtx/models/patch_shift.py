"""TPS's temporal mixing (Xiang et al., ECCV 2022): temporal patch shift and per-head channel shift.

Both act on windowed tokens laid out [B, D, nS, N, ...] (D frames, nS windows per frame, N = 7x7
tokens per window, row-major) before the qkv projection of window attention.
"""
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError

# Frame shift k of the token at window-local (row % 3, col % 3): it takes the features of frame
# t - k (cyclic). The pattern restarts in every 7x7 window (7 is not a multiple of 3).
PATTERN = np.array([[-4, 1, 2],
                    [-1, 0, 3],
                    [-2, -3, 4]])


def token_shifts(window=(7, 7)) -> np.ndarray:
    """[N] frame shift of each token of a window, tokens row-major."""
    rows, cols = np.meshgrid(np.arange(window[0]), np.arange(window[1]), indexing='ij')
    return PATTERN[rows % 3, cols % 3].reshape(-1)


def source_frames(num_frames: int, window=(7, 7)) -> np.ndarray:
    """[D, N]: the frame whose features token n of frame t holds after the patch shift."""
    return (np.arange(num_frames)[:, None] - token_shifts(window)[None, :]) % num_frames


def temporal_patch_shift(x, inverse: bool = False):
    """Cyclic per-token roll along frames (axis 1) of x [B, D, nS, N, ...]; `inverse` undoes it."""
    d, n = x.shape[1], x.shape[3]
    shifts = token_shifts((int(round(n ** 0.5)),) * 2)
    if shifts.size != n:
        raise VtxError(f'temporal_patch_shift: windows of {n} tokens are not square')
    sign = -1 if inverse else 1
    index = (np.arange(d)[:, None] - sign * shifts[None, :]) % d
    index = index.reshape((1, d, 1, n) + (1,) * (x.ndim - 4))
    return jnp.take_along_axis(x, jnp.asarray(index, jnp.int32), axis=1)


def channel_shift(x, num_heads: int):
    """TSM inside every head of x [B, D, ..., C]: with fold = head_dim // 8, channels [0, fold) take
    the previous frame and [fold, 2 fold) the next one; boundary frames keep their own values."""
    c = x.shape[-1]
    head_dim = c // num_heads
    fold = head_dim // 8
    if fold == 0:
        return x
    previous = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
    following = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    j = np.arange(c) % head_dim
    return jnp.where(j < fold, previous, jnp.where(j < 2 * fold, following, x))

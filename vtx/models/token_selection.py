"""STTS token selection (Wang et al., ECCV 2022): a light scorer ranks frames or spatial windows and
only the top-k are kept, so every later block runs on fewer tokens.

Two selectors share one scorer network (`ScorePredictor`) and one top-k (`vtx.kernels.top_k`):
  - `TemporalSelection` ('tpool'): keeps `num_keep` whole frames, in their temporal order;
  - `SpatialWindowSelection` ('spatch'): keeps one a x a window of tokens per frame,
    a = int(sqrt(k)).

Eval (`sigma=None`) takes the hard top-k. Training passes `sigma` (a scalar, may be traced): the
selection becomes the perturbed-maximum top-k of Berthet et al. / Cordonnier et al. -- the mean over
`num_samples` Gaussian perturbations of the one-hot top-k, whose gradient w.r.t. the scores is the
noise-weighted estimator -- and the kept tokens are the indicator-weighted sums of the candidates.
The noise is drawn from the 'dropout' rng stream, which every vtx train step already supplies.
`sigma -> 0` reproduces the hard selection exactly (the scorer then gets no gradient).

Models using the selectors (MViT, Video Swin with `time_left_ratio`) take `train_progress` (the
fraction of training done, 0..1, may be traced) in `__call__` and turn it into sigma with
`top_k_sigma`: the official linear decay from sigma_max to 0 over the run. The train step passes
`train_progress=step / total_steps`; training without it is an error, eval ignores it.

Both selectors sow the normalised scores and the hard indices (eval only) into the
'intermediates' collection, so a caller can inspect what was kept.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.kernels.top_k import hard_top_k, perturbed_top_k
from vtx.models import layers

# Official scorer LayerNorm: torch's default eps, not the 1e-6 of the MViT blocks.
SCORER_NORM_EPS = 1e-5


class ScorePredictor(nn.Module):
    """The official 'PredictorLG' scorer: one score per candidate along axis -2 of [..., L, D].

    LN -> Linear(D) -> GELU, then the second half of the channels is replaced by its mean over the L
    candidates (a global context), then Linear(D/2) -> GELU -> Linear(D/4) -> GELU -> Linear(1).
    """
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        dim = z.shape[-1]
        h = layers.layer_norm(SCORER_NORM_EPS, dtype=self.dtype, name='norm')(z)
        h = layers.gelu(layers.dense(dim, (None, None), dtype=self.dtype, name='in_fc')(h))
        local, context = h[..., :dim // 2], h[..., dim // 2:]
        context = jnp.broadcast_to(context.mean(axis=-2, keepdims=True), context.shape)
        h = jnp.concatenate([local, context], axis=-1)
        for i, width in enumerate((dim // 2, dim // 4)):
            h = layers.gelu(
                layers.dense(width, (None, None), dtype=self.dtype, name=f'out_fc{i}')(h))
        return layers.dense(1, (None, None), dtype=self.dtype, name='out_fc2')(h)[..., 0].astype(
            jnp.float32)


def top_k_sigma(train: bool, train_progress, sigma_max: float, decay: bool = True):
    """The top-k noise scale of a training step: sigma_max * (1 - train_progress) with `decay` (the
    official linear decay to 0 over the run, updated every step), else sigma_max; None at eval
    (hard top-k). `train_progress` is the fraction of training done (0..1, may be traced)."""
    if not train:
        return None
    if train_progress is None:
        raise VtxError('STTS token selection in training needs `train_progress` (fraction of '
                         'training done, 0..1) passed to model.apply(...) to set the top-k sigma')
    if not decay:
        return sigma_max
    return sigma_max * (1.0 - jnp.asarray(train_progress, jnp.float32))


def min_max_normalize(scores):
    """Rescales each row of [b, d] scores to [0, 1) as the official code does (eps 1e-5)."""
    low = scores.min(axis=-1, keepdims=True)
    high = scores.max(axis=-1, keepdims=True)
    return (scores - low) / (high - low + 1e-5)


def _select(module: nn.Module, scores, k: int, sigma, num_samples: int):
    """(indices [b, k], None) at eval (sigma None), else (None, indicators [b, k, d])."""
    module.sow('intermediates', 'scores', scores)
    if sigma is None:
        indices = hard_top_k(scores, k)
        module.sow('intermediates', 'indices', indices)
        return indices, None
    noise = jax.random.normal(module.make_rng('dropout'), (scores.shape[0], num_samples,
                                                          scores.shape[1]), scores.dtype)
    return None, perturbed_top_k(scores, noise, jnp.asarray(sigma, scores.dtype), k)


class TemporalSelection(nn.Module):
    """'tpool': frames [B, T, *grid, C] -> the `num_keep` best frames [B, num_keep, *grid, C], in
    temporal order.

    Each frame is described by [mean, max] over its tokens (2C channels) and scored against the
    others (the scorer's context half is a mean over frames).
    """
    num_keep: int
    num_samples: int = 500
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames, sigma=None):
        batch, num_frames, *grid, channels = frames.shape
        if not 0 < self.num_keep <= num_frames:
            raise VtxError(f'TemporalSelection: cannot keep {self.num_keep} of {num_frames} '
                             'frames')
        flat = frames.reshape(batch, num_frames, -1, channels)
        descriptor = jnp.concatenate([flat.mean(axis=2), flat.max(axis=2)], axis=-1)
        scores = ScorePredictor(dtype=self.dtype, name='score_network')(descriptor)
        scores = min_max_normalize(scores)
        indices, indicators = _select(self, scores, self.num_keep, sigma, self.num_samples)
        if indicators is None:
            kept = jnp.take_along_axis(flat, indices[:, :, None, None], axis=1)
        else:
            kept = jnp.einsum('bkt,btnc->bknc', indicators.astype(flat.dtype), flat)
        return kept.reshape(batch, self.num_keep, *grid, channels)


def window_token_indices(side: int, window: int, stride: int):
    """[L, window**2] raster token indices of every window position on a side x side grid,
    windows in raster order (the order of torch's unfold)."""
    starts = np.arange(0, side - window + 1, stride)
    rows = starts[:, None, None, None] + np.arange(window)[None, None, :, None]
    cols = starts[None, :, None, None] + np.arange(window)[None, None, None, :]
    return (rows * side + cols).reshape(len(starts) ** 2, window * window)


class SpatialWindowSelection(nn.Module):
    """'spatch': tokens [B, T, H, W, C] -> one a x a window per frame [B, T, a, a, C].

    a = int(sqrt(num_keep)); candidate windows step by `stride` (default max((H - a) // 2, 1)).
    Every token is scored within its frame; a window's score is the mean of its tokens' scores.
    Only square grids are supported, as in the official code.
    """
    num_keep: int
    stride: Optional[int] = None
    num_samples: int = 500
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, sigma=None):
        batch, frames, height, width, channels = tokens.shape
        window = int(math.sqrt(self.num_keep))
        if height != width:
            raise VtxError(f'SpatialWindowSelection needs a square token grid (the official code '
                             f'assumes H == W), got {height}x{width}')
        if not 0 < window <= height:
            raise VtxError(f'SpatialWindowSelection: a {window}x{window} window (num_keep='
                             f'{self.num_keep}) does not fit a {height}x{width} grid')
        stride = self.stride or max((height - window) // 2, 1)
        windows = jnp.asarray(window_token_indices(height, window, stride))  # [L, a*a]
        flat = tokens.reshape(batch * frames, height * width, channels)
        token_scores = ScorePredictor(dtype=self.dtype, name='score_network')(flat)
        scores = min_max_normalize(token_scores[:, windows].mean(axis=-1))  # [B*T, L]
        indices, indicators = _select(self, scores, 1, sigma, self.num_samples)
        if indicators is None:
            kept = jnp.take_along_axis(flat, windows[indices[:, 0]][:, :, None], axis=1)
        else:
            kept = jnp.einsum('bl,blnc->bnc', indicators[:, 0].astype(flat.dtype), flat[:, windows])
        return kept.reshape(batch, frames, window, window, channels)

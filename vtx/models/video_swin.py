"""Video Swin Transformer (Liu et al., CVPR 2022) and the Swin backbone TPS shares.

Tokens stay channels-last [B, D, H, W, C] through the backbone. Every block windows its input
with a per-stage effective window (an axis no longer than the configured window is covered by a
single window and gets no shift), zero-pads *after* norm1 to whole windows (padded tokens are
attended as keys, never masked), cyclically shifts odd blocks, adds the relative position bias and
the 0/-100 shift mask, and crops the padding again. PatchEmbed and PatchMerging padding is kept
(and averaged by the head). Module names follow the official checkpoint
(`layers.{i}.blocks.{j}.attn.qkv` -> `layers_{i}/blocks_{j}/attn/qkv`).
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.kernels import backend
from vtx.kernels.attention import SegmentMask, dot_product_attention
from vtx.models import layers
from vtx.models.token_selection import TemporalSelection, top_k_sigma

MASK_VALUE = -100.0  # the official additive mask value (not -inf)
# On CPU a shifted block's regions attend apart (`shifted_windows_apart`): along D always, along H
# and W too on windows of at least this many tokens. Measured on 2 cores of an AMD EPYC (Zen 5),
# both forms compiled in one process and alternated (docs/performance.md, "Video Swin's shifted
# windows' regions apart"): apart along all three axes rather than D alone, Video Swin-T's eval
# (392-token windows) ran 3% faster and its train step 3-6% (medians of three runs) while the
# step's compilation took 31-36 s instead of 13-15; TPS-T's eval (49-token windows) ran level
# while its compilation doubled.
SPATIAL_APART_MIN_TOKENS = 256


# --------------------------------------------------------------------------- window geometry

def effective_window(grid: Sequence[int], window: Sequence[int]):
    """Per-stage (window, shift): an axis with extent <= its window is one window, unshifted."""
    win = tuple(g if g <= w else w for g, w in zip(grid, window))
    shift = tuple(0 if g <= w else w // 2 for g, w in zip(grid, window))
    return win, shift


def pad_to_multiple(x, sizes: Sequence[int], first_axis: int = 1):
    """Zero-pads axes first_axis.. at their end up to multiples of `sizes`."""
    pad = [(0, 0)] * x.ndim
    for i, s in enumerate(sizes):
        pad[first_axis + i] = (0, -x.shape[first_axis + i] % s)
    return jnp.pad(x, pad) if any(p for _, p in pad) else x


def window_partition(x, win: Sequence[int]):
    """[B, D, H, W, C] (multiples of win) -> [B, nD, nH*nW, wd*wh*ww, C], tokens (d, h, w)
    row-major inside a window."""
    b, d, h, w, c = x.shape
    wd, wh, ww = win
    x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, d // wd, (h // wh) * (w // ww), wd * wh * ww, c)


def window_reverse(windows, win: Sequence[int], grid: Sequence[int]):
    """Inverse of `window_partition` for the padded grid (D, H, W)."""
    b, c = windows.shape[0], windows.shape[-1]
    (d, h, w), (wd, wh, ww) = grid, win
    x = windows.reshape(b, d // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


def region_labels(padded_grid: Sequence[int], win: Sequence[int], shift: Sequence[int]):
    """[nD, nS, N] numpy: the region of every token of the shifted windows on the padded, rolled
    grid. Each axis has regions [0, P-win), [P-win, P-shift), [P-shift, P); an unshifted axis is
    a single region. Tokens from different regions must not attend to each other."""
    labels = np.zeros(tuple(padded_grid), np.int32)
    for axis, (p, w, s) in enumerate(zip(padded_grid, win, shift)):
        region = np.zeros(p, np.int32)
        if s > 0:
            region[p - w:p - s], region[p - s:] = 1, 2
        shape = [1, 1, 1]
        shape[axis] = p
        labels = labels * 3 + region.reshape(shape)
    return np.asarray(window_partition(labels[None, ..., None], win))[0, ..., 0]


def shift_mask(padded_grid: Sequence[int], win: Sequence[int], shift: Sequence[int]):
    """The 0/-100 mask of shifted windows (`region_labels`) as a SegmentMask with ids [nD, nS, N]
    (it adds the [nD, nS, 1, N, N] mask of the official code)."""
    ids = jnp.asarray(region_labels(padded_grid, win, shift))
    return SegmentMask(ids, ids, jnp.float32(MASK_VALUE))


def position_bias(table, index):
    """The relative position bias [L, 1, heads, N, N] of `table` [rows, heads] at its rows `index`
    [L, N, N] (L = 1 or one per temporal window; the 1 broadcasts over the windows of a frame),
    gathered heads-first in place (no transposed copy of the [N, N, heads] gather)."""
    return jnp.moveaxis(table.T[:, index], 0, 1)[:, None]


def relative_position_index(window: Sequence[int], coords_window: Optional[Sequence[int]] = None):
    """[N, N] rows of the (2Wd-1)(2Wh-1)(2Ww-1) table of `window` for the token pairs of a
    `coords_window` (default: the full window)."""
    coords_window = window if coords_window is None else coords_window
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in coords_window], indexing='ij'))
    coords = coords.reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :] + np.array(window)[:, None, None] - 1
    _, wh, ww = window
    return rel[0] * (2 * wh - 1) * (2 * ww - 1) + rel[1] * (2 * ww - 1) + rel[2]


def _split(a, sizes: Sequence[int], axis: int):
    """a split along `axis` into pieces of `sizes`: numpy for numpy arrays, else `lax.split`, whose
    gradient concatenates the pieces' (slices' gradients were padded to the whole and summed)."""
    if isinstance(a, np.ndarray):
        return np.split(a, np.cumsum(sizes)[:-1], axis)
    return jax.lax.split(a, sizes, axis)


def shifted_windows_apart(attend, qkv, table, index, counts: Sequence[int], win: Sequence[int],
                          shift: Sequence[int], apart_axes: Sequence[bool] = (True,) * 3):
    """`attend(qkv, bias=position_bias(table, index), mask=shift_mask(...))` for windows shifted
    by `shift`, with the regions of `shift_mask` attending apart along `apart_axes`: as windows of
    their own instead of through the mask. qkv [B, nD, nS, N, 3, heads, head_dim] for `counts`
    (nD, nH, nW) windows of `win`; index [L, N, N] the bias's table rows, shared by the windows
    or (L = nD) one per temporal window.

    Along a shifted axis every window but the last lies in one region and the last holds two, its
    first win - shift positions and the rest. So the windows split along each such axis into the
    first ones (whole), the last ones' first part and their second part, and each combination
    attends as a batch of windows of that box's shape, with the bias gathered from the table at
    the box's positions: without a mask where every shifted axis is apart, with the mask's ids at
    its positions where one is not.

    The mask adds -100 to every score across regions, which leaves those weights about e^-100 of
    the row's own (below float32's resolution while the scores lie within ~80 of each other), so
    leaving them out changes the output by rounding only. What it saves is the work: Video
    Swin-T's shifted blocks apart along all three axes do 0.66, 0.58 and 0.43 of the masked
    windows' attention products at stages 1-3 and 0.75 at stage 4 (apart along D alone, 0.75).
    Where it runs: `backend.cpu_forms()` (accelerators keep the masked windows); the MACs
    `vtx.report` counts for MFU are the masked windows', the official model's work."""
    b, tail = qkv.shape[0], qkv.shape[4:]
    x = qkv.reshape(b, *counts, *win, *tail)          # window index axes 1-3, positions 4-6
    labels = region_labels(tuple(c * w for c, w in zip(counts, win)), win, shift)
    labels = labels.reshape(*counts, *win)            # window index axes 0-2, positions 3-5
    positions = np.arange(math.prod(win)).reshape(win)
    masked = any(s and not a for s, a in zip(shift, apart_axes))

    def windows_apart(a, at, count):
        """(the first count - 1 windows or None, the last one) along axis `at`; an axis of
        extent 1 (an index shared by the windows) serves both."""
        if a.shape[at] == 1:
            return (a if count > 1 else None), a
        if count == 1:
            return None, a
        return tuple(_split(a, (count - 1, 1), at))

    def pieces(parts, axis):
        """[first windows or None, last windows' first part, their second part] of the parts."""
        x, labels, index, positions = parts
        count, sizes = counts[axis], (win[axis] - shift[axis], shift[axis])
        (x_inner, x_last), (l_inner, l_last), (i_inner, i_last) = (
            windows_apart(x, axis + 1, count), windows_apart(labels, axis, count),
            windows_apart(index, 0, count) if axis == 0 else (index, index))
        inner = None if x_inner is None else (x_inner, l_inner, i_inner, positions)
        return [inner] + [tuple(p) for p in zip(
            _split(x_last, sizes, axis + 4), _split(l_last, sizes, axis + 3), (i_last, i_last),
            _split(positions, sizes, axis))]

    def attend_apart(parts, axis):
        if axis == 3:
            x, labels, index, positions = parts
            n_d, n_h, n_w = x.shape[1:4]
            tokens = positions.reshape(-1)
            n = tokens.size
            ids = jnp.asarray(labels.reshape(n_d, n_h * n_w, n))
            o = attend(x.reshape(b, n_d, n_h * n_w, n, *tail),
                       bias=position_bias(table, index[:, tokens[:, None], tokens[None, :]]),
                       mask=SegmentMask(ids, ids, jnp.float32(MASK_VALUE)) if masked else None)
            return o.reshape(b, n_d, n_h, n_w, *positions.shape, *o.shape[4:])
        if not (shift[axis] and apart_axes[axis]):
            return attend_apart(parts, axis + 1)
        inner, *last = pieces(parts, axis)
        last = jnp.concatenate([attend_apart(p, axis + 1) for p in last], axis=axis + 4)
        if inner is None:
            return last
        return jnp.concatenate([attend_apart(inner, axis + 1), last], axis=axis + 1)

    o = attend_apart((x, labels, index, positions), 0)
    return o.reshape(b, counts[0], counts[1] * counts[2], math.prod(win), *o.shape[7:])


# --------------------------------------------------------------------------- modules

class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    Input [B, nD, nS, N, C] (windows grouped by temporal index nD and spatial index nS).
    Subclasses give the bias table's rows (`position_index`) and may mix tokens across windows
    before the projection and after attention. The attention itself is
    `vtx.kernels.attention.packed_attention` of the qkv projection, whose hand-written VJP serves
    the train step. `shift` is the block's window shift (d, h, w) and `counts` the windows along
    each axis; shifted windows add the -100 mask of `shift_mask`, and on CPU their regions attend
    apart instead (`shifted_windows_apart`, along the axes SPATIAL_APART_MIN_TOKENS says; not
    under attention dropout, whose one draw serves one call).
    """
    num_heads: int
    window_size: Sequence[int]
    qkv_bias: bool = True
    attention_dropout_rate: float = 0.0
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def table_rows(self) -> int:
        return math.prod(2 * w - 1 for w in self.window_size)

    def position_index(self, win) -> np.ndarray:
        """[L, N, N] rows of the bias table for the token pairs of a window of `win` (L = 1, or
        one per temporal window)."""
        raise NotImplementedError

    def mix_input(self, x):
        return x

    def mix_output(self, o):
        return o

    @nn.compact
    def __call__(self, x, win, shift, counts, deterministic: bool = True):
        *lead, n, dim = x.shape
        head_dim = dim // self.num_heads
        dense = functools.partial(layers.dense, dtype=self.dtype,
                                  kernel_init=layers.truncated_normal(0.02))
        table = self.param('relative_position_bias_table', nn.with_logical_partitioning(
            layers.truncated_normal(0.02), (None, 'heads')), (self.table_rows(), self.num_heads))
        x = self.mix_input(x)
        qkv = dense(3 * dim, ('embed', 'heads'), use_bias=self.qkv_bias, name='qkv')(x)
        qkv = qkv.reshape(*lead, n, 3, self.num_heads, head_dim)
        index = self.position_index(win)
        dropping = self.attention_dropout_rate > 0 and not deterministic
        attend = functools.partial(
            dot_product_attention, dropout_rng=self.make_rng('dropout') if dropping else None,
            dropout_rate=self.attention_dropout_rate, deterministic=deterministic)
        if any(shift) and backend.cpu_forms() and not dropping:
            spatial = n >= SPATIAL_APART_MIN_TOKENS
            o = shifted_windows_apart(attend, qkv, table, index, counts, win, shift,
                                      (True, spatial, spatial))
        else:
            mask = (shift_mask([c * w for c, w in zip(counts, win)], win, shift)
                    if any(shift) else None)
            o = attend(qkv, bias=position_bias(table, index), mask=mask)
        o = self.mix_output(o).reshape(*lead, n, dim)
        o = dense(dim, ('heads', 'embed'), name='proj')(o)
        return nn.Dropout(self.dropout_rate)(o, deterministic=deterministic)


class WindowAttention3D(WindowAttention):
    """Video Swin's attention: one [heads, N, N] bias shared by all windows.

    With a window clipped by a small grid the official code takes the top-left N x N block of the
    full window's index, which is right only when D alone is clipped. `clipped_window_bias`
    'official' reproduces that; 'exact' indexes the true offsets of the clipped window.
    """
    clipped_window_bias: str = 'official'

    def position_index(self, win) -> np.ndarray:
        n = math.prod(win)
        if self.clipped_window_bias == 'official':
            index = relative_position_index(self.window_size)[:n, :n]
        elif self.clipped_window_bias == 'exact':
            index = relative_position_index(self.window_size, win)
        else:
            raise VtxError(f"model.clipped_window_bias must be 'official' or 'exact', got "
                             f'{self.clipped_window_bias!r}')
        return index[None]


class SwinBlock(nn.Module):
    """norm1 -> pad -> (roll) -> window attention -> (roll back) -> crop, residual; then the MLP."""
    attention: Any          # partial of a WindowAttention class, missing only `name`
    norm: Any               # partial of `layers.layer_norm`, missing only `name`
    mlp: Any                # partial of `layers.Mlp`, missing `hidden_dim` and `name`
    win: Sequence[int]
    shift: Sequence[int]
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True, drop_path=None):
        b, d, h, w, c = x.shape
        y = self.norm(name='norm1')(x)
        y = pad_to_multiple(y, self.win)  # after norm1: padded tokens are exact zeros
        padded = y.shape[1:4]
        shifted = any(self.shift)
        if shifted:
            y = jnp.roll(y, [-s for s in self.shift], axis=(1, 2, 3))
        y = self.attention(name='attn')(window_partition(y, self.win), self.win, self.shift,
                                        tuple(p // w for p, w in zip(padded, self.win)),
                                        deterministic)
        y = window_reverse(y, self.win, padded)
        if shifted:
            y = jnp.roll(y, list(self.shift), axis=(1, 2, 3))
        x = x + layers.drop_path(y[:, :d, :h, :w], drop_path, 0)
        y = self.norm(name='norm2')(x).reshape(b, -1, c)
        y = self.mlp(hidden_dim=int(c * self.mlp_ratio), name='mlp')(y, deterministic)
        return x + layers.drop_path(y.reshape(x.shape), drop_path, 1)


class PatchMerging(nn.Module):
    """2x2 spatial merge (D untouched): odd H/W zero-padded at the end, LayerNorm(4C), Linear 2C."""
    norm: Any               # partial of `layers.layer_norm`, missing only `name`
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = pad_to_multiple(x, (1, 2, 2))
        x = jnp.concatenate([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2],
                             x[:, :, 1::2, 1::2]], axis=-1)
        x = self.norm(name='norm')(x)
        return layers.dense(x.shape[-1] // 2, (None, 'embed'), use_bias=False, dtype=self.dtype,
                            kernel_init=layers.truncated_normal(0.02), name='reduction')(x)


class SwinStage(nn.Module):
    """One stage: blocks (even unshifted, odd shifted) then, except for the last, PatchMerging."""
    block: Any                    # partial of SwinBlock, missing attention, window and name
    attentions: Sequence[Any]     # one WindowAttention partial per block
    window_size: Sequence[int]
    drop_path_rates: Sequence[float]
    downsample: Optional[Any] = None  # PatchMerging partial missing only `name`; None: last stage

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        win, shift = effective_window(x.shape[1:4], self.window_size)
        # The block partial carries the remat wrapper already; the blocks differ, so none scans.
        blocks = [dict(attention=attention, win=win, shift=shift if j % 2 else (0, 0, 0))
                  for j, attention in enumerate(self.attentions)]
        x = layers.apply_layers(self, self.block, blocks, x, deterministic, name='blocks',
                                drop_path_rates=self.drop_path_rates)
        if self.downsample is not None:
            x = self.downsample(name='downsample')(x)
        return x


class SwinBackbone(nn.Module):
    """Patch embedding, Swin stages, final norm and the I3D head (avg pool, dropout, linear).

    Input [B, T, H, W, 3]; output logits [B, num_classes] (and, with `return_features`, the
    normalised feature map [B, D, H', W', C] the head pools). Subclasses define `window_size` and
    pick the attention of every block.
    """
    num_classes: int
    patch_size: Sequence[int] = (2, 4, 4)
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True
    dropout_rate: float = 0.0            # pos_drop / attention proj / MLP dropout
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.2
    head_dropout_rate: float = 0.5
    layer_norm_eps: float = 1e-5
    remat: bool = False                  # recompute every block in the backward (use_checkpoint)
    dtype: Any = jnp.float32

    def attention_for_block(self, stage: int, block: int):
        raise NotImplementedError

    def attention_partial(self, attention: type, stage: int, **fields):
        """`attention` (a WindowAttention class) with the fields of `stage`, missing only `name`."""
        return functools.partial(
            attention, num_heads=self.num_heads[stage], window_size=tuple(self.window_size),
            qkv_bias=self.qkv_bias, attention_dropout_rate=self.attention_dropout_rate,
            dropout_rate=self.dropout_rate, dtype=self.dtype, **fields)

    def norm_layer(self):
        """Every LayerNorm of the backbone, missing only `name`."""
        return functools.partial(layers.layer_norm, self.layer_norm_eps, dtype=self.dtype)

    def check_input(self, video):
        if video.ndim != 5 or video.shape[-1] != 3:
            raise VtxError(f'{type(self).__name__} expects video [B, T, H, W, 3], got shape '
                             f'{tuple(video.shape)}')

    def select_frames(self, x, train: bool, train_progress):
        return x  # token selection hook (see VideoSwin)

    def embed(self, video, deterministic: bool):
        x = pad_to_multiple(video.astype(self.dtype), self.patch_size)
        x = layers.PatchEmbed(embed_dim=self.embed_dim, patch_size=self.patch_size,
                              dtype=self.dtype, name='patch_embed')(x)
        if self.patch_norm:
            x = self.norm_layer()(name='patch_norm')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

    @nn.compact
    def __call__(self, video, train: bool = False, return_features: bool = False,
                 train_progress=None):
        self.check_input(video)
        x = self.embed(video, not train)  # [B, D, H', W', C]
        x = self.select_frames(x, train, train_progress)
        norm = self.norm_layer()
        block = functools.partial(
            nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock, norm=norm,
            mlp=functools.partial(layers.Mlp, dropout_rate=self.dropout_rate, dtype=self.dtype),
            mlp_ratio=self.mlp_ratio)
        merging = functools.partial(PatchMerging, norm=norm, dtype=self.dtype)
        rates = np.linspace(0, self.drop_path_rate, sum(self.depths)).tolist()
        for i, depth in enumerate(self.depths):
            start = sum(self.depths[:i])
            x = SwinStage(block=block,
                          attentions=tuple(self.attention_for_block(i, j) for j in range(depth)),
                          window_size=tuple(self.window_size),
                          drop_path_rates=tuple(rates[start:start + depth]),
                          downsample=merging if i < len(self.depths) - 1 else None,
                          name=f'layers_{i}')(x, not train)
        features = norm(name='norm')(x)
        pooled = features.mean(axis=(1, 2, 3))  # includes tokens from patch/merge padding
        pooled = nn.Dropout(self.head_dropout_rate)(pooled, deterministic=not train)
        logits = layers.dense(self.num_classes, ('embed', 'classes'), dtype=self.dtype,
                              kernel_init=nn.initializers.normal(0.01), name='head')(pooled)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits


class VideoSwin(SwinBackbone):
    """Video Swin: 3D shifted windows of `window_size` = (Wd, Wh, Ww) tokens."""
    window_size: Sequence[int] = (8, 7, 7)
    clipped_window_bias: str = 'official'  # or 'exact' (see WindowAttention3D)
    # STTS (model name 'stts_video_swin'): before stage 0 keep int(num_frames // 2 *
    # time_left_ratio) patch frames (count fixed from the nominal clip length, as the official
    # constructor does); None = no selection. Training needs `train_progress` (top-k sigma).
    time_left_ratio: Optional[float] = None
    num_frames: int = 32
    selection_sigma: float = 0.05
    selection_sigma_decay: bool = True
    selection_num_samples: int = 500

    def select_frames(self, x, train: bool, train_progress):
        if self.time_left_ratio is None:
            return x
        if x.shape[2] != x.shape[3]:
            raise VtxError(f'STTS on Video Swin needs a square token grid (the official code '
                             f'assumes H == W), got {x.shape[2]}x{x.shape[3]}')
        sigma = top_k_sigma(train, train_progress, self.selection_sigma, self.selection_sigma_decay)
        return TemporalSelection(num_keep=int(self.num_frames // 2 * self.time_left_ratio),
                                 num_samples=self.selection_num_samples, dtype=self.dtype,
                                 name='time_selection')(x, sigma)

    def attention_for_block(self, stage: int, block: int):
        return self.attention_partial(WindowAttention3D, stage,
                                      clipped_window_bias=self.clipped_window_bias)

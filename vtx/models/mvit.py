"""MViT v1 (Fan et al., ICCV 2021), plain and with STTS token selection (Wang et al., ECCV 2022).

Conv patch stem -> [CLS] + separable (spatial + temporal + class) position embedding -> a stack of
multiscale blocks whose pooling attention pools queries (resolution changes), keys and values
(cheaper attention) with depthwise convs -> LN -> [CLS] -> linear head (logits; the official
eval head applies softmax on top).

With `time_pruning_loc` / `space_pruning_loc` set, STTS selectors run before those blocks:
temporal selection keeps whole frames, spatial selection keeps one window per frame; the [CLS]
token is never scored or pruned. Training a selector needs `train_progress` (fraction of training
done, a scalar that may be traced) in `__call__`: the top-k noise scale is
sigma = selection_sigma * (1 - train_progress) (constant `selection_sigma` when
`selection_sigma_decay` is False), as the official schedule updated every step.

Module names follow the SlowFast checkpoint (`blocks_{i}/attn/pool_q`, `norm_q`, ...).
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.kernels.attention import dot_product_attention
from vtx.kernels import patches, pooling
from vtx.models import layers
from vtx.models.token_selection import (SpatialWindowSelection, TemporalSelection,
                                        top_k_sigma)

# The pooled q/k/v LayerNorms use torch's default eps; every other MViT norm uses 1e-6.
POOL_NORM_EPS = 1e-5


def round_width(width, multiplier, divisor: int = 1) -> int:
    """SlowFast's channel rounding: nearest multiple of `divisor`, never below 90% of the target."""
    width *= multiplier
    out = max(1, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def pooled_grid(thw, kernel, stride):
    """Output (T, H, W) of a conv/max-pool with padding kernel // 2 (floor division, no ceil)."""
    if not stride:
        return tuple(thw)
    return tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(thw, kernel, stride))


def block_schedule(depth, embed_dim, num_heads, dim_mul, head_mul, pool_q_stride, pool_kvq_kernel,
                   pool_kv_stride_adaptive):
    """Per-block dims, heads and pooling as the official constructor derives them from the config.

    Widening happens in the last block of a stage (its dim_out), the heads in the next block; each
    block's input width is re-derived from the previous block's *input* width and its own
    multiplier. The adaptive kv stride starts at `pool_kv_stride_adaptive` and is divided by every
    q stride.
    """
    dim_factor, head_factor = np.ones(depth + 1), np.ones(depth + 1)
    for i, m in dim_mul:
        dim_factor[i] = m
    for i, m in head_mul:
        head_factor[i] = m
    q_strides = {int(s[0]): tuple(s[1:]) for s in pool_q_stride}
    kv_stride = tuple(pool_kv_stride_adaptive)
    schedule, dim, heads = [], embed_dim, num_heads
    for i in range(depth):
        heads = round_width(heads, head_factor[i])
        dim = round_width(dim, dim_factor[i], divisor=heads)
        next_heads = round_width(heads, head_factor[i + 1])
        dim_out = round_width(dim, dim_factor[i + 1], divisor=next_heads)
        stride_q = q_strides.get(i, ())
        if stride_q:
            kv_stride = tuple(max(kv // q, 1) for kv, q in zip(kv_stride, stride_q))
        schedule.append(dict(dim=dim, dim_out=dim_out, num_heads=heads,
                             kernel_q=tuple(pool_kvq_kernel) if stride_q else (), stride_q=stride_q,
                             kernel_kv=tuple(pool_kvq_kernel), stride_kv=kv_stride))
    return schedule


def _pools(kernel, stride) -> bool:
    # The official attention drops a pool whose kernel and stride are both all-ones (or empty).
    return bool(kernel) and not (math.prod(kernel) == 1 and math.prod(stride) == 1)


class MultiScaleAttention(nn.Module):
    """Pooling attention on [B, 1 + T*H*W, dim] tokens of grid `thw`; returns [B, 1 + Lq, dim]."""
    dim: int
    num_heads: int
    thw: tuple
    kernel_q: tuple = ()
    stride_q: tuple = ()
    kernel_kv: tuple = ()
    stride_kv: tuple = ()
    qkv_bias: bool = True
    dtype: Any = jnp.float32
    pool_implementation: str = 'conv'

    def pool(self, which, t, kernel, stride):
        """Depthwise conv over the grid, shared by all heads (cls token unpooled), then LN(hd)."""
        if not _pools(kernel, stride):
            return t
        batch, _, heads, head_dim = t.shape
        grid = t[:, 1:].transpose(0, 2, 1, 3).reshape(batch * heads, *self.thw, head_dim)
        grid = nn.Conv(
            head_dim, tuple(kernel), strides=tuple(stride),
            padding=[(k // 2, k // 2) for k in kernel], feature_group_count=head_dim,
            use_bias=False, dtype=self.dtype, name=f'pool_{which}',
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None,) * 5),
            conv_general_dilated=(pooling.shifted_sum_conv
                                  if self.pool_implementation == 'shifted_sum' else None))(grid)
        grid = grid.reshape(batch, heads, -1, head_dim).transpose(0, 2, 1, 3)
        t = jnp.concatenate([t[:, :1], grid], axis=1)
        # Unflattened: with the rows flattened, XLA fused the pooling's slices into more kernels
        # (MViT-B's train step: 6% more HLO, compiled 2-3 s longer) and the step was no faster.
        return layers.layer_norm(POOL_NORM_EPS, dtype=self.dtype, name=f'norm_{which}',
                                 flatten_rows=False)(t)

    @nn.compact
    def __call__(self, x):
        batch, length, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = layers.dense(3 * self.dim, ('embed', 'heads'), use_bias=self.qkv_bias,
                           dtype=self.dtype, name='qkv')(x)
        qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
        q = self.pool('q', qkv[:, :, 0], self.kernel_q, self.stride_q)
        k = self.pool('k', qkv[:, :, 1], self.kernel_kv, self.stride_kv)
        v = self.pool('v', qkv[:, :, 2], self.kernel_kv, self.stride_kv)
        out = dot_product_attention(q, k, v).reshape(batch, q.shape[1], self.dim)
        return layers.dense(self.dim, ('heads', 'embed'), dtype=self.dtype, name='proj')(out)


class MultiScaleBlock(nn.Module):
    """Pooling attention added to a max-pooled skip (when q is pooled), then the MLP.

    When dim != dim_out the residual of the MLP is `proj(norm2(x))` (the official v1 block).
    """
    attention: Any    # partial of MultiScaleAttention, missing the block's geometry and `name`
    norm: Any         # partial of `layers.layer_norm`, missing only `name`
    max_pool: Any     # `nn.max_pool` or `pooling.max_pool`, for the skip
    dim: int
    dim_out: int
    num_heads: int
    thw: tuple
    kernel_q: tuple = ()
    stride_q: tuple = ()
    kernel_kv: tuple = ()
    stride_kv: tuple = ()
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True, drop_path=None):
        y = self.norm(name='norm1')(x)
        y = self.attention(dim=self.dim, num_heads=self.num_heads, thw=self.thw,
                           kernel_q=self.kernel_q, stride_q=self.stride_q,
                           kernel_kv=self.kernel_kv, stride_kv=self.stride_kv, name='attn')(y)
        skip_kernel = tuple(s + 1 if s > 1 else s for s in self.stride_q)
        if skip_kernel and math.prod(skip_kernel) > 1:
            grid = x[:, 1:].reshape(x.shape[0], *self.thw, self.dim)
            grid = self.max_pool(grid, skip_kernel, strides=self.stride_q,
                                 padding=[(k // 2, k // 2) for k in skip_kernel])
            x = jnp.concatenate([x[:, :1], grid.reshape(x.shape[0], -1, self.dim)], axis=1)
        x = x + layers.drop_path(y, drop_path, 0)
        x_norm = self.norm(name='norm2')(x)
        y = layers.dense(int(self.dim * self.mlp_ratio), ('embed', 'mlp'), dtype=self.dtype,
                         name='fc1')(x_norm)
        y = nn.with_logical_constraint(layers.gelu(y), ('batch', 'length', 'mlp'))
        y = layers.dense(self.dim_out, ('mlp', 'embed'), dtype=self.dtype, name='fc2')(y)
        if self.dim != self.dim_out:
            x = layers.dense(self.dim_out, (None, 'embed'), dtype=self.dtype, name='proj')(x_norm)
        x = x + layers.drop_path(y, drop_path, 1)
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class MViT(nn.Module):
    """Input [B, num_frames, image_size, image_size, 3], output logits [B, num_classes]."""
    num_classes: int
    num_frames: int = 16
    image_size: int = 224
    embed_dim: int = 96
    num_heads: int = 1
    depth: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_kernel: Sequence[int] = (3, 7, 7)
    patch_stride: Sequence[int] = (2, 4, 4)
    patch_padding: Sequence[int] = (1, 3, 3)
    # (block, multiplier) pairs; (block, sT, sH, sW) q strides; kernel of every q/k/v pooling conv.
    dim_mul: Sequence = ((1, 2.0), (3, 2.0), (14, 2.0))
    head_mul: Sequence = ((1, 2.0), (3, 2.0), (14, 2.0))
    pool_q_stride: Sequence = ((1, 1, 2, 2), (3, 1, 2, 2), (14, 1, 2, 2))
    pool_kvq_kernel: Sequence[int] = (3, 3, 3)
    pool_kv_stride_adaptive: Sequence[int] = (1, 8, 8)
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0   # before the head
    layer_norm_eps: float = 1e-6
    # STTS: selection before block `*_pruning_loc` keeping int(nominal count * `*_left_ratio`).
    time_pruning_loc: Optional[int] = None
    time_left_ratio: float = 1.0
    space_pruning_loc: Optional[int] = None
    space_left_ratio: float = 1.0
    selection_sigma: float = 0.1
    selection_sigma_decay: bool = True
    selection_num_samples: int = 500
    keep_counts: str = 'official'  # or 'exact' (see selection_counts)
    remat: bool = False
    dtype: Any = jnp.float32
    # 'conv': grouped convolution and XLA's max pooling; 'shifted_sum': the convolution as
    # strided slices x weights and the skip's max pooling with its gradient by strided slices,
    # far faster on XLA:CPU (`vtx.kernels.pooling`), same parameters.
    pool_implementation: str = 'shifted_sum'
    # Runs of equal blocks (MViT-B: blocks 4-12) as one scan: one block body to compile.
    scan_layers: bool = False

    def schedule(self):
        return block_schedule(self.depth, self.embed_dim, self.num_heads, self.dim_mul,
                              self.head_mul, self.pool_q_stride, self.pool_kvq_kernel,
                              self.pool_kv_stride_adaptive)

    def patch_grid(self):
        return (self.num_frames // self.patch_stride[0],) + (
            self.image_size // self.patch_stride[1],) * 2

    def selection_counts(self, schedule):
        """(frames kept, tokens kept per frame), fixed at construction from the nominal sizes.

        keep_counts='official' reproduces two quirks of the official constructor: the frame count
        is num_frames // 2 whatever the temporal patch stride, and the spatial count uses the grid
        *after* block `space_pruning_loc`'s own q stride (wrong when that block pools q; no zoo
        config does). 'exact' uses the patch frames and the grid entering that block.
        """
        if self.keep_counts not in ('official', 'exact'):
            raise VtxError(f"MViT.keep_counts={self.keep_counts!r}: use 'official' or 'exact'")
        official = self.keep_counts == 'official'
        time_keep = space_keep = None
        if self.time_pruning_loc is not None:
            frames = self.num_frames // 2 if official else self.patch_grid()[0]
            time_keep = int(frames * self.time_left_ratio)
        if self.space_pruning_loc is not None:
            grid = self.patch_grid()
            for block in schedule[:self.space_pruning_loc + (1 if official else 0)]:
                grid = (tuple(n // s for n, s in zip(grid, block['stride_q'] or (1, 1, 1)))
                        if official else pooled_grid(grid, block['kernel_q'], block['stride_q']))
            space_keep = int(grid[1] * grid[2] * self.space_left_ratio)
        return time_keep, space_keep

    @nn.compact
    def __call__(self, video, train: bool = False, return_features: bool = False,
                 train_progress=None):
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise VtxError(f'MViT built for video [B, {", ".join(map(str, expected))}] '
                             f'(num_frames, image_size), got {tuple(video.shape)}')
        if self.pool_implementation not in ('conv', 'shifted_sum'):
            raise VtxError(f"config.model.pool_implementation={self.pool_implementation!r}: use "
                           "'conv' or 'shifted_sum'")
        schedule = self.schedule()
        time_keep, space_keep = self.selection_counts(schedule)
        selecting = self.time_pruning_loc is not None or self.space_pruning_loc is not None
        sigma = top_k_sigma(train and selecting, train_progress, self.selection_sigma,
                            self.selection_sigma_decay)
        x = nn.Conv(self.embed_dim, tuple(self.patch_kernel), strides=tuple(self.patch_stride),
                    padding=[(p, p) for p in self.patch_padding], dtype=self.dtype,
                    name='patch_embed', conv_general_dilated=patches.conv_general_dilated,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), (None, None, None, 'channels', 'embed')),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(
                        video.astype(self.dtype))
        batch, *thw, dim = x.shape
        x = x.reshape(batch, -1, dim)

        def embedding(name, shape):
            return self.param(name, nn.with_logical_partitioning(
                layers.truncated_normal(0.02), (None, 'length', 'embed')), shape)

        cls = embedding('cls_token', (1, 1, dim))
        pos_spatial = embedding('pos_embed_spatial', (1, thw[1] * thw[2], dim))
        pos_temporal = embedding('pos_embed_temporal', (1, thw[0], dim))
        pos_class = embedding('pos_embed_class', (1, 1, dim))
        pos = (jnp.tile(pos_spatial, (1, thw[0], 1))
               + jnp.repeat(pos_temporal, thw[1] * thw[2], axis=1))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, dim)).astype(x.dtype), x], axis=1)
        x = x + jnp.concatenate([pos_class, pos], axis=1).astype(x.dtype)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

        # One partial of each kind for all blocks: `apply_layers` scans runs of equal arguments.
        common = dict(
            attention=functools.partial(MultiScaleAttention, qkv_bias=self.qkv_bias,
                                        dtype=self.dtype,
                                        pool_implementation=self.pool_implementation),
            norm=functools.partial(layers.layer_norm, self.layer_norm_eps, dtype=self.dtype),
            max_pool=(pooling.max_pool if self.pool_implementation == 'shifted_sum'
                      else nn.max_pool),
            mlp_ratio=self.mlp_ratio, dtype=self.dtype)
        thw = tuple(thw)
        rates = np.linspace(0, self.drop_path_rate, self.depth).tolist()
        # The stack runs in parts that the selectors separate.
        cuts = sorted({0, self.depth} | {loc for loc in (self.time_pruning_loc,
                                                         self.space_pruning_loc)
                                         if loc is not None and 0 <= loc < self.depth})
        for start, stop in zip(cuts, cuts[1:]):
            if start == self.time_pruning_loc:
                frames = x[:, 1:].reshape(batch, thw[0], thw[1] * thw[2], -1)
                frames = TemporalSelection(num_keep=time_keep,
                                           num_samples=self.selection_num_samples,
                                           dtype=self.dtype, name='time_selection')(frames, sigma)
                thw = (time_keep,) + thw[1:]
                x = jnp.concatenate([x[:, :1], frames.reshape(batch, -1, frames.shape[-1])], 1)
            if start == self.space_pruning_loc:
                tokens = x[:, 1:].reshape(batch, *thw, -1)
                tokens = SpatialWindowSelection(num_keep=space_keep,
                                                num_samples=self.selection_num_samples,
                                                dtype=self.dtype, name='space_selection')(
                                                    tokens, sigma)
                thw = tokens.shape[1:4]
                x = jnp.concatenate([x[:, :1], tokens.reshape(batch, -1, tokens.shape[-1])], 1)
            block_args = []
            for i in range(start, stop):
                spec = schedule[i]
                block_args.append(dict(common, **spec, thw=thw))
                thw = pooled_grid(thw, spec['kernel_q'], spec['stride_q'])
            x = layers.apply_layers(self, MultiScaleBlock, block_args, x, not train,
                                    name='blocks', drop_path_rates=rates[start:stop],
                                    first=start, remat=self.remat, scan=self.scan_layers)
        norm = common['norm']
        x = norm(name='norm')(x)
        features = x[:, 0]
        y = nn.Dropout(self.dropout_rate)(features, deterministic=not train)
        logits = layers.dense(self.num_classes, ('embed', 'classes'), dtype=self.dtype,
                              kernel_init=nn.initializers.normal(0.01), name='head')(y)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits

"""MViT's poolings as strided slices (`MViT.pool_implementation='shifted_sum'`): the pooling
convolution as a shifted sum, and the skip connection's max pooling's gradient.

XLA:CPU runs a grouped (depthwise) 3D convolution as a slow generic loop. The same convolution as
a sum over the kernel offsets of strided slices times per-channel weights gives the same result
up to float rounding and runs two orders of magnitude faster there. It lowers max pooling's
gradient (select_and_scatter) to a window reduction that tracks the argmax's index along every
axis, then a scatter of the gradient to those indices: in STTS-MViT's train step 0.1 s of
kernels. Comparing each strided slice of the window with the maximum routes it instead.

Both backwards are written by hand and share `_transpose_windows`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.kernels import patches


def shifted_sum_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None):
    """A depthwise convolution with `jax.lax.conv_general_dilated`'s signature, so that it can be
    handed to `nn.Conv(conv_general_dilated=...)`, which keeps the conv's parameter and initialiser.

    Supported: channels-last lhs [N, *spatial, C], rhs [*kernel, 1, C], feature_group_count = C,
    explicit (low, high) padding per spatial axis, no dilation. `precision` has nothing to act
    on: every product is elementwise.
    """
    channels = lhs.shape[-1]
    if (rhs.shape[-2:] != (1, channels) or feature_group_count != channels
            or isinstance(padding, str)
            or not patches.channels_last_undilated(lhs.ndim, dimension_numbers, lhs_dilation,
                                                   rhs_dilation)):
        raise VtxError('shifted_sum_conv computes undilated, explicitly padded, channels-last '
                       f'depthwise convolutions only; got lhs {lhs.shape}, rhs {rhs.shape}, '
                       f'groups {feature_group_count}, padding {padding}')
    return _depthwise(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def _strided_windows(padded, kernel, strides, out):
    """(kernel offset, the strided slice of `padded` that the offset's weight multiplies)."""
    for offset in np.ndindex(*kernel):
        limit = (o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides))
        yield offset, jax.lax.slice(padded, (0, *offset, 0), (padded.shape[0], *limit,
                                                               padded.shape[-1]), (1, *strides, 1))


def _forward(lhs, rhs, strides, padding):
    kernel = rhs.shape[:-2]
    padded = jnp.pad(lhs, [(0, 0), *padding, (0, 0)])
    out = [(n - k) // s + 1 for n, k, s in zip(padded.shape[1:-1], kernel, strides)]
    total = None
    for offset, window in _strided_windows(padded, kernel, strides, out):
        term = window * rhs[offset][0]
        total = term if total is None else total + term
    return total, padded


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(lhs, rhs, strides, padding):
    return _forward(lhs, rhs, strides, padding)[0]


def _depthwise_fwd(lhs, rhs, strides, padding):
    total, padded = _forward(lhs, rhs, strides, padding)
    return total, (padded, rhs)


def _depthwise_bwd(strides, padding, residuals, grad):
    padded, rhs = residuals
    d_lhs = _transpose_windows(((offset, grad * rhs[offset][0]) for offset in
                                np.ndindex(*rhs.shape[:-2])),
                               rhs.shape[:-2], strides, padding, padded.shape)
    return d_lhs.astype(padded.dtype), _weight_gradient(padded, grad, rhs, strides)


def max_pool(inputs, window_shape, strides, padding):
    """`flax.linen.max_pool` of channels-last [N, *spatial, C] with explicit (low, high) padding.
    The forward is XLA's own window reduction; the backward compares each strided slice of the
    window with the maximum and sends the gradient to the first maximum in scan order, as XLA's and
    PyTorch's max pooling route it.
    """
    return _max_pool(inputs, tuple(window_shape), tuple(strides),
                     tuple(tuple(p) for p in padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(inputs, kernel, strides, padding):
    return jax.lax.reduce_window(inputs, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *strides, 1),
                                 ((0, 0), *padding, (0, 0)))


def _max_pool_fwd(inputs, kernel, strides, padding):
    pooled = _max_pool(inputs, kernel, strides, padding)
    return pooled, (inputs, pooled)


def _max_pool_bwd(kernel, strides, padding, residuals, grad):
    inputs, pooled = residuals
    padded = jnp.pad(inputs, [(0, 0), *padding, (0, 0)], constant_values=-jnp.inf)
    windows = list(_strided_windows(padded, kernel, strides, pooled.shape[1:-1]))
    # The offset index of each output's first maximum: scanning backwards, the first one stays.
    first = jnp.full(pooled.shape, len(windows), jnp.int32)
    for index in reversed(range(len(windows))):
        first = jnp.where(windows[index][1] == pooled, index, first)
    zero = jnp.zeros((), grad.dtype)
    d_inputs = _transpose_windows(((offset, jnp.where(first == index, grad, zero))
                                   for index, (offset, _) in enumerate(windows)),
                                  kernel, strides, padding, padded.shape)
    return (d_inputs.astype(inputs.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _transpose_windows(contributions, kernel, strides, padding, padded_shape):
    """The input gradient [N, *input, C] from `contributions`, (kernel offset, the gradient that
    reaches that offset's strided window [N, *out, C]) for every offset in order: the transpose
    of `_strided_windows` after the padding.

    Autodiff would transpose each strided slice into a pad to the full input size, so the input
    gradient would cost (kernel volume) x (input size) adds: 27 x 64 times the output for MViT's
    [1, 8, 8]-strided key/value pooling. Split along each axis into stride-sized blocks, the input
    gradient is instead a stride-1 shifted sum of the contributions per phase (position within a
    block), which costs (kernel volume) x (output size).
    """
    # Padded input position i = o * s + k holds block i // s and phase i % s. Offset k reaches
    # phase k % s of block o + k // s, so per phase its contribution lands k // s blocks on.
    shifts = [-(-k // s) for k, s in zip(kernel, strides)]  # distinct k // s per axis
    phases = [min(k, s) for k, s in zip(kernel, strides)]  # phases no offset reaches stay zero
    by_phase = {}
    for offset, term in contributions:
        term = jnp.pad(term, [(0, 0), *((k // s, a - 1 - k // s)
                                        for k, s, a in zip(offset, strides, shifts)), (0, 0)])
        phase = tuple(k % s for k, s in zip(offset, strides))
        by_phase[phase] = term if phase not in by_phase else by_phase[phase] + term
    # [N, blocks, phases] per axis, phases innermost, then phases padded to the stride with zeros
    # and blocks x stride flattened back into positions of the padded input.
    stacked = jnp.pad(_stack_phases(by_phase, phases, ()),
                      [(0, 0), *(w for p, s in zip(phases, strides) for w in ((0, 0), (0, s - p))),
                       (0, 0)])
    blocks = next(iter(by_phase.values())).shape[1:-1]   # each term, padded onto the blocks
    positions = stacked.reshape(stacked.shape[0], *(b * s for b, s in zip(blocks, strides)),
                                stacked.shape[-1])
    # Back to the unpadded input: drop the low padding, cut or zero-fill the high end.
    lhs_shape = [n - lo - hi for n, (lo, hi) in zip(padded_shape[1:-1], padding)]
    return jax.lax.pad(positions, jnp.zeros((), positions.dtype),
                       [(0, 0, 0), *((-lo, n + lo - m, 0) for (lo, _), n, m in
                                     zip(padding, lhs_shape, positions.shape[1:-1])), (0, 0, 0)])


def _weight_gradient(padded, grad, rhs, strides, one_loop=None):
    """d rhs [*kernel, 1, C]: per kernel offset, its window times grad summed over all but C,
    accumulated in float32 whatever the dtype.

    On CPU (`one_loop`, default: decided by the backend when tracing) it is one variadic
    reduction with an output per offset, which XLA:CPU emits as a single loop that reads each
    window in place. As one reduction per offset, each went to a YNNPACK fusion that copied its
    window out first (27 copies and 27 reductions per pooling; 15% of STTS-MViT's train step).
    The loop sums in order, so it keeps a partial sum per position of the last two spatial axes
    (summing over batch and frames only) and adds those at the end. Against float64 (the weight
    gradient of a [4, 10, 58, 58, 96] pooling), its RMS error measured 1.3x the YNNPACK
    reductions'; with partial sums over the last axis only it was 4.8x, and that loop, with fewer
    and longer sums, made MViT-B's train step 2.5% slower (docs/performance.md, "The pooling
    weight gradient's partial sums"). GPU and TPU compilers fuse each window's slice into its own
    reduction, and a 27-output reduction has not been tried there, so they keep one per offset.
    """
    if one_loop is None:
        one_loop = jax.default_backend() == 'cpu'
    f32 = lambda x: x.astype(jnp.float32)
    products = [f32(window) * f32(grad) for _, window in
                _strided_windows(padded, rhs.shape[:-2], strides, grad.shape[1:-1])]
    if one_loop:
        kept = min(2, grad.ndim - 2)   # spatial axes with a partial sum per position
        partial = jax.lax.reduce(products, [np.float32(0)] * len(products),
                                 lambda a, b: tuple(x + y for x, y in zip(a, b)),
                                 tuple(range(grad.ndim - 1 - kept)))
        d_rhs = jnp.sum(jnp.stack(partial), axis=tuple(range(1, 1 + kept)))
    else:
        d_rhs = jnp.stack([jnp.sum(p, axis=tuple(range(grad.ndim - 1))) for p in products])
    return d_rhs.reshape(rhs.shape).astype(rhs.dtype)


def _stack_phases(by_phase, phases, prefix):
    """by_phase's arrays [N, *blocks, C] stacked to [N, b0, p0, b1, p1, ..., C]."""
    axis = len(prefix)
    if axis == len(phases):
        return by_phase[prefix]
    parts = [_stack_phases(by_phase, phases, (*prefix, p)) for p in range(phases[axis])]
    # Each part is [N, b0, ..., b_axis, b_axis+1, p_axis+1, ..., C]: this phase goes after b_axis.
    return jnp.stack(parts, axis=axis + 2)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)

"""MViT's pooling convolution as a shifted sum (`MViT.pool_implementation='shifted_sum'`).

XLA:CPU runs a grouped (depthwise) 3D convolution as a slow generic loop. The same convolution as
a sum over the kernel offsets of strided slices times per-channel weights gives the same result
up to float rounding and runs two orders of magnitude faster there.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError


def shifted_sum_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None):
    """A depthwise convolution with `jax.lax.conv_general_dilated`'s signature, so that it can be
    handed to `nn.Conv(conv_general_dilated=...)`, which keeps the conv's parameter and initialiser.

    Supported: channels-last lhs [N, *spatial, C], rhs [*kernel, 1, C], feature_group_count = C,
    explicit (low, high) padding per spatial axis, no dilation. `precision` has nothing to act
    on: every product is elementwise.
    """
    channels, ndim = lhs.shape[-1], lhs.ndim
    channels_last = ((0, ndim - 1, *range(1, ndim - 1)), (ndim - 1, ndim - 2, *range(ndim - 2)))
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if (rhs.shape[-2:] != (1, channels) or feature_group_count != channels or dilated
            or isinstance(padding, str)
            or (dimension_numbers is not None
                and tuple(dimension_numbers) != (*channels_last, channels_last[0]))):
        raise VtxError('shifted_sum_conv computes undilated, explicitly padded, channels-last '
                       f'depthwise convolutions only; got lhs {lhs.shape}, rhs {rhs.shape}, '
                       f'groups {feature_group_count}, padding {padding}')
    kernel = rhs.shape[:-2]
    padded = jnp.pad(lhs, [(0, 0), *padding, (0, 0)])
    out = [(n - k) // s + 1 for n, k, s in zip(padded.shape[1:-1], kernel, window_strides)]
    total = None
    for offset in np.ndindex(*kernel):
        limit = (o + (n - 1) * s + 1 for o, n, s in zip(offset, out, window_strides))
        term = jax.lax.slice(padded, (0, *offset, 0), (lhs.shape[0], *limit, channels),
                             (1, *window_strides, 1)) * rhs[offset][0]
        total = term if total is None else total + term
    return total

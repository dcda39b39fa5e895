"""Strided convolutions as one matmul over the input's patches: the patch embeddings of every
family (`conv_general_dilated`, handed to `nn.Conv`).

XLA:CPU runs a strided dense convolution over a video as a generic loop far below its matmul
rate. The same convolution is a matmul of every output position's receptive field against the
kernel flattened to [taps x channels, features]. The fields are gathered in two copies: the
padded input rearranged into stride-sized blocks (space-to-depth), then, for each of the few
block offsets a field spans (one where kernel = stride, eight for MViT's), a slice of those blocks
whose inner part is contiguous. The kernel's rows are put in the order the fields take. Every
product is one the convolution makes (the kernel is not padded to whole blocks), so the MACs,
and with them `vtx.report`'s counts and the benchmark's MFU, are the convolution's.

On 2 cores of an AMD EPYC (Zen 5), XLA's 2048^2 matmul at 403-476 GFLOP/s (torch's 167-232 in
the runs around), convolution -> matmul: Video Swin's 2x4x4 patches of a 32x224x224 clip 20.4 ->
6.2 ms (57.5 -> 24.7 ms with the weight gradient), MViT's overlapping 3x7x7 convolution at stride
2x4x4 43.0 -> 14.2 ms (130.2 -> 30.7 ms); MViT-B's train step 1.61 -> 1.52 s, its eval 0.46 ->
0.44 s (docs/performance.md, "Patch embeddings as one matmul").
"""
import itertools
import math

import jax
import jax.numpy as jnp

from vtx.errors import VtxError
from vtx.kernels import backend


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None):
    """`jax.lax.conv_general_dilated`, run as a matmul over patches where `backend.cpu_forms()`
    and as the convolution elsewhere, so that it can be handed to `nn.Conv(conv_general_dilated=
    ...)`, which keeps the conv's parameters and initialisers.

    The matmul form takes channels-last lhs [N, *spatial, C] and rhs [*kernel, C, features],
    'VALID' or explicit (low, high) padding, no dilation and no feature groups: the patch
    embeddings' convolutions."""
    if not backend.cpu_forms():
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    if (feature_group_count != 1 or rhs.shape[-2] != lhs.shape[-1]
            or (isinstance(padding, str) and padding != 'VALID')
            or not channels_last_undilated(lhs.ndim, dimension_numbers, lhs_dilation,
                                           rhs_dilation)):
        raise VtxError('patches.conv_general_dilated runs undilated, ungrouped, channels-last '
                       "convolutions with 'VALID' or explicit padding as a matmul; got lhs "
                       f'{lhs.shape}, rhs {rhs.shape}, groups {feature_group_count}, padding '
                       f'{padding}, dilation {lhs_dilation} / {rhs_dilation}')
    if isinstance(padding, str):
        padding = [(0, 0)] * (lhs.ndim - 2)
    return patch_matmul(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding),
                        precision=precision, preferred_element_type=preferred_element_type)


def channels_last_undilated(ndim: int, dimension_numbers, lhs_dilation, rhs_dilation) -> bool:
    """Whether a `conv_general_dilated` call of rank `ndim`, as nn.Conv makes it, is channels-last
    ([N, *spatial, C] input and output, [*kernel, C_in, C_out] kernel) and undilated: the form
    vtx's convolution kernels take (`conv_general_dilated`, `pooling.shifted_sum_conv`)."""
    channels_last = ((0, ndim - 1, *range(1, ndim - 1)), (ndim - 1, ndim - 2, *range(ndim - 2)))
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    return not dilated and (dimension_numbers is None
                            or tuple(dimension_numbers) == (*channels_last, channels_last[0]))


def patch_matmul(x, kernel, strides, padding, *, precision=None, preferred_element_type=None):
    """The convolution of x [N, *spatial, C] with kernel [*window, C, features] at `strides`
    after `padding` ((low, high) per spatial axis), as a matmul over patches."""
    window = kernel.shape[:-2]
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    spatial = x.shape[1:-1]
    out = [(n - k) // s + 1 for n, k, s in zip(spatial, window, strides)]
    if min(out) < 1:
        raise VtxError(f'patch_matmul: input {x.shape[1:-1]} (padded) is smaller than the '
                       f'window {window}')
    # Blocks of `strides` pixels; a field starting in block i spans blocks i .. i + spans - 1.
    spans = [-(-k // s) for k, s in zip(window, strides)]
    blocks = [o + r - 1 for o, r in zip(out, spans)]
    used = [b * s for b, s in zip(blocks, strides)]
    x = jnp.pad(x[(slice(None), *(slice(0, u) for u in used))],   # drop what no field reaches,
                [(0, 0), *((0, max(u - n, 0)) for u, n in zip(used, spatial)), (0, 0)])  # fill
    n, channels, nd = x.shape[0], x.shape[-1], len(window)
    x = x.reshape(n, *itertools.chain(*zip(blocks, strides)), channels)
    x = x.transpose(0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1)
    fields, rows = [], []
    for offset in itertools.product(*(range(r) for r in spans)):
        inner = [min(s, k - o * s) for o, s, k in zip(offset, strides, window)]
        part = x[(slice(None), *(slice(o, o + m) for o, m in zip(offset, out)),
                  *(slice(0, i) for i in inner))]
        fields.append(part.reshape(n, *out, math.prod(inner) * channels))
        rows.append(kernel[tuple(slice(o * s, o * s + i)
                                 for o, s, i in zip(offset, strides, inner))]
                    .reshape(-1, kernel.shape[-1]))
    return jnp.einsum('...k,kf->...f', jnp.concatenate(fields, axis=-1),
                      jnp.concatenate(rows, axis=0), precision=precision,
                      preferred_element_type=preferred_element_type)

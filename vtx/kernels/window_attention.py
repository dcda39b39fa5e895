"""Video Swin / TPS window attention with a hand-written VJP.

Autodiff of the attention formula kept several [..., N, N] tensors per block and reduced the
relative-position-bias gradient over the windows with a strided loop; together that was ~70% of
Swin-T's train step on CPU. The VJP below keeps only the attention weights, uses the
flash-attention form dS = P (dP - rowsum(dO O)), and sums the bias gradient with a matmul.

Its forward is `attention_with_weights`, the formula of every vtx attention: eval runs it as the
primal and drops the weights, the train step runs it as the VJP's forward and keeps them.
"""
from typing import Sequence

import jax
import jax.numpy as jnp

from vtx.kernels.attention import attention_with_weights


def sum_to_shape(x, shape: Sequence[int]):
    """Sums x over the axes where `shape` (same rank) is 1 and x is not, as a matmul with ones.

    This is the transpose of broadcasting a [heads, N, N] bias over all windows. XLA:CPU runs that
    reduction over the leading (window) axes as a strided loop, ~50x slower than the equivalent
    vector-matrix product (0.36 s against 6 ms for Swin-T stage 1).
    """
    reduce = [i for i in range(x.ndim) if shape[i] == 1 and x.shape[i] != 1]
    if not reduce:
        return x
    last = max(reduce)
    batch = [i for i in range(last) if i not in reduce]
    x = x.reshape(x.shape[:last + 1] + (-1,))
    ones = jnp.ones([x.shape[i] for i in batch + reduce], x.dtype)
    out = jax.lax.dot_general(   # ones as the left operand: x needs no transposed copy
        ones, x, ((tuple(range(len(batch), len(batch) + len(reduce))), tuple(reduce)),
                  (tuple(range(len(batch))), tuple(batch))))
    return out.reshape(shape)


def _forward(qkv, bias, mask):
    """(output, residuals): the primal's output and what the backward needs."""
    q, k, v = (qkv[..., i, :, :] for i in range(3))
    o, p = attention_with_weights(q, k, v, bias=bias if mask is None else bias + mask)
    return o, (q, k, v, o, p, bias)


@jax.custom_vjp
def window_attention(qkv, bias, mask):
    """softmax(q k^T / sqrt(hd) + bias + mask) v: qkv [..., N, 3, heads, hd] -> [..., N, heads, hd].

    `bias` and `mask` (additive, or None) broadcast against the [..., heads, N, N] scores; the
    mask is a constant and gets no gradient.
    """
    return _forward(qkv, bias, mask)[0]


def _backward(residuals, do):
    q, k, v, o, p, bias = residuals
    # Heads before tokens ([..., heads, N, hd]) makes every product a plain batched matmul; in the
    # forward's token-major layout XLA:CPU copies transposed [..., N, N] operands instead.
    q, k, v, o, do = (jnp.swapaxes(t, -2, -3) for t in (q, k, v, o, do.astype(v.dtype)))
    f32 = jnp.float32
    dv = jnp.einsum('...qk,...qd->...kd', p, do)
    dp = jnp.einsum('...qd,...kd->...qk', do, v, preferred_element_type=f32)
    delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)  # rowsum(dO O)
    ds = p.astype(f32) * (dp - delta)
    shape = (1,) * (ds.ndim - bias.ndim) + bias.shape
    dbias = sum_to_shape(ds, shape).reshape(bias.shape).astype(bias.dtype)
    ds = ds.astype(q.dtype)
    scale = jnp.sqrt(q.shape[-1]).astype(q.dtype)   # the forward divides the scores by it
    dq = jnp.einsum('...qk,...kd->...qd', ds, k) / scale
    dk = jnp.einsum('...qk,...qd->...kd', ds, q) / scale
    # [3, ..., heads, N, hd] -> [..., N, 3, heads, hd], the layout of qkv
    return jnp.moveaxis(jnp.stack([dq, dk, dv]), (0, -2), (-3, -4)), dbias, None


window_attention.defvjp(_forward, _backward)

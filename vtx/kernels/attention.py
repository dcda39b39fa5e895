"""The attention core softmax(q k^T / sqrt(d) + bias + mask) v, its backward, and the choice of
what computes it.

Inputs and outputs are token-major ([..., length, heads, head_dim]), the layout the projections
produce, but every product runs heads-first ([..., heads, length, head_dim]): then each is a
plain batched matmul. In the token-major layout XLA:CPU copies a transposed operand for every
head and runs the products 2-4x slower (ViT-B, 16 frames: 0.15 s -> 0.04 s per forward).

`attention_with_weights` is the one forward formula of vtx's attention. `attention` runs it with
a hand-written VJP in the flash-attention form dS = P (dP - rowsum(dO O)): it keeps only the
probabilities, where autodiff of the softmax kept several [..., N, N] tensors, and sums the
gradient of a bias broadcast over windows as a matmul with ones (XLA:CPU ran that reduction as a
strided loop, 0.39 s per Swin-T stage-1 block).
"""
import math

import jax
import jax.numpy as jnp

from vtx.errors import VtxError

# 'xla': `attention` (float32 softmax, bias, mask, dropout). 'jax':
# `jax.nn.dot_product_attention` with its XLA implementation (what it picks when not told; it
# never picks cuDNN by itself). 'cudnn': its cuDNN flash-attention kernel or an error. 'auto':
# that kernel where it applies (a GPU backend, 16-bit inputs, no bias, mask or attention dropout,
# head_dim a multiple of 8 up to 128), 'xla' everywhere else: on CPU the exact parity path.
ATTENTION_IMPLEMENTATIONS = ('xla', 'jax', 'cudnn', 'auto')
GPU_BACKENDS = ('gpu', 'cuda', 'rocm')


def _fused_kernel_applies(query, *, bias, mask, dropping: bool) -> bool:
    head_dim = query.shape[-1]
    return (jax.default_backend() in GPU_BACKENDS
            and query.dtype in (jnp.bfloat16, jnp.float16)
            and bias is None and mask is None and not dropping
            and head_dim % 8 == 0 and head_dim <= 128)


def fused_attention(query, key, value, implementation: str | None):
    """`jax.nn.dot_product_attention` of [..., length, heads, head_dim] inputs (it takes one
    batch axis: the leading axes are folded into it and restored)."""
    *lead, q_length, heads, head_dim = query.shape
    fold = lambda x: x.reshape(-1, *x.shape[-3:])
    out = jax.nn.dot_product_attention(fold(query), fold(key), fold(value),
                                       implementation=implementation)
    return out.reshape(*lead, q_length, heads, head_dim)


def _swap_heads(x):
    """[..., length, heads, head_dim] <-> [..., heads, length, head_dim]."""
    return jnp.swapaxes(x, -2, -3)


def _add(a, b):
    return b if a is None else a if b is None else a + b


def _scale(q):
    """head_dim^-1/2, applied to the query before its product with the keys (as Swin and MViT
    do; the ViTs scale the scores, the same up to rounding). Scaling the scores made XLA:CPU
    materialise the scalar broadcast to their [..., N, N] shape for its YNNPACK fusions: in a
    profile of the Swin-T train step, broadcasts took 0.38 s before and 0.10 s after."""
    return jnp.asarray(q.shape[-1] ** -0.5, q.dtype)


def _heads_first_attention(q, k, v, bias, dropout_rng=None, dropout_rate: float = 0.0):
    """(context, weights), everything heads-first: q [..., h, q, d], k/v [..., h, k, d]."""
    scores = jnp.einsum('...qd,...kd->...qk', q * _scale(q), k)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(v.dtype)
    return jnp.einsum('...qk,...kd->...qd', weights, v), weights


def attention_with_weights(query, key, value, *, bias=None, dropout_rng=None,
                           dropout_rate: float = 0.0):
    """(context [..., q_length, heads, head_dim], weights [..., heads, q_length, kv_length]).

    Inputs are [..., length, heads, head_dim]. `bias` (additive) broadcasts against the
    [..., heads, q, k] scores. The softmax runs in float32 whatever the compute dtype, as the
    official models do; the weights are the probabilities in the value dtype, after attention
    dropout at `dropout_rate` (drawn from `dropout_rng`).
    """
    context, weights = _heads_first_attention(
        _swap_heads(query), _swap_heads(key), _swap_heads(value), bias, dropout_rng, dropout_rate)
    return _swap_heads(context), weights


def sum_to_shape(x, shape):
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


# Attention whose scores exceed CHUNK_ABOVE runs, on CPU, as a loop over chunks of about
# CHUNK_BYTES of scores. XLA:CPU runs the score product, bias, softmax and value product as one
# fusion but materialises each [..., N, N] intermediate; chunks of a few MiB stay in cache.
# Measured on 2 cores (forward; forward + backward): Swin-T stage 1, 128 windows of 3 x 392^2
# scores (236 MB), 0.47 -> 0.16 s; 0.73 -> 0.51 s. Below ~64 MB the loop's own cost wins
# (ViT-B, 16 frames, 30 MB: 0.038 -> 0.055 s forward).
CHUNK_ABOVE = 64 << 20
CHUNK_BYTES = 4 << 20


def _chunking(query, key):
    """(chunk, count) along the last leading axis of q ([..., L, heads, hd]), or None when the
    scores are small, the backend is not a CPU, there is no leading axis to split, or a size is
    symbolic. Decided when tracing, by the default backend: a fixed-batch artefact exported on
    a CPU host for a GPU keeps the loop (the same results, run in sequence)."""
    lead = query.shape[:-3]
    sizes = (*query.shape, key.shape[-3])
    if (jax.default_backend() != 'cpu' or not lead
            or not all(isinstance(n, int) for n in sizes)):   # symbolic (exported) batch
        return None
    heads, q_len, k_len = query.shape[-2], query.shape[-3], key.shape[-3]
    per_slice = math.prod(lead[:-1]) * heads * q_len * k_len * 4
    n = lead[-1]
    if n * per_slice <= CHUNK_ABOVE:
        return None
    chunk = max([c for c in range(1, n + 1) if n % c == 0 and c * per_slice <= CHUNK_BYTES],
                default=1)
    return None if chunk == n else (chunk, n // chunk)


def _to_chunks(x, rank: int, chunking):
    """x broadcasting against a rank-`rank` array whose last leading axis (at rank - 4) is being
    chunked, as [count, chunk, ...] with that axis first; x of extent 1 there: [1, 1, ...]."""
    x = x.reshape((1,) * (rank - x.ndim) + x.shape)
    x = jnp.moveaxis(x, rank - 4, 0)
    chunk, count = chunking
    return x[None] if x.shape[0] == 1 else x.reshape(count, chunk, *x.shape[1:])


def _from_chunks(x, rank: int):
    """Inverse of `_to_chunks` for a full-size result."""
    return jnp.moveaxis(x.reshape(-1, *x.shape[2:]), 0, rank - 4)


def _attention_forward(query, key, value, bias, mask):
    """(output, residuals): the primal's output and what the backward needs (heads-first)."""
    chunking = _chunking(query, key)
    if chunking is None:
        q, k, v = _swap_heads(query), _swap_heads(key), _swap_heads(value)
        o, p = _heads_first_attention(q, k, v, _add(bias, mask))
        return _swap_heads(o), (q, k, v, o, p, bias)
    rank = query.ndim
    split = lambda x: None if x is None else _to_chunks(x, rank, chunking)
    q, k, v = (_swap_heads(split(x)) for x in (query, key, value))
    bias_c, mask_c = split(bias), split(mask)
    shared = lambda x: x is not None and x.shape[0] == 1   # the same for every chunk

    def step(xs):
        i, qi, ki, vi = xs
        pick = lambda x: None if x is None else x[0] if shared(x) else x[i]
        return _heads_first_attention(qi, ki, vi, _add(pick(bias_c), pick(mask_c)))

    o, p = jax.lax.map(step, (jnp.arange(chunking[1]), q, k, v))
    return _from_chunks(_swap_heads(o), rank), (q, k, v, o, p, bias)


@jax.custom_vjp
def attention(query, key, value, bias, mask):
    """softmax(q k^T / sqrt(d) + bias + mask) v: [..., length, heads, head_dim] -> the query's
    shape. `bias` and `mask` are additive (or None) and broadcast against the [..., heads, q, k]
    scores; the bias gets a gradient, the mask (Swin's 0/-100 shift mask) is a constant.

    Eval runs the primal and drops the weights; the train step runs the same forward as the VJP's
    and keeps them, so both compute the same bits. On CPU, large attention runs in chunks of the
    last leading axis (windows, frames) of about CHUNK_BYTES of scores each."""
    return _attention_forward(query, key, value, bias, mask)[0]


def _heads_first_backward(q, k, v, o, p, do):
    """(dq, dk, dv, dscores), heads-first; dscores [..., heads, q, k] in float32."""
    f32 = jnp.float32
    dv = jnp.einsum('...qk,...qd->...kd', p, do)
    dp = jnp.einsum('...qd,...kd->...qk', do, v, preferred_element_type=f32)
    delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)  # rowsum(dO O)
    ds = p.astype(f32) * (dp - delta)
    dq = jnp.einsum('...qk,...kd->...qd', ds.astype(q.dtype), k) * _scale(q)
    dk = jnp.einsum('...qk,...qd->...kd', ds.astype(q.dtype), q) * _scale(q)
    return dq, dk, dv, ds


def _bias_gradient(ds, bias_shape, dtype):
    """The gradient of a bias that broadcasts against ds, summed as a matmul with ones."""
    shape = (1,) * (ds.ndim - len(bias_shape)) + tuple(bias_shape)
    return sum_to_shape(ds, shape).reshape(bias_shape).astype(dtype)


def _attention_backward(residuals, do):
    q, k, v, o, p, bias = residuals
    rank = do.ndim
    if q.ndim == rank:   # not chunked
        dq, dk, dv, ds = _heads_first_backward(q, k, v, o, p, _swap_heads(do.astype(v.dtype)))
        dbias = None if bias is None else _bias_gradient(ds, bias.shape, bias.dtype)
        return _swap_heads(dq), _swap_heads(dk), _swap_heads(dv), dbias, None
    chunking = (q.shape[1], q.shape[0])   # q is [count, chunk, ...]
    do = _swap_heads(_to_chunks(do.astype(v.dtype), rank, chunking))
    bias_c = None if bias is None else _to_chunks(bias, rank, chunking)
    shared = bias_c is not None and bias_c.shape[0] == 1

    def step(total, xs):
        dq, dk, dv, ds = _heads_first_backward(*xs)
        if bias_c is None:
            return total, (dq, dk, dv, ())
        dbias = _bias_gradient(ds, bias_c.shape[1:], bias.dtype)
        return (total + dbias, (dq, dk, dv, ())) if shared else (total, (dq, dk, dv, dbias))

    total = jnp.zeros(bias_c.shape[1:], bias.dtype) if shared else ()
    total, (dq, dk, dv, dbias) = jax.lax.scan(step, total, (q, k, v, o, p, do))
    dbias = (None if bias is None else
             _from_chunks(total[None] if shared else dbias, rank).reshape(bias.shape))
    back = lambda x: _from_chunks(_swap_heads(x), rank)
    return back(dq), back(dk), back(dv), dbias, None


attention.defvjp(_attention_forward, _attention_backward)


def dot_product_attention(query, key, value, *, bias=None, mask=None, dropout_rng=None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          implementation: str = 'xla'):
    """softmax(q k^T / sqrt(d) + bias + mask) v over [..., length, heads, head_dim] inputs.

    `bias` and `mask` are additive, as in `attention`. `implementation` is one of
    ATTENTION_IMPLEMENTATIONS; the 'jax' and 'cudnn' paths serve global attention (no bias, mask
    or attention dropout), which 'auto' falls back from.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise VtxError(f'config.model.attention_implementation={implementation!r}: use one of '
                       f'{ATTENTION_IMPLEMENTATIONS}')
    dropping = dropout_rate > 0 and not deterministic
    if implementation == 'auto':
        if _fused_kernel_applies(query, bias=bias, mask=mask, dropping=dropping):
            return fused_attention(query, key, value, 'cudnn')
        implementation = 'xla'
    if implementation != 'xla':
        if bias is not None or mask is not None or dropping:
            raise VtxError(f"attention implementation {implementation!r} supports neither bias, "
                           "mask nor attention dropout; use 'xla' or 'auto'")
        return fused_attention(query, key, value,
                               'xla' if implementation == 'jax' else implementation)
    if dropping:  # the VJP keeps no dropout mask: attention dropout trains through autodiff
        return attention_with_weights(query, key, value, bias=_add(bias, mask),
                                      dropout_rng=dropout_rng, dropout_rate=dropout_rate)[0]
    return attention(query, key, value, bias, mask)

"""The attention core softmax(q k^T / sqrt(d) + bias + mask) v, its backward, and the choice of
what computes it.

Inputs and outputs are token-major ([..., length, heads, head_dim]), the layout the projections
produce, but every product runs heads-first ([..., heads, length, head_dim]): then each is a
plain batched matmul. In the token-major layout XLA:CPU copies a transposed operand for every
head and runs the products 2-4x slower (ViT-B, 16 frames: 0.15 s -> 0.04 s per forward).
Self-attention may take its query, key and value packed as one projection gives them,
[..., length, 3, heads, head_dim] (`packed_attention`).

`attention_with_weights` is the one forward formula of vtx's attention. `attention` runs it with
a hand-written VJP in the flash-attention form dS = P (dP - rowsum(dO O)): it keeps only the
probabilities, where autodiff of the softmax kept several [..., N, N] tensors, and sums the
gradient of a bias broadcast over windows as a matmul with ones (XLA:CPU ran that reduction as a
strided loop, 0.39 s per Swin-T stage-1 block).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vtx.errors import VtxError
from vtx.kernels import backend, native

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


class SegmentMask(NamedTuple):
    """An additive mask given by segment ids: a query and a key in different segments get `value`
    added to their score, in the same segment 0 (Video Swin's shifted windows: -100). The ids
    broadcast against the scores' leading axes: `query_ids` [..., q], `key_ids` [..., k].

    The [..., q, k] mask is built only inside the computation that adds it (on CPU, per chunk),
    never written out: as an array, Video Swin-T's stage-1 mask (39 MB) took 0.06 s of each
    forward to build and lay out."""
    query_ids: jax.Array
    key_ids: jax.Array
    value: jax.Array   # a scalar

    def at_scores_rank(self, rank: int) -> 'SegmentMask':
        """The ids as [..., 1, q, 1] and [..., 1, 1, k], broadcasting against rank-`rank` scores."""
        return SegmentMask(_at_scores_rank(self.query_ids[..., None, :, None], rank),
                           _at_scores_rank(self.key_ids[..., None, None, :], rank), self.value)

    def additive(self):
        """The additive [..., 1, q, k] mask, broadcasting against the scores."""
        same = self.query_ids[..., None, :, None] == self.key_ids[..., None, None, :]
        return jnp.where(same, jnp.zeros((), self.value.dtype), self.value)


def additive_mask(mask):
    """`mask` (an additive array, a SegmentMask or None) as an additive array or None."""
    return mask.additive() if isinstance(mask, SegmentMask) else mask


def _at_scores_rank(x, rank):
    return None if x is None else x.reshape((1,) * (rank - x.ndim) + x.shape)


def _scale(q):
    """head_dim^-1/2, applied to the query before its product with the keys (as Swin and MViT
    do; the ViTs scale the scores, the same up to rounding). Scaling the scores made XLA:CPU
    materialise the scalar broadcast to their [..., N, N] shape for its YNNPACK fusions: in a
    profile of the Swin-T train step, broadcasts took 0.38 s before and 0.10 s after."""
    return jnp.asarray(q.shape[-1] ** -0.5, q.dtype)


def _over_head_dim(a, b, dtype=None, d_major: bool = False):
    """a [..., m, d] times b [..., n, d] over d: [..., m, n], accumulated in `dtype` where given
    (the scores q k^T, and dO v^T in the backward).

    `d_major`: both operands are first copied d-major ([..., d, m] and [..., d, n]) behind an
    optimization barrier, which keeps XLA from folding the transposes back into the product.
    XLA:CPU then runs it as a dot of its own instead of inside the softmax's YNNPACK fusion: in a
    profile of Video Swin-T's stage 1 (head_dim 32, 392-token windows), 0.061 s per block for
    product, bias, mask, max and exponential became 0.022 s for the product and 0.021 s for the
    rest. The layout is what pays: the barrier alone, operands left as they are, was no faster
    than the fused product. The chunk loops of long sequences ask for it (see `_chunk_plan`);
    whole steps on 2 cores of an AMD EPYC, both compiled in one process and alternated
    (docs/performance.md, 2026-12-05; XLA's / torch's 2048^2 matmul 213 / 155-197 and 217-218 /
    190-200 GFLOP/s in those runs): Swin-T eval 1.258 -> 1.235 s median (1.216 -> 1.172 s min),
    train step 4.425 -> 4.387 s.
    Short sequences (ViT's 197 tokens, TPS's 49) were no faster or slower that way and keep the
    plain product. Long attention that runs whole (most of MViT's) runs d-major in its backward
    only, where `backend.cpu_forms()`: on the AMD host d-major forward and backward made
    STTS-MViT's train step slower; on 2 cores of an Intel Xeon with AVX-512, d-major in the
    backward alone took MViT-B's train step from 3.251 to 3.125 s median, faster in every one of
    10 alternated pairs, and left STTS-MViT's level (docs/performance.md, "Attention's leading
    axes")."""
    if d_major:
        a, b = jax.lax.optimization_barrier((jnp.swapaxes(a, -1, -2), jnp.swapaxes(b, -1, -2)))
        return jnp.einsum('...dm,...dn->...mn', a, b, preferred_element_type=dtype)
    return jnp.einsum('...md,...nd->...mn', a, b, preferred_element_type=dtype)


def _heads_first_attention(q, k, v, bias, dropout_rng=None, dropout_rate: float = 0.0,
                           d_major: bool = False):
    """(context, weights), everything heads-first: q [..., h, q, d], k/v [..., h, k, d].

    Without dropout the softmax's row sums divide the context [..., q, d] instead of the weights
    [..., q, k]: eval, which drops the weights, then skips a pass over the scores (Swin-T 32x224
    eval on 2 cores, alternating in one process: 1.282 -> 1.261 s; TPS-T 0.970 -> 0.922 s)."""
    f32 = jnp.float32
    scores = _over_head_dim(q * _scale(q), k, d_major=d_major).astype(f32)
    if bias is not None:
        scores = scores + bias.astype(f32)
    exp = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    inverse_sum = 1.0 / exp.sum(axis=-1, keepdims=True)
    weights = (exp * inverse_sum).astype(v.dtype)
    if dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(v.dtype)
        return jnp.einsum('...qk,...kd->...qd', weights, v), weights
    context = jnp.einsum('...qk,...kd->...qd', exp.astype(v.dtype), v, preferred_element_type=f32)
    return (context * inverse_sum).astype(v.dtype), weights


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


# On CPU, large attention runs as a loop over chunks of at most CHUNK_BYTES of scores. XLA:CPU runs
# the score product, bias, softmax and value product as one YNNPACK fusion but materialises each
# [..., N, N] intermediate; chunks of a few MiB stay in cache. Measured on 2 cores, whole models,
# both settings compiled in one process and alternated (docs/performance.md, 2026-12-05):
# - Long sequences (one head's scores over LONG_HEAD_SCORES: Video Swin's 392-token windows,
#   MViT's pooled attention) chunk from LONG_CHUNK_ABOVE: Swin-T 32x224 eval took 1.52 s median
#   with its stage-3 and stage-4 windows (56 and 28 MiB of scores) whole, 1.26 s in chunks.
# - Shorter ones (ViT's 197 tokens, TPS's 49) from CHUNK_ABOVE: chunks from 16 MiB made XViT-B's
#   (28 MiB) and TPS-T's evals 3% slower.
# - Chunks of 4 MiB beat 2 and 8 MiB (Swin-T eval 1.26 against 1.29 and 1.35 s).
# - In the chunks of long sequences the products over head_dim run d-major (`_over_head_dim`).
# - Eval of attention over the threshold whose single heads exceed a chunk (MViT's pooled
#   attention) runs in chunks of query rows instead (`_query_rows`).
# Without transparent huge pages whole attention is slower still: a lone Swin-T stage-3 forward
# took 81 ms whole and 25 ms in chunks, against 33 and 29 ms with them.
CHUNK_ABOVE = 64 << 20
LONG_CHUNK_ABOVE = 16 << 20
LONG_HEAD_SCORES = 256 << 10
CHUNK_BYTES = 4 << 20
# The chunk loops run two chunks an iteration: XLA:CPU then schedules the two chunks' kernels
# together. Video Swin-T 32x224 on 2 cores of an Intel Xeon with AVX-512, one process per version
# alternated (docs/performance.md, "Two chunks an iteration"), 1 -> 2: train step 4.052, 4.115,
# 4.147, 4.160 -> 3.978, 4.062, 4.058, 4.002 s, eval 1.266, 1.230, 1.214, 1.190 -> 1.224, 1.216,
# 1.154, 1.159 s; 4 chunks an iteration no faster than 2 and 2 s longer to compile. On 2 cores of
# an AMD EPYC (Zen 5) the train step ran about 3% slower with 2 than with 1 (medians of six rounds
# 2.25 against 2.19 s; eval level): 2 is kept for the Xeon, the official baseline's host kind.
CHUNK_UNROLL = 2


def _long(scores_shape) -> bool:
    """Whether one head's scores exceed LONG_HEAD_SCORES."""
    return math.prod(scores_shape[-2:]) * 4 > LONG_HEAD_SCORES


def _over_threshold(scores_shape) -> bool:
    """Whether attention with these heads-first scores is large enough to run in chunks on this
    backend: where `backend.cpu_forms()`, with fixed sizes, over LONG_CHUNK_ABOVE of scores for long
    sequences (`_long`) and CHUNK_ABOVE for the others."""
    if (not backend.cpu_forms()
            or not all(isinstance(n, int) for n in scores_shape)):   # symbolic (exported) batch
        return False
    return math.prod(scores_shape) * 4 > (LONG_CHUNK_ABOVE if _long(scores_shape) else CHUNK_ABOVE)


def _chunk_plan(scores_shape):
    """(axis, size): attention whose heads-first scores have `scores_shape` ([..., heads, q, k])
    runs in chunks of `size` along `axis` (a leading axis or the heads), each with all of the later
    axes, in a loop over `axis` and the axes before it. None: it runs whole, as when the scores
    are small, the backend is not a CPU or a size is symbolic. Decided when tracing, by the
    default backend: a fixed-batch artefact exported on a CPU host for a GPU keeps the loop (the
    same results, run in sequence)."""
    if not _over_threshold(scores_shape):
        return None
    for axis in range(len(scores_shape) - 2):   # the outermost axis whose slices fit a chunk
        per_slice = math.prod(scores_shape[axis + 1:]) * 4
        if per_slice <= CHUNK_BYTES:
            n = scores_shape[axis]
            return axis, max(c for c in range(1, n + 1)
                             if n % c == 0 and c * per_slice <= CHUNK_BYTES)
    return None   # one head's scores exceed a chunk


def _query_rows(scores_shape):
    """Query rows per chunk for attention that runs whole (`_chunk_plan` None) although its scores
    exceed the threshold, because one head's do not fit a chunk: MViT's pooled attention (MViT-B
    16x224, block 0: 25089 queries against 393 keys, 39 MB of scores). Its eval then runs in
    chunks of query rows, each with every key, about CHUNK_BYTES of scores (`_context_by_rows`).
    None where attention runs in a `_chunk_plan` loop or whole anyway.

    MViT-B 16x224 eval on 2 cores of an AMD EPYC, both compiled in one process and alternated 16
    times, twice (docs/performance.md, 2026-12-05; XLA's / torch's 2048^2 matmul 197-218 /
    173-199 GFLOP/s): 1.077 -> 0.907 and 1.060 -> 0.884 s median (0.905 -> 0.873 and 0.886 ->
    0.857 s min); STTS-MViT's eval was unchanged (0.482 -> 0.481 s min). Only eval, which drops
    the weights, runs so: the train step keeps the whole weights for its backward, and a forward
    that wrote them chunk by chunk made STTS-MViT's train step slower (1.877 -> 1.945 s min)."""
    if not _over_threshold(scores_shape) or _chunk_plan(scores_shape) is not None:
        return None
    count = -(-math.prod(scores_shape) * 4 // CHUNK_BYTES)
    return -(-scores_shape[-2] // count)


def _context_by_rows(q, k, v, rows: int):
    """The context of `_heads_first_attention(q, k, v, None)` computed as a loop over chunks of
    `rows` query rows, the rows left over as one shorter chunk after it (not padded: padding
    would add work, and MACs to the model's count); each row's softmax and products are the same
    as whole."""
    n, d = q.shape[-2:]
    whole = n // rows * rows
    chunks = jnp.moveaxis(q[..., :whole, :].reshape(*q.shape[:-2], n // rows, rows, d), -3, 0)
    context = jax.lax.map(lambda chunk: _heads_first_attention(chunk, k, v, None)[0], chunks)
    context = jnp.moveaxis(context, 0, -3).reshape(*q.shape[:-2], whole, d)
    if whole == n:
        return context
    rest = _heads_first_attention(q[..., whole:, :], k, v, None)[0]
    return jnp.concatenate([context, rest], axis=-2)


def _folds(lead) -> bool:
    """Whether whole attention without bias or mask folds the leading axes `lead` of its
    heads-first operands into one, [batch, heads, n, d] -> [batch * heads, n, d]: where one of
    several is 1, as batch 1 gives. XLA:CPU's YNNPACK fusions ran the backward's dS = P (dP -
    rowsum(dO O)) with its product 3-6x below the matmul rate there (MViT-B's block 1, [1, 2, 6273,
    1569] scores: 0.108 s for 3.8 GFLOP); folded, the attention's forward and backward at that
    block took 192-199 ms instead of 219-230. Whole train steps on 2 cores of an Intel Xeon with
    AVX-512, both compiled in one process and alternated 10 times, medians by position in a pair
    (the second step of a pair ran slower for either): MViT-B 3.21 / 3.48 -> 3.14 / 3.18 s,
    STTS-MViT 1.75 / 2.83 -> 1.71 / 2.70 s; evals level (docs/performance.md, "Attention's
    leading axes")."""
    return len(lead) > 1 and 1 in lead


def _chunk_count(scores_shape, plan):
    axis, size = plan
    return math.prod(scores_shape[:axis]) * (scores_shape[axis] // size)


def _chunk_window(x, i, scores_shape, plan, layout: str = 'scores'):
    """(starts, sizes): where chunk `i` of the scores lies in x, an array in `layout` (see
    `_heads_first`): one that broadcasts against the scores (same rank; extent 1 on an axis it
    shares between chunks) or a whole input or output of the attention."""
    axis, size = plan
    index = []
    for n in reversed((*scores_shape[:axis], scores_shape[axis] // size)):
        index.append(i % n)
        i = i // n
    index = index[::-1]
    index[axis] = index[axis] * size
    heads_axis = len(scores_shape) - 3
    starts, sizes = [0] * x.ndim, list(x.shape)
    for a in range(axis + 1):
        at = x.ndim - 2 if layout != 'scores' and a == heads_axis else a
        if x.shape[at] != 1:   # else shared by the chunks
            starts[at], sizes[at] = index[a], size if a == axis else 1
    return starts, sizes


def _heads_first(x, layout: str):
    """x in `layout` as heads-first: 'scores' is that already; 'tokens' [..., length, heads,
    head_dim] -> [..., heads, length, head_dim]; 'packed' [..., length, 3, heads, head_dim] (one
    projection's query, key and value) -> [3, ..., heads, length, head_dim]."""
    if layout == 'packed':
        x = jnp.moveaxis(x, -3, 0)
    return x if layout == 'scores' else _swap_heads(x)


def _from_heads_first(x, layout: str):
    """The inverse of `_heads_first`."""
    x = x if layout == 'scores' else _swap_heads(x)
    return jnp.moveaxis(x, 0, -3) if layout == 'packed' else x


def _chunk_of(x, i, scores_shape, plan, layout: str = 'scores'):
    """Chunk `i` of x (see `_chunk_window`) without the loop axes, heads-first."""
    starts, sizes = _chunk_window(x, i, scores_shape, plan, layout)
    return _heads_first(jax.lax.dynamic_slice(x, starts, sizes).reshape(sizes[plan[0]:]), layout)


def _put_chunk(total, i, chunk, scores_shape, plan, layout: str = 'scores', add: bool = True):
    """total with `chunk` (shaped as `_chunk_of(total, ...)`) added at chunk `i`, or written there
    (`add` False: where no chunk overlaps another, as the forward's output)."""
    starts, sizes = _chunk_window(total, i, scores_shape, plan, layout)
    chunk = _from_heads_first(chunk, layout).reshape(sizes)
    if add:
        chunk = jax.lax.dynamic_slice(total, starts, sizes) + chunk
    return jax.lax.dynamic_update_slice(total, chunk, starts)


# The attention's inputs are a (query, key, value) tuple of token-major arrays or one projection's
# three packed as [..., length, 3, heads, head_dim]; their gradients come in the same form.

def _unpack(inputs):
    """(query, key, value), token-major."""
    return inputs if isinstance(inputs, tuple) else tuple(inputs[..., i, :, :] for i in range(3))


def _pack(grads):
    """Gradients as a packed array (a (dq, dk, dv) tuple stacked, or already one)."""
    return jnp.stack(grads, axis=-3) if isinstance(grads, tuple) else grads


def _chunk_of_inputs(inputs, i, scores_shape, plan):
    """Chunk `i` of the query, key and value, heads-first."""
    if isinstance(inputs, tuple):
        return tuple(_chunk_of(x, i, scores_shape, plan, 'tokens') for x in inputs)
    return tuple(_chunk_of(inputs, i, scores_shape, plan, 'packed'))


def _add_to_inputs(total, i, grads, scores_shape, plan):
    """`total` (shaped as the inputs) with the heads-first (dq, dk, dv) of chunk `i` added."""
    if isinstance(total, tuple):
        return tuple(_put_chunk(t, i, g, scores_shape, plan, 'tokens')
                     for t, g in zip(total, grads))
    return _put_chunk(total, i, jnp.stack(grads), scores_shape, plan, 'packed')


def _scores_shape(query, key_length: int):
    """The heads-first scores' shape for a token-major query [..., q, heads, head_dim]."""
    return (*query.shape[:-3], query.shape[-2], query.shape[-3], key_length)


def _native_window_attention_layout(inputs, bias, mask):
    """(bias [count, heads, N, N], period, None or the (query, key) ids [rows, N]) for
    `native.window_attention` (see there), or None where eval of this attention keeps XLA's
    kernels. The kernel takes the window attention of Video Swin and TPS as their eval runs it on
    CPU: one packed float32 qkv projection (head_dim up to 64), a bias shared by all windows or one
    per window index along one leading axis (TPS's per frame), and no mask or a SegmentMask whose
    query and key ids are given per window (the shifted windows' regions); fixed sizes (an exported
    artefact keeps XLA's kernels: its batch is symbolic), one device (XLA's partitioner would
    gather a sharded batch onto every device for a custom call), and the kernel built here."""
    if (isinstance(inputs, tuple) or bias is None or not backend.cpu_forms()
            or jax.device_count() > 1 or inputs.dtype != jnp.float32
            or not all(isinstance(x, int) for x in inputs.shape)):
        return None
    *lead, n, _, heads, head_dim = inputs.shape
    bias_lead = bias.shape[:-3]
    if (head_dim > native.MAX_HEAD_DIM or bias.shape[-3:] != (heads, n, n)
            or len(bias_lead) > len(lead)):
        return None
    varying = [i for i, size in enumerate(bias_lead, len(lead) - len(bias_lead)) if size != 1]
    if len(varying) > 1 or any(bias.shape[i - len(lead) - 3] != lead[i] for i in varying):
        return None
    count, period = (lead[varying[0]], math.prod(lead[varying[0] + 1:])) if varying else (1, 1)
    ids = None
    if mask is not None:
        if not isinstance(mask, SegmentMask) or mask.query_ids.shape != mask.key_ids.shape:
            return None
        id_lead = list(mask.query_ids.shape[:-1])
        while id_lead and id_lead[0] == 1:
            id_lead.pop(0)
        if (mask.query_ids.shape[-1] != n or len(id_lead) > len(lead)
                or id_lead != lead[len(lead) - len(id_lead):]):
            return None
        ids = (mask.query_ids.reshape(-1, n), mask.key_ids.reshape(-1, n))
    if not native.window_attention_available():
        return None
    return bias.reshape(count, heads, n, n).astype(jnp.float32), period, ids


def _native_window_attention(qkv, layout, mask):
    bias, period, ids = layout
    *lead, n, three, heads, head_dim = qkv.shape
    out = native.window_attention(qkv.reshape(-1, n, three, heads, head_dim), bias, period, ids,
                                  None if ids is None else mask.value)
    return out.reshape(*lead, n, heads, head_dim)


def _attention_forward(inputs, bias, mask, keep_weights: bool = True):
    """(output, residuals): the primal's output and what the backward needs. Whole, residuals are
    heads-first; in chunks they are the token-major inputs and output (each chunk transposes its
    own slice, in cache) and the weights in chunks. Without `keep_weights` (eval) there are no
    residuals, window attention runs as one native kernel where it can
    (`_native_window_attention_layout`), and whole attention without bias or mask may run in
    query rows (`_query_rows`)."""
    layout = None if keep_weights else _native_window_attention_layout(inputs, bias, mask)
    if layout is not None:
        return _native_window_attention(inputs, layout, mask), None
    query, key, value = _unpack(inputs)
    scores_shape = _scores_shape(query, key.shape[-3])
    plan = _chunk_plan(scores_shape)
    if plan is None:   # each input sliced and transposed in one copy, packed or not
        q, k, v = _swap_heads(query), _swap_heads(key), _swap_heads(value)
        rows = (None if keep_weights or bias is not None or mask is not None
                else _query_rows(scores_shape))
        if rows is not None:
            return _swap_heads(_context_by_rows(q, k, v, rows)), None
        lead = q.shape[:-2]
        if bias is None and mask is None and _folds(lead):
            q, k, v = (x.reshape(-1, *x.shape[-2:]) for x in (q, k, v))
        o, p = _heads_first_attention(q, k, v, _add(bias, additive_mask(mask)))
        return _swap_heads(o.reshape(*lead, *o.shape[-2:])), ((q, k, v), o, p, bias)
    rank = len(scores_shape)
    bias_s = _at_scores_rank(bias, rank)
    mask_s = (mask.at_scores_rank(rank) if isinstance(mask, SegmentMask) else
              _at_scores_rank(mask, rank))

    def chunk(out, i):
        of = lambda x: None if x is None else _chunk_of(x, i, scores_shape, plan)
        mask_i = (SegmentMask(of(mask_s.query_ids)[..., 0, :, 0], of(mask_s.key_ids)[..., 0, 0, :],
                              mask_s.value).additive()
                  if isinstance(mask_s, SegmentMask) else of(mask_s))
        o, p = _heads_first_attention(*_chunk_of_inputs(inputs, i, scores_shape, plan),
                                      _add(of(bias_s), mask_i), d_major=_long(scores_shape))
        return _put_chunk(out, i, o, scores_shape, plan, 'tokens', add=False), p

    out = jnp.zeros(query.shape[:-1] + value.shape[-1:], value.dtype)
    out, p = jax.lax.scan(chunk, out, jnp.arange(_chunk_count(scores_shape, plan)),
                          unroll=CHUNK_UNROLL)
    return out, (inputs, out, p, bias)


def _heads_first_backward(q, k, v, o, p, do, d_major: bool = False):
    """(dq, dk, dv, dscores), heads-first; dscores [..., heads, q, k] in float32."""
    f32 = jnp.float32
    dv = jnp.einsum('...qk,...qd->...kd', p, do)
    dp = _over_head_dim(do, v, f32, d_major)
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
    """(gradients of the inputs, gradient of the bias or None). The inputs' gradients are a
    (dq, dk, dv) tuple where the attention ran whole, and in the inputs' form (tuple or packed)
    where it ran in chunks; `_pack` makes either packed."""
    inputs, o, p, bias = residuals
    do = do.astype(o.dtype)
    scores_shape = _scores_shape(do, p.shape[-1])
    plan = _chunk_plan(scores_shape)
    if plan is None:   # inputs heads-first (leading axes folded where `_folds`), as kept
        do = _swap_heads(do)
        lead = do.shape[:-2]
        d_major = backend.cpu_forms() and _long(scores_shape)
        dq, dk, dv, ds = _heads_first_backward(*inputs, o, p, do.reshape(o.shape), d_major)
        dbias = None if bias is None else _bias_gradient(ds, bias.shape, bias.dtype)
        return tuple(_swap_heads(g.reshape(*lead, *g.shape[-2:])) for g in (dq, dk, dv)), dbias
    # Each chunk's gradients are added into whole-size float32 sums: a bias shared by several
    # chunks (Swin's, by every window) sums over them; q, k and v get each chunk's once.
    bias_s = _at_scores_rank(bias, len(scores_shape))
    sums = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), (inputs, bias_s))

    def chunk(sums, xs):
        (inputs_sum, bias_sum), (i, p_i) = sums, xs
        of = lambda x: _chunk_of(x, i, scores_shape, plan, 'tokens')
        dq, dk, dv, ds = _heads_first_backward(*_chunk_of_inputs(inputs, i, scores_shape, plan),
                                               of(o), p_i, of(do), _long(scores_shape))
        inputs_sum = _add_to_inputs(inputs_sum, i, [g.astype(jnp.float32) for g in (dq, dk, dv)],
                                    scores_shape, plan)
        if bias is not None:
            dbias = _bias_gradient(ds, _chunk_of(bias_sum, i, scores_shape, plan).shape,
                                   jnp.float32)
            bias_sum = _put_chunk(bias_sum, i, dbias, scores_shape, plan)
        return (inputs_sum, bias_sum), None

    count = _chunk_count(scores_shape, plan)
    (inputs_sum, bias_sum), _ = jax.lax.scan(chunk, sums, (jnp.arange(count), p),
                                             unroll=CHUNK_UNROLL)
    grads = jax.tree.map(lambda s, x: s.astype(x.dtype), inputs_sum, inputs)
    return grads, None if bias is None else bias_sum.reshape(bias.shape).astype(bias.dtype)


@jax.custom_vjp
def attention(query, key, value, bias, mask):
    """softmax(q k^T / sqrt(d) + bias + mask) v: [..., length, heads, head_dim] -> the query's
    shape. `bias` and `mask` are additive (or None) and broadcast against the [..., heads, q, k]
    scores, the mask possibly as a SegmentMask; the bias gets a gradient, the mask (Swin's 0/-100
    shift mask) is a constant.

    Eval runs the primal and drops the weights; the train step runs the same forward as the VJP's
    and keeps them, so both compute the same bits. On CPU, large attention runs in chunks of
    about CHUNK_BYTES of scores (see `_chunk_plan`); the exceptions to equal bits are two CPU
    forms of eval, the same up to float32 rounding: MViT's pooled attention in chunks of query
    rows where the train step runs it whole (`_query_rows`; bit for bit at MViT-B's shapes on the
    2-core host), and Video Swin's and TPS's window attention as one native kernel
    (`_native_window_attention_layout`)."""
    return _attention_forward((query, key, value), bias, mask, keep_weights=False)[0]


def _attention_vjp_backward(residuals, do):
    grads, dbias = _attention_backward(residuals, do)
    return *grads, dbias, None


attention.defvjp(lambda query, key, value, bias, mask:
                 _attention_forward((query, key, value), bias, mask),
                 _attention_vjp_backward)


@jax.custom_vjp
def packed_attention(qkv, bias, mask):
    """`attention` of the query, key and value of one projection, packed as [..., length, 3,
    heads, head_dim] (as Swin's qkv projection gives them) -> [..., length, heads, head_dim].

    In chunks each chunk slices its query, key and value from the packed array and adds its
    gradient there as one slice, where three whole-size slices of it were copied before the loop
    and the three gradients concatenated after. Video Swin-T 32x224 on 2 cores, both compiled in
    one process and alternated (docs/performance.md, 2026-12-05): eval 1.314 -> 1.281 s median,
    train step 4.642 -> 4.476 s."""
    return _attention_forward(qkv, bias, mask, keep_weights=False)[0]


def _packed_attention_vjp_backward(residuals, do):
    grads, dbias = _attention_backward(residuals, do)
    return _pack(grads), dbias, None


packed_attention.defvjp(_attention_forward, _packed_attention_vjp_backward)


def dot_product_attention(query, key=None, value=None, *, bias=None, mask=None,
                          dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = True,
                          implementation: str = 'xla'):
    """softmax(q k^T / sqrt(d) + bias + mask) v over [..., length, heads, head_dim] inputs, or over
    the query, key and value of one projection packed as `query` [..., length, 3, heads, head_dim]
    (`key` and `value` None; on CPU each chunk then slices its own, see `packed_attention`).

    `bias` and `mask` are additive, as in `attention` (the mask an array or a SegmentMask).
    `implementation` is one of ATTENTION_IMPLEMENTATIONS; the 'jax' and 'cudnn' paths serve global
    attention (no bias, mask or attention dropout), which 'auto' falls back from.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise VtxError(f'config.model.attention_implementation={implementation!r}: use one of '
                       f'{ATTENTION_IMPLEMENTATIONS}')
    if (key is None) != (value is None) or (key is None and query.shape[-3] != 3):
        raise VtxError('dot_product_attention takes a query, key and value, or one packed '
                       f'[..., length, 3, heads, head_dim] array; got query {query.shape}, key '
                       f'{None if key is None else key.shape}, value '
                       f'{None if value is None else value.shape}')
    inputs = query if key is None else (query, key, value)
    dropping = dropout_rate > 0 and not deterministic
    if implementation == 'auto':
        if _fused_kernel_applies(_unpack(inputs)[0], bias=bias, mask=mask, dropping=dropping):
            return fused_attention(*_unpack(inputs), 'cudnn')
        implementation = 'xla'
    if implementation != 'xla':
        if bias is not None or mask is not None or dropping:
            raise VtxError(f"attention implementation {implementation!r} supports neither bias, "
                           "mask nor attention dropout; use 'xla' or 'auto'")
        return fused_attention(*_unpack(inputs),
                               'xla' if implementation == 'jax' else implementation)
    if dropping:  # the VJP keeps no dropout mask: attention dropout trains through autodiff
        return attention_with_weights(*_unpack(inputs), bias=_add(bias, additive_mask(mask)),
                                      dropout_rng=dropout_rng, dropout_rate=dropout_rate)[0]
    return (attention(*inputs, bias, mask) if isinstance(inputs, tuple) else
            packed_attention(inputs, bias, mask))

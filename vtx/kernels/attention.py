"""The attention core softmax(q k^T / sqrt(d) + bias) v, and the choice of what computes it.

`attention_with_weights` is the one forward formula of vtx's attention: global attention
(`dot_product_attention`), pooling attention and window attention (whose custom VJP keeps the
weights it returns) all run it.
"""
import jax
import jax.numpy as jnp

from vtx.errors import VtxError

# 'xla': `attention_with_weights` (float32 softmax, bias, mask, dropout). 'jax':
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


def attention_with_weights(query, key, value, *, bias=None, mask=None, dropout_rng=None,
                           dropout_rate: float = 0.0):
    """(context [..., q_length, heads, head_dim], weights [..., heads, q_length, kv_length]).

    Inputs are [..., length, heads, head_dim]. `bias` broadcasts against the scores; `mask` is True
    where attention is allowed. The softmax runs in float32 whatever the compute dtype, as the
    official models do; the weights are the probabilities in the value dtype, after attention
    dropout at `dropout_rate` (drawn from `dropout_rng`).
    """
    head_dim = query.shape[-1]
    scores = jnp.einsum('...qhd,...khd->...hqk', query, key) / jnp.sqrt(head_dim).astype(query.dtype)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    if dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(value.dtype)
    return jnp.einsum('...hqk,...khd->...qhd', weights, value), weights


def dot_product_attention(query, key, value, *, bias=None, mask=None, dropout_rng=None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          implementation: str = 'xla'):
    """softmax(q k^T / sqrt(d) + bias) v over [..., length, heads, head_dim] inputs.

    `implementation` is one of ATTENTION_IMPLEMENTATIONS; the 'jax' and 'cudnn' paths serve
    global attention (no bias, mask or attention dropout), which 'auto' falls back from.
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
    context, _ = attention_with_weights(query, key, value, bias=bias, mask=mask,
                                        dropout_rng=dropout_rng,
                                        dropout_rate=dropout_rate if dropping else 0.0)
    return context

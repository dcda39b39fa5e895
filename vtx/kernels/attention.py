"""The attention core softmax(q k^T / sqrt(d) + bias) v, and the choice of what computes it.

`attention_with_weights` is the one forward formula of vtx's attention: global attention
(`dot_product_attention`), pooling attention and window attention (whose custom VJP keeps the
weights it returns) all run it.
"""
import jax
import jax.numpy as jnp

from vtx.errors import VtxError

# 'xla': `attention_with_weights` (float32 softmax, bias, mask, dropout). 'jax':
# `jax.nn.dot_product_attention`, which picks its cuDNN flash kernel on GPU where the shapes and
# dtype allow and XLA elsewhere. 'cudnn': that kernel or an error.
ATTENTION_IMPLEMENTATIONS = ('xla', 'jax', 'cudnn')


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
    global attention (no bias, mask or attention dropout).
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise VtxError(f'config.model.attention_implementation={implementation!r}: use one of '
                       f'{ATTENTION_IMPLEMENTATIONS}')
    dropping = dropout_rate > 0 and not deterministic
    if implementation != 'xla':
        if bias is not None or mask is not None or dropping:
            raise VtxError(f"attention implementation {implementation!r} supports neither bias, "
                           "mask nor attention dropout; use 'xla'")
        return jax.nn.dot_product_attention(
            query, key, value, implementation=None if implementation == 'jax' else implementation)
    context, _ = attention_with_weights(query, key, value, bias=bias, mask=mask,
                                        dropout_rng=dropout_rng,
                                        dropout_rate=dropout_rate if dropping else 0.0)
    return context

"""Blocks shared by every model family: self-attention, MLP, patch embedding, drop-path.

Parameters carry logical axis names (see `vtx.sharding` for the rules that map them onto the
mesh). Compute runs in `dtype` (float32 or bfloat16); parameters are stored in `param_dtype`.
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vtx.kernels import patches
from vtx.kernels.attention import attention_with_weights, dot_product_attention
from vtx.kernels.projection import dense_projections, over_rows

Dtype = Any

# PyTorch's default Linear/Conv init is not reproduced: vtx trains from scratch with the
# initialisers the JAX ViT lineage uses, and imports official weights through `convert/`.
default_kernel_init = nn.initializers.xavier_uniform()
default_bias_init = nn.initializers.zeros


class Dense(nn.Dense):
    """`nn.Dense` applied to its input's rows flattened to [rows, in features]: the same
    parameters and result.

    The flattening is for the backward on XLA:CPU. Over [..., length, in] inputs the weight's
    gradient contracts several axes, and XLA:CPU brings that product to its one-axis form with a
    transposed copy of the output's gradient (Video Swin-T's stage-1 fc1: [1, 50176, 384], 0.03 s
    a copy); over rows it contracts one axis and multiplies the operands as they are (2 cores of an
    Intel Xeon with AVX-512, jaxlib 0.10.2, both compiled in one process and alternated: train
    steps of Video Swin-T 4.85 -> 4.33 s, TPS-T 3.76 -> 3.02 s, MViT-B 3.62 -> 3.23 s, XViT-B
    9.14 -> 8.57 s; forwards unchanged; docs/performance.md, "Dense rows"). The reshapes are free
    on every backend."""

    @nn.compact
    def __call__(self, x):
        if x.ndim < 3:
            return _flax_dense(self, x)
        return over_rows(lambda rows: _flax_dense(self, rows), x)


# Flax's Dense body without its method wrapper, for the reason given at `_flax_layer_norm`.
_flax_dense = nn.Dense.__call__.__wrapped__


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          kernel_init: Callable = default_kernel_init, name: Optional[str] = None) -> nn.Dense:
    """A Dense layer whose kernel/bias carry the logical axis names `axes` = (in, out)."""
    return Dense(
        features, use_bias=use_bias, dtype=dtype, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(default_bias_init, (axes[1],)))


# erf(x) on [-4, 4] (beyond it erf is +-1 in float32) as x P(x^2) / Q(x^2): the rational
# approximation XLA evaluates for float32 erf (these are its coefficients), written out because
# `lax.erf` exports as a `chlo.erf` composite that the StableHLO inside TensorFlow's
# XlaCallModule (vtx-export --format savedmodel) cannot load.
_ERF_P = (-2.72614237e-10, 2.77068146e-08, -2.10102394e-06, -5.69250624e-05, -7.34990637e-04,
          -2.95460000e-03, -1.60960332e-02)
_ERF_Q = (-1.45660715e-05, -2.13374049e-04, -1.68282702e-03, -7.37332925e-03, -1.42647391e-02)


def _polynomial(coefficients, t):
    out = jnp.full_like(t, coefficients[0])
    for c in coefficients[1:]:
        out = out * t + c
    return out


@jax.custom_jvp
def erf(x):
    """float32 erf (computed in float32 for any input dtype, returned in it); its derivative is
    the exact 2/sqrt(pi) exp(-x^2), not the approximation's."""
    y = jnp.clip(x.astype(jnp.float32), -4.0, 4.0)
    t = y * y
    return jnp.clip(y * _polynomial(_ERF_P, t) / _polynomial(_ERF_Q, t), -1.0, 1.0).astype(x.dtype)


@erf.defjvp
def _erf_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return erf(x), (2 / jnp.sqrt(jnp.pi)).astype(x.dtype) * jnp.exp(-x * x) * dx


def gelu(x):
    """Exact (erf) GELU, x * Phi(x), evaluated as 0.5 x (1 + erf(x / sqrt 2)) like PyTorch's
    `nn.GELU()`. `jax.nn.gelu(approximate=False)` uses erfc instead, which XLA:CPU evaluates
    about twice as slowly (a 4.8M-element forward: 4.4 ms, against 2.2 ms with `erf` above);
    value and slope stay within 2e-6 of float64 (tests/test_kernels.py)."""
    return 0.5 * x * (1 + erf(x * jnp.sqrt(0.5).astype(x.dtype)))


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` over the last axis that flattens rows carrying a size-1 axis to [rows,
    channels] first: the result is the same, row by row.

    The flattening is for XLA:CPU, whose YNNPACK kernels ran the backward's fused multiply-and-sum
    over channels 10-30x more slowly when a size-1 axis, as batch 1 gives, led the rows (2 cores of
    an Intel Xeon with AVX-512, jaxlib 0.10.2; the gradient of one LayerNorm: [1, 50176, 96] 79 ->
    18 ms, [1, 1576, 768] 21 -> 2.8 ms; docs/performance.md, "LayerNorm rows"). Rows without one
    are left as they are: they ran at full speed, and the flattening made XLA's simplifier work
    longer (STTS-MViT's train step compiled about 2 s longer)."""

    @nn.compact
    def __call__(self, x, *args, **kwargs):
        if x.ndim < 3 or 1 not in x.shape[:-1]:
            return _flax_layer_norm(self, x, *args, **kwargs)
        return over_rows(lambda rows: _flax_layer_norm(self, rows, *args, **kwargs), x)


# Flax's LayerNorm body without its method wrapper: called as `super().__call__`, the flattened
# call would reach method interceptors (vtx.explain's Grad-CAM) as a second call of the module.
_flax_layer_norm = nn.LayerNorm.__call__.__wrapped__


def layer_norm(eps: float, dtype: Dtype = jnp.float32, name: Optional[str] = None,
               flatten_rows: bool = True) -> nn.LayerNorm:
    """LayerNorm over the last axis with the logical axis names of its scale and bias;
    `flatten_rows=False`: plain `nn.LayerNorm` (see `LayerNorm`)."""
    return (LayerNorm if flatten_rows else nn.LayerNorm)(
        epsilon=eps, dtype=dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)))


class Mlp(nn.Module):
    """Linear -> GELU (exact erf) -> dropout -> Linear -> dropout; names fc1/fc2 as the officials."""
    hidden_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        out_dim = x.shape[-1]
        x = dense(self.hidden_dim, ('embed', 'mlp'), dtype=self.dtype, name='fc1')(x)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
        x = gelu(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = dense(out_dim, ('mlp', 'embed'), dtype=self.dtype, name='fc2')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


def stochastic_depth(module: nn.Module, rates: Sequence[float], batch: int, deterministic: bool,
                     branches: int = 2):
    """Stochastic depth for a stack of layers: per-sample scales [len(rates), branches, batch],
    1/(1-p) where a residual branch is kept and 0 where it is dropped (layer i drops with
    probability rates[i]); None when nothing drops.

    All masks of the stack come from one draw of `module`'s 'dropout' stream. Drawn per branch,
    as the official DropPath modules do, XLA compiled the random-bit generator once per branch:
    the STTS-MViT SGD train step compiled in 24.1-24.9 s then and 22.7-22.9 s now (2 CPUs).
    """
    if deterministic or not any(rates):
        return None
    rates = jnp.asarray(rates, jnp.float32)[:, None, None]
    keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - rates,
                                (rates.shape[0], branches, batch))
    return jnp.where(keep, 1.0 / (1.0 - rates), 0.0)


def drop_path(branch, scales, index: int):
    """Residual branch `index` of a layer, [B, ...], times its per-sample stochastic-depth scale
    `scales[index]` (`scales`: the layer's row of `stochastic_depth`); unchanged when `scales`
    is None."""
    if scales is None:
        return branch
    scale = scales[index].reshape((-1,) + (1,) * (branch.ndim - 1))
    # In float32, then rounded once: a bfloat16 1/(1-p) would be off by up to 0.4%.
    return (branch * scale).astype(branch.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a conv with kernel = stride = patch), VALID padding.

    Works for 2D (`patch_size` of length 2, input [N, H, W, C]) and 3D (length 3, input
    [N, T, H, W, C]) patches. Trailing pixels that do not fill a patch are dropped, as in the
    official 2D ViTs; families that pad first (Video Swin) pad before calling this.
    """
    embed_dim: int
    patch_size: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        patch = tuple(self.patch_size)
        return nn.Conv(
            self.embed_dim, kernel_size=patch, strides=patch, padding='VALID', dtype=self.dtype,
            name='proj', conv_general_dilated=patches.conv_general_dilated,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None,) * len(patch) + ('channels', 'embed')),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(x)


def apply_layers(parent: nn.Module, block: Callable[..., nn.Module], layer_args: Sequence[dict],
                 x, deterministic: bool, *, name: str, drop_path_rates: Sequence[float],
                 first: int = 0, remat: bool = False, scan: bool = False):
    """Runs `block(**layer_args[i], name=f'{name}_{first + i}')(x, deterministic, drop_path)` on
    x for i in order, inside `parent` (`first` numbers a stack applied in several parts), where
    `drop_path` is layer i's row of `stochastic_depth` for `drop_path_rates` (None in eval).

    `block` is a Module class, or a partial of one where `remat` is False (`nn.remat` wraps
    classes). `remat` recomputes each layer in the backward. `scan` is a compile-time fast path:
    every run of two or more consecutive layers whose arguments agree becomes one `jax.lax.scan`
    over their parameters, stacked at call time, so XLA compiles one layer body per run instead of
    one per layer. The parameter tree is the unrolled one either way, so checkpoints and
    converters do not depend on it; the blocks' own dropout masks are drawn differently.
    """
    scales = stochastic_depth(parent, drop_path_rates, x.shape[0], deterministic)
    row = lambda i: None if scales is None else scales[i]
    layer = nn.remat(block, static_argnums=(2,)) if remat else block
    if not scan or parent.is_initializing():  # init always unrolls to create the parameters
        for i, args in enumerate(layer_args):
            x = layer(**args, name=f'{name}_{first + i}')(x, deterministic, row(i))
        return x
    params = nn.meta.unbox(parent.variables['params'])
    start = 0
    while start < len(layer_args):
        stop = start + 1
        while stop < len(layer_args) and layer_args[stop] == layer_args[start]:
            stop += 1
        if stop - start == 1:   # nothing to share; and the block may change the shape
            x = layer(**layer_args[start], name=f'{name}_{first + start}')(x, deterministic,
                                                                          row(start))
            start = stop
            continue
        stacked = jax.tree.map(lambda *p: jnp.stack(p),
                               *(params[f'{name}_{first + i}'] for i in range(start, stop)))
        rngs = {} if deterministic else {
            'dropout': jax.random.split(parent.make_rng('dropout'), stop - start)}
        module = block(**layer_args[start], parent=None)

        def body(h, xs):
            layer_params, drop_path, layer_rngs = xs
            return module.apply({'params': layer_params}, h, deterministic, drop_path,
                                rngs=layer_rngs), None

        x, _ = jax.lax.scan(jax.checkpoint(body) if remat else body, x,
                            (stacked, None if scales is None else scales[start:stop], rngs))
        start = stop
    return x


def truncated_normal(stddev: float = 0.02) -> Callable:
    return nn.initializers.truncated_normal(stddev)


class DenseParams(nn.Module):
    """The kernel [in, out] and bias [out] of a Dense layer, declared (same names, shapes and
    initialisers as `dense`) but not applied, so callers can fuse several projections into one
    matmul and keep the unfused parameter tree."""
    features: int
    axes: tuple[str, str]
    use_bias: bool = True

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param('kernel', nn.with_logical_partitioning(default_kernel_init, self.axes),
                            (in_features, self.features))
        bias = (self.param('bias', nn.with_logical_partitioning(default_bias_init, self.axes[1:]),
                           (self.features,)) if self.use_bias else None)
        return kernel, bias


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections and an output projection.

    Feature j of q/k/v belongs to head j // head_dim (head-major), as in every official model.
    `fused_qkv` computes the three projections as one [D, 3D] matmul
    (`kernels.projection.dense_projections`); the parameters stay three
    query/key/value Dense layers, so checkpoints and converters do not depend on it.
    Subclasses change what attends to what by overriding `mix_keys_values` (XViT's space-time
    mixing), which sees the projected keys and values [..., L, D] before the head split.
    """
    num_heads: int
    qkv_bias: bool = True
    attention_dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    implementation: str = 'xla'
    fused_qkv: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        *lead, length, dim = x.shape
        head_dim = dim // self.num_heads
        x = x.astype(self.dtype)
        kernels, biases = zip(*(
            DenseParams(features=dim, axes=('embed', 'heads'), use_bias=self.qkv_bias,
                        name=name)(dim) for name in ('query', 'key', 'value')))
        query, key, value = dense_projections(
            x, [k.astype(self.dtype) for k in kernels],
            [None if b is None else b.astype(self.dtype) for b in biases], fused=self.fused_qkv)
        key, value = self.mix_keys_values(key, value)
        split = lambda y: y.reshape(*lead, length, self.num_heads, head_dim)
        dropout_rng = None
        if self.attention_dropout_rate > 0 and not deterministic:
            dropout_rng = self.make_rng('dropout')
        context = dot_product_attention(
            split(query), split(key), split(value), dropout_rng=dropout_rng,
            dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
            implementation=self.implementation)
        if self.is_mutable_collection('intermediates'):
            # Attention rollout (vtx.explain) reads the weights [..., heads, L, L]; computed
            # again only when a caller asks for intermediates, so the forward is unchanged.
            self.sow('intermediates', 'attention_weights', attention_with_weights(
                split(query), split(key), split(value))[1])
        context = context.reshape(*lead, length, dim)
        return dense(dim, ('heads', 'embed'), dtype=self.dtype, name='out')(context)

    def mix_keys_values(self, key, value):
        return key, value

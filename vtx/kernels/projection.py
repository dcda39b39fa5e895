"""Several Dense projections of one input, optionally fused into one matmul (`fused_qkv`), and
the row flattening that vtx's projections and norms run under (`over_rows`)."""
import jax
import jax.numpy as jnp


def over_rows(fn, x):
    """`fn` of x's rows flattened to [rows, features], each of its outputs' rows put back under
    x's leading axes. Why XLA:CPU wants rows: `vtx.models.layers.Dense` and `LayerNorm`."""
    lead = x.shape[:-1]
    return jax.tree.map(lambda y: y.reshape(*lead, *y.shape[1:]), fn(x.reshape(-1, x.shape[-1])))


def dense_projections(x, kernels, biases, *, fused: bool = False):
    """x @ kernels[i] + biases[i] for every i; kernels [D, E], biases [E] (all arrays or all None).

    `fused` computes them as one matmul against the kernels stacked on a new axis before the output
    features, so a kernel sharded over its output features stays sharded the same way. The
    kernels are stacked at every call: the parameters keep their unfused layout. The products run
    over x's rows flattened to [rows, D], for the backward's sake (see `vtx.models.layers.Dense`).
    """
    if not fused:
        return over_rows(lambda rows: tuple(rows @ k + (0 if b is None else b)
                                            for k, b in zip(kernels, biases)), x)

    def fused_rows(rows):
        out = jnp.einsum('rd,dpe->rpe', rows, jnp.stack(kernels, 1))
        if biases[0] is not None:
            out = out + jnp.stack(biases)
        return tuple(out[:, i, :] for i in range(len(kernels)))
    return over_rows(fused_rows, x)

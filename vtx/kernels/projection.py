"""Several Dense projections of one input, optionally fused into one matmul (`fused_qkv`)."""
import jax.numpy as jnp


def dense_projections(x, kernels, biases, *, fused: bool = False):
    """x @ kernels[i] + biases[i] for every i; kernels [D, E], biases [E] (all arrays or all None).

    `fused` computes them as one matmul against the kernels stacked on a new axis before the output
    features, so a kernel sharded over its output features stays sharded the same way. The
    kernels are stacked at every call: the parameters keep their unfused layout. The products run
    over x's rows flattened to [rows, D], for the backward's sake (see `vtx.models.layers.Dense`).
    """
    lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])   # rows, as `layers.Dense` does
    if not fused:
        return tuple((x @ k + (0 if b is None else b)).reshape(*lead, -1)
                     for k, b in zip(kernels, biases))
    out = jnp.einsum('rd,dpe->rpe', x, jnp.stack(kernels, 1))
    if biases[0] is not None:
        out = out + jnp.stack(biases)
    return tuple(out[:, i, :].reshape(*lead, -1) for i in range(len(kernels)))

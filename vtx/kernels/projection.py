"""Several Dense projections of one input, optionally fused into one matmul (`fused_qkv`)."""
import jax.numpy as jnp


def dense_projections(x, kernels, biases, *, fused: bool = False):
    """x @ kernels[i] + biases[i] for every i; kernels [D, E], biases [E] (all arrays or all None).

    `fused` computes them as one matmul against the kernels stacked on a new axis before the output
    features, so a kernel sharded over its output features stays sharded the same way. The
    kernels are stacked at every call: the parameters keep their unfused layout.
    """
    if not fused:
        return tuple(jnp.einsum('...d,de->...e', x, k) + (0 if b is None else b)
                     for k, b in zip(kernels, biases))
    out = jnp.einsum('...d,dpe->...pe', x, jnp.stack(kernels, 1))
    if biases[0] is not None:
        out = out + jnp.stack(biases)
    return tuple(out[..., i, :] for i in range(len(kernels)))

"""vtx: efficient video transformers in JAX/Flax."""

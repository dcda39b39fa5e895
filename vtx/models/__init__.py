"""Models: `build_model(config.model)` instantiates the Flax module of the family
`config.model.name` names (registered in `vtx.families`).

Every family module lives in its own file; the registry imports it lazily so that a config
names a model by a short string and nothing else is loaded.
"""
import dataclasses

import jax
import jax.numpy as jnp

from vtx import families
from vtx.families import UnknownModelError
from vtx.kernels.attention import GPU_BACKENDS

# config.model.dtype -> the compute dtype. Parameters and optimizer state stay float32 (every
# layer's param_dtype), and softmax, LayerNorm statistics and the loss run in float32 whatever
# the compute dtype: see docs/accelerators.md, "Precision".
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The default policy: bfloat16 where the matrix units run it at full rate (GPU, TPU), float32 on
# CPU, where bfloat16 matmuls are emulated and parity with the official float32 models is exact.
AUTO_DTYPE = 'auto'
ACCELERATOR_BACKENDS = GPU_BACKENDS + ('tpu',)


def resolve_dtype(name: str) -> str:
    """The compute dtype name that `config.model.dtype` = `name` means on this process's backend."""
    name = str(name)
    if name == AUTO_DTYPE:
        return 'bfloat16' if jax.default_backend() in ACCELERATOR_BACKENDS else 'float32'
    if name not in COMPUTE_DTYPES:
        raise UnknownModelError(f'config.model.dtype={name!r}: use one of '
                                f'{sorted(COMPUTE_DTYPES) + [AUTO_DTYPE]}')
    return name


# Fields that choose how a model computes, not what, each at its reference setting. They never
# change what the parameters mean (`vtx.predict` ignores them when matching a checkpoint to a
# config), and MFU counts a model's work as the reference performs it (`vtx.report.model_macs`):
# no recomputation under remat, MViT's pooling as the convolution it is.
IMPLEMENTATION_FIELDS = {'dtype': 'float32', 'remat': False, 'attention_implementation': 'xla',
                         'pool_implementation': 'conv', 'fused_qkv': False, 'scan_layers': False}


def model_class(name: str):
    return families.family(name).model_class()


def build_model(model_config):
    """Instantiates the module named by `model_config.name` with the remaining fields as arguments.

    A field the module does not take is an error naming the field and the accepted ones.
    """
    kwargs = dict(model_config)
    cls = model_class(kwargs.pop('name'))
    fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise UnknownModelError(f'config.model has field(s) {unknown} that {cls.__name__} does not '
                                f'take; accepted: {sorted(fields)}')
    if 'dtype' in kwargs:
        kwargs['dtype'] = COMPUTE_DTYPES[resolve_dtype(kwargs['dtype'])]
    return cls(**kwargs)

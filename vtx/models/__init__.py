"""Models: `build_model(config.model)` instantiates the Flax module of the family
`config.model.name` names (registered in `vtx.families`).

Every family module lives in its own file; the registry imports it lazily so that a config
names a model by a short string and nothing else is loaded.
"""
import dataclasses

import jax.numpy as jnp

from vtx import families
from vtx.families import UnknownModelError

# config.model.dtype -> the compute dtype (parameters stay float32).
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

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
        if kwargs['dtype'] not in COMPUTE_DTYPES:
            raise UnknownModelError(f"config.model.dtype={kwargs['dtype']!r}: use one of {sorted(COMPUTE_DTYPES)}")
        kwargs['dtype'] = COMPUTE_DTYPES[kwargs['dtype']]
    return cls(**kwargs)

"""Device mesh and parameter placement.

The mesh has two axes: 'data' (batch, and FSDP-sharded parameters) and 'model' (tensor
parallelism on heads/MLP). Model code names its axes logically ('embed', 'heads', ...);
`LOGICAL_RULES` maps those names onto mesh axes, and `param_sharding='fsdp'` additionally
shards every large parameter over 'data' along its largest divisible dimension.
"""
import contextlib

import jax
import numpy as np
import flax.linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vtx.errors import VtxError

LOGICAL_RULES = (
    ('batch', 'data'),
    ('heads', 'model'),
    ('mlp', 'model'),
    ('embed', None),
    ('length', None),
    ('classes', None),
    ('channels', None),
    ('norm', None),
)


class MeshError(VtxError):
    pass


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A ('data', 'model') mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    model = mesh_config.model_axis_size
    if model < 1 or len(devices) % model:
        raise MeshError(f'config.mesh.model_axis_size={model} must divide the {len(devices)} devices')
    grid = mesh_utils.create_device_mesh((len(devices) // model, model), devices=devices,
                                         allow_split_physical_axes=True)
    return Mesh(grid, ('data', 'model'))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P('data', *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(boxed_params, mesh: Mesh, mesh_config, *, fsdp: bool = True):
    """NamedShardings for a tree of `nn.LogicallyPartitioned` abstract params (from eval_shape):
    where each parameter is stored. With `fsdp=False`, where it is used: the same placement
    without the FSDP split over 'data' (what `gather_params` gathers to)."""
    logical = nn.get_partition_spec(boxed_params)
    specs = nn.logical_to_mesh(logical, LOGICAL_RULES)
    shapes = nn.meta.unbox(boxed_params)
    if mesh_config.param_sharding not in ('replicated', 'fsdp'):
        raise MeshError(f"config.mesh.param_sharding={mesh_config.param_sharding!r}: use "
                        "'replicated' or 'fsdp'")
    data_size = mesh.shape['data']

    def place(spec, leaf):
        spec = tuple(spec) + (None,) * (len(leaf.shape) - len(spec))
        if (fsdp and mesh_config.param_sharding == 'fsdp' and data_size > 1
                and np.prod(leaf.shape) >= mesh_config.fsdp_min_size):
            free = [i for i, (axis, n) in enumerate(zip(spec, leaf.shape))
                    if axis is None and n % data_size == 0]
            if free:
                largest = max(free, key=lambda i: leaf.shape[i])
                spec = spec[:largest] + ('data',) + spec[largest + 1:]
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(place, specs, shapes, is_leaf=lambda x: isinstance(x, P))


def gather_params(params, gathered_shardings):
    """`params` constrained to `gathered_shardings` (None: left as they are).

    FSDP stores each parameter split over 'data', the axis that also splits the batch. Left to
    itself, XLA's SPMD partitioner may keep a weight split and gather the batch instead: FSDP
    TokShift and XViT train steps gathered the input frames and the MLP activations of the whole
    global batch on every device, and needed twice the memory of the replicated step. Constrained
    here, each weight is all-gathered where the model uses it, and its gradient reduce-scattered
    back."""
    if gathered_shardings is None:
        return params
    return jax.lax.with_sharding_constraint(params, gathered_shardings)


@contextlib.contextmanager
def constrain_activations(mesh: Mesh):
    """Within it, the models' `nn.with_logical_constraint` calls place activations on `mesh` by
    `LOGICAL_RULES` (batch over 'data', heads and MLP features over 'model'); outside, flax makes
    them no-ops. The train and eval steps trace their model under it."""
    # The abstract mesh, which (unlike `jax.set_mesh`) may be set inside a function being jitted.
    with (jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
          nn.logical_axis_rules(LOGICAL_RULES)):
        yield

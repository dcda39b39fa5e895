"""Full-size zoo entries of the ViT families (vit: TokShift and its baseline, xvit; their
parity/full/*.json named in `vtx.families`): each vtx zoo config builds, by
shape inference only, a model with the official parameter count, and converting a state dict of
exactly the official keys and shapes (placeholder values, never materialised) fills every vtx
parameter with nothing left over."""
import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_families import FULL, full_size_models
from vtx import families
from vtx.convert import engine
from vtx import config as vtx_config

FAMILIES = ('vit', 'xvit')


def test_entries_found():
    assert full_size_models(*FAMILIES), f'no parity/full folder at {FULL}'


@pytest.mark.parametrize('stem', full_size_models(*FAMILIES))
def test_zoo_config_matches_official(stem):
    from vtx import optim
    from vtx.models import build_model
    with open(os.path.join(FULL, stem + '.json')) as f:
        entry = json.load(f)
    family, zoo = families.find_in_zoo(official_model=stem)
    config = vtx_config.get(zoo.config)
    model = build_model(config.model)
    d = config.data
    abstract = engine.abstract_params_of(
        model, jnp.zeros((1, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32), train=False)
    flat = engine.flatten_params(abstract)
    # XViT checkpoints also hold `new_fc`, a classifier the official forward never uses.
    expected = entry.get('params_excluding_unused_new_fc', entry['params'])
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == expected

    state = {k: np.broadcast_to(np.float32(0.5), shape)
             for k, (shape, _) in engine.strip_module_prefix(entry['state_dict']).items()}
    table = family.converter_module().table(config.model)
    params, report = engine.convert_with_report(state, table, abstract)
    assert report.ok, report.format()
    assert not report.filled
    assert set(report.mapped) | set(report.ignored) == set(state)
    # The training recipe the config states must build an optimizer for this model.
    optim.make_optimizer(config, abstract)


def _fields(module):
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ('parent', 'name')}


@pytest.mark.parametrize('stem', full_size_models(*FAMILIES))
def test_zoo_config_is_the_official_model(stem):
    """The model a zoo config builds equals the one derived from the official config alone
    (for XViT, from the YAML `cfg` that official checkpoints carry)."""
    import yaml

    from vtx.models import build_model
    with open(os.path.join(FULL, stem + '.json')) as f:
        entry = json.load(f)
    family, zoo = families.find_in_zoo(official_model=stem)
    converter = family.converter_module()
    if family.name == 'xvit':
        official = converter.model_config_from_checkpoint(
            {'cfg': yaml.safe_dump(entry['official_config'])})
    else:
        official = converter.model_config_from_manifest(entry)
    ours = vtx_config.get(zoo.config).model
    assert _fields(build_model(ours)) == _fields(build_model(official))

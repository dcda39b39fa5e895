"""Full-size zoo entries (parity/full/{tokshift,vit,xvit}*.json): each vtx zoo config builds, by
shape inference only, a model with the official parameter count, and converting a state dict of
exactly the official keys and shapes (placeholder values, never materialised) fills every vtx
parameter with nothing left over."""
import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from vtx.convert import engine, families
from vtx import config as vtx_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.path.join(REPO, os.environ.get('VTX_PARITY_FULL', '../shared/parity/full'))

# zoo entry (json stem) -> (vtx config module, converter family)
ZOO = {
    'vit_b16_224_8f': ('vit_b16_224_8f', 'tokshift'),
    'tokshift_b16_224_8f': ('tokshift_b16_224_8f', 'tokshift'),
    'tokshift_mr_b16_256_8f': ('tokshift_mr_b16_256_8f', 'tokshift'),
    'tokshift_hr_b16_384_8f': ('tokshift_hr_b16_384_8f', 'tokshift'),
    'tokshift_b16_224_16f': ('tokshift_b16_224_16f', 'tokshift'),
    'tokshift_large_hr_l16_384_8f': ('tokshift_large_hr_l16_384_8f', 'tokshift'),
    'tokshift_large_hr_l16_384_12f': ('tokshift_large_hr_l16_384_12f', 'tokshift'),
    'xvit_b16_16_k600': ('xvit_k600', 'xvit'),
    'xvit_b16_16_ss2': ('xvit_ssv2', 'xvit'),
}


def _entries():
    if not os.path.isdir(FULL):
        return []
    return sorted(f[:-len('.json')] for f in os.listdir(FULL)
                  if f.endswith('.json') and f.startswith(('tokshift', 'vit', 'xvit')))


def test_every_entry_has_a_config():
    assert _entries(), f'no tokshift/vit/xvit entries under {FULL}'
    assert sorted(_entries()) == sorted(ZOO), 'map every parity/full entry to its config in ZOO'


@pytest.mark.parametrize('stem', _entries())
def test_zoo_config_matches_official(stem):
    from vtx import optim
    from vtx.models import build_model
    with open(os.path.join(FULL, stem + '.json')) as f:
        entry = json.load(f)
    module, family = ZOO[stem]
    config = vtx_config.get(module)
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
    table = families.converter(family).table(config.model)
    params, report = engine.convert_with_report(state, table, abstract)
    assert report.ok, report.format()
    assert not report.filled
    assert set(report.mapped) | set(report.ignored) == set(state)
    # The training recipe the config states must build an optimizer for this model.
    optim.make_optimizer(config, abstract)


def _fields(module):
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ('parent', 'name')}


@pytest.mark.parametrize('stem', _entries())
def test_zoo_config_is_the_official_model(stem):
    """The model a zoo config builds equals the one derived from the official config alone
    (for XViT, from the YAML `cfg` that official checkpoints carry)."""
    import yaml

    from vtx.models import build_model
    with open(os.path.join(FULL, stem + '.json')) as f:
        entry = json.load(f)
    module, family = ZOO[stem]
    converter = families.converter(family)
    if family == 'xvit':
        official = converter.model_config_from_checkpoint(
            {'cfg': yaml.safe_dump(entry['official_config'])})
    else:
        official = converter.model_config_from_manifest(entry)
    ours = vtx_config.get(module).model
    assert _fields(build_model(ours)) == _fields(build_model(official))

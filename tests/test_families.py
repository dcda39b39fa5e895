"""The family registry (`vtx.families`): the zoo it lists is exactly `configs/` (but the demo)
and the official models of `parity/full` (VTX_PARITY_FULL, default ../shared/parity/full), each
config in the family its model names, and what it declares about each family holds of the code it
points to."""
import importlib
import inspect
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from vtx import config as vtx_config
from vtx import families

FULL = os.path.join(REPO, os.environ.get('VTX_PARITY_FULL', '../shared/parity/full'))
NOT_ZOO = ('demo',)  # the quick-start config: a small TokShift, no official model


def full_size_models(*family_names):
    """Official names of the named families' zoo models (every family's when none is named), for
    tests over the full-size entries; none where the parity/full folder is not at hand."""
    if not os.path.isdir(FULL):
        return []
    return [e.official_model for e in families.zoo_entries(*family_names) if e.official_model]


def test_zoo_is_every_config_but_the_demo():
    registered = [e.config for e in families.zoo_entries()]
    assert len(registered) == len(set(registered)), 'a config is in more than one zoo entry'
    assert sorted(registered) == sorted(set(vtx_config.names()) - set(NOT_ZOO))


@pytest.mark.parametrize('name', sorted(families.FAMILIES))
def test_zoo_configs_build_their_family(name):
    for entry in families.family(name).zoo:
        assert vtx_config.get(entry.config).model.name == name, entry.config


def test_official_models_are_the_full_size_entries():
    if not os.path.isdir(FULL):
        pytest.skip(f'no parity/full folder at {FULL}')
    stems = sorted(f[:-len('.json')] for f in os.listdir(FULL) if f.endswith('.json'))
    official = [e.official_model for e in families.zoo_entries() if e.official_model]
    assert len(official) == len(set(official)), 'an official model is in more than one zoo entry'
    assert sorted(official) == stems


def test_find_in_zoo():
    family, entry = families.find_in_zoo('xvit_k600')
    assert (family.name, entry.official_model) == ('xvit', 'xvit_b16_16_k600')
    family, entry = families.find_in_zoo(official_model='MViT-T0_0.6-S4_0.9')
    assert (family.name, entry.config) == ('mvit', 'stts_mvit_t0_0p6_s4_0p9')
    with pytest.raises(families.NotInZooError, match='demo'):
        families.find_in_zoo('demo')


@pytest.mark.parametrize('name', sorted(families.FAMILIES))
def test_declarations_hold_of_the_code(name):
    family = families.family(name)
    call = inspect.signature(family.model_class().__call__).parameters
    assert family.takes_train_progress == ('train_progress' in call)
    assert family.returns_features == ('return_features' in call)
    converter = family.converter_module()
    assert callable(converter.model_config_from_manifest) and callable(converter.table)
    assert family.gflops_convention.counted in ('macs', 'macs_excluding_attention')
    for pretrained in family.pretrained:
        for reference in filter(None, (pretrained.function, pretrained.only_if)):
            module, attribute = reference.split(':')
            assert callable(getattr(importlib.import_module(module), attribute)), reference
    if family.unpruned_backbone is not None:
        assert families.find_in_zoo(family.unpruned_backbone)


def test_every_tag_resolves_to_its_families():
    from vtx.convert import families as converters
    for tag in families.official_tags():
        assert converters.converter(tag) is converters.converter(tag)
    assert converters.converter('tokshift') is converters.converter('vit')
    with pytest.raises(converters.NoConverterError, match='stts'):
        converters.converter('slowfast')


def test_unknown_model_name_lists_the_families():
    with pytest.raises(families.UnknownModelError, match='stts_video_swin'):
        families.family('swin')


def test_registry_import_is_cheap():
    """Importing the registry loads no framework: it names every module and function by string and
    imports it only when asked for."""
    code = ('import sys, vtx.families; '
            'print(sorted(m for m in ("jax", "torch", "tensorflow", "flax") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == '[]'

"""Official family tags -> converters, and the one conversion entry point.

A tag is a parity manifest's `family` (also `vtx-convert --family`); the families answering each
tag, and their converter modules, are registered in `vtx.families`. A converter module
(`vtx/convert/<x>.py`) provides:
  - `model_config_from_manifest(manifest: dict) -> dict`: the vtx `config.model` (with `name`) for
    the official config a parity manifest (or a `parity/full/*.json`) records;
  - `table(model_config) -> engine.ConversionTable`, or, where a table is not enough,
    `convert_checkpoint(path, model_config, abstract_params, log) -> params`;
  - optionally `example_input_shape(model_config) -> (1, T, S, S, 3)` (lets the CLI run without a
    vtx config) and `model_config_from_checkpoint(extras) -> dict | None` (for checkpoints that
    carry their official config, e.g. SlowFast's YAML `cfg`).
"""
import functools

from vtx import families as registry
from vtx.convert import engine


class NoConverterError(LookupError):
    pass


class SharedTag:
    """The converter of a tag several families answer to (STTS releases its MViT and its Video
    Swin models under 'stts'): a manifest goes to the family whose official config it records, a
    model config to the family it names."""

    def __init__(self, tag: str, families):
        self.tag, self.families = tag, families

    def _recording(self, manifest: dict):
        for family in self.families:
            if family.records_official_config is None or family.records_official_config(manifest):
                return family.converter_module()
        raise NoConverterError(f'no family of official family {self.tag!r} '
                               f'({[f.name for f in self.families]}) recognises the manifest\'s '
                               'official config')

    def _named(self, model_config):
        name = dict(model_config)['name']
        for family in self.families:
            if family.name == name:
                return family.converter_module()
        raise NoConverterError(f'official family {self.tag!r} converts model names '
                               f'{[f.name for f in self.families]}, not {name!r}')

    def model_config_from_manifest(self, manifest: dict) -> dict:
        return self._recording(manifest).model_config_from_manifest(manifest)

    def table(self, model_config):
        return self._named(model_config).table(model_config)

    def example_input_shape(self, model_config) -> tuple:
        return self._named(model_config).example_input_shape(model_config)


# One object per tag, so that what is patched on a converter is what every caller sees.
@functools.cache
def converter(tag: str):
    answering = tuple(f for f in registry.FAMILIES.values() if tag in f.official_tags)
    if not answering:
        raise NoConverterError(f'no converter is registered for family {tag!r}; known: '
                               f'{list(registry.official_tags())} (vtx/families.py)')
    return answering[0].converter_module() if len(answering) == 1 else SharedTag(tag, answering)


def convert_checkpoint(family: str, path: str, model_config, abstract_params, log=print):
    """Params for `abstract_params` from the official checkpoint `path` (strict, see engine)."""
    module = converter(family)
    if hasattr(module, 'convert_checkpoint'):
        return module.convert_checkpoint(path, model_config, abstract_params, log=log)
    return engine.convert(engine.load_checkpoint(path), module.table(model_config), abstract_params,
                          log=log)


def example_input_shape(family: str, model_config, data_config=None) -> tuple:
    """A [1, T, S, S, 3] video the model accepts, for shape inference: from `config.data` when
    given, else from the family's `example_input_shape(model_config)`."""
    if data_config is not None:
        return (1, data_config.num_frames, data_config.crop_size, data_config.crop_size, 3)
    module = converter(family)
    if not hasattr(module, 'example_input_shape'):
        raise NoConverterError(f'family {family!r} cannot infer an input shape from the official '
                               'config alone; pass a vtx --config')
    return module.example_input_shape(model_config)

"""Which converter module handles which official family, and the one conversion entry point.

A converter module (`convert/<family>.py`) provides:
  - `model_config_from_manifest(manifest: dict) -> dict`: the vtx `config.model` (with `name`) for
    the official config a parity manifest (or a `parity/full/*.json`) records;
  - `table(model_config) -> engine.ConversionTable`, or, where a table is not enough,
    `convert_checkpoint(path, model_config, abstract_params, log) -> params`;
  - optionally `example_input_shape(model_config) -> (1, T, S, S, 3)` (lets the CLI run without a
    vtx config) and `model_config_from_checkpoint(extras) -> dict | None` (for checkpoints that
    carry their official config, e.g. SlowFast's YAML `cfg`).
Keys are the `family` field of the parity manifests; several families may share a module.
"""
import importlib

from vtx.convert import engine

CONVERTERS = {
    'tokshift': 'vtx.convert.tokshift',     # TokShift and its plain video-ViT baseline
    'vit': 'vtx.convert.tokshift',
    'xvit': 'vtx.convert.xvit',
    'video_swin': 'vtx.convert.video_swin',
    'tps': 'vtx.convert.tps',
    'stts': 'vtx.convert.stts',             # STTS on MViT and on Video Swin
    'mvit': 'vtx.convert.stts',
}


class NoConverterError(LookupError):
    pass


def converter(family: str):
    if family not in CONVERTERS:
        raise NoConverterError(f'no converter is registered for family {family!r}; known: '
                               f'{sorted(CONVERTERS)} (convert/families.py)')
    try:
        return importlib.import_module(CONVERTERS[family])
    except ModuleNotFoundError as e:
        if e.name != CONVERTERS[family]:
            raise
        raise NoConverterError(f'family {family!r}: converter module {CONVERTERS[family]} does not '
                               'exist yet') from e


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

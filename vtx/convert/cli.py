"""Command line: convert an official checkpoint into a vtx params checkpoint.

    vtx-convert --family F --checkpoint FILE --config NAME|FILE [--config.a.b=v] --out DIR
    vtx-convert --family F --checkpoint FILE --official_config MANIFEST.json --out DIR
    vtx-convert --family xvit --checkpoint xvit_b16_16_k600.pth --out DIR

(also `python -m vtx.convert`).

The model is `config.model` of a vtx config (input shape from `config.data`), or the one the
official config recorded in a parity manifest / `parity/full/*.json` describes, or, for checkpoints
that carry their official config (SlowFast `cfg`), the one that config describes. The result loads
with `vtx-train --config ... --config.init_from=DIR`. The conversion is strict: the
report is printed and any unexplained or missing tensor fails without writing anything.
"""
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from vtx import cli

FLAGS = flags.FLAGS


def define_flags():
    from vtx import families as registry
    flags.DEFINE_string('family', None, 'Official family of the checkpoint, one of '
                        f'{", ".join(registry.official_tags())} (vtx/families.py).')
    flags.DEFINE_string('checkpoint', None, 'Official checkpoint file (.pth/.pyth/.npz).')
    flags.DEFINE_string('out', None, 'New folder for the vtx params checkpoint.')
    flags.DEFINE_string('official_config', None,
                        'JSON with the official config (parity manifest or parity/full/*.json), used '
                        'instead of --config.')
    config_flags.DEFINE_config_file('config', None, 'The vtx config (zoo name or file) whose model the weights are for.')
    flags.mark_flags_as_required(['family', 'checkpoint', 'out'])


def _model_config():
    """(config.model as a dict, config.data or None) from whichever source the flags name."""
    from vtx.convert import engine, families
    if FLAGS.config is not None:
        return FLAGS.config.model.to_dict(), FLAGS.config.data
    module = families.converter(FLAGS.family)
    if FLAGS.official_config is not None:
        with open(FLAGS.official_config) as f:
            return module.model_config_from_manifest(json.load(f)), None
    extras = engine.read_checkpoint(FLAGS.checkpoint).extras
    config = (module.model_config_from_checkpoint(extras)
              if hasattr(module, 'model_config_from_checkpoint') else None)
    if config is None:
        raise families.NoConverterError(
            f'{FLAGS.checkpoint} carries no official config the {FLAGS.family!r} converter reads; '
            'pass --config (a vtx config) or --official_config')
    return config, None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if FLAGS.config is not None and FLAGS.official_config is not None:
        raise app.UsageError('give at most one of --config and --official_config')
    logging.set_verbosity(logging.WARNING)
    import jax.numpy as jnp

    from vtx.convert import engine, families
    from vtx import checkpoint
    from vtx.models import build_model

    try:
        model_config, data_config = _model_config()
        model = build_model(model_config)
        shape = families.example_input_shape(FLAGS.family, model_config, data_config)
        abstract = engine.abstract_params_of(model, jnp.zeros(shape, jnp.float32), train=False)
        params = families.convert_checkpoint(FLAGS.family, FLAGS.checkpoint, model_config, abstract)
        checkpoint.save_params(FLAGS.out, params, model_config,
                               source=os.path.abspath(FLAGS.checkpoint), family=FLAGS.family)
    except engine.ConversionError:
        cli.fail('the checkpoint does not map onto the model (report above)')
    except (engine.CheckpointFormatError, ValueError, families.NoConverterError,
            checkpoint.CheckpointError, FileNotFoundError) as e:
        cli.fail(e)
    print(f'wrote {FLAGS.out}')


def run():
    cli.run(main, 'vtx-convert', define_flags)

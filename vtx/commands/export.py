r"""Command line: write a trained or converted model as a self-contained serving artefact.

    vtx-export --config NAME|FILE --checkpoint DIR --format stablehlo|savedmodel \
        --out PATH [--config.a.b=v ...] [--platforms cpu,cuda,tpu] [--output logits|features]

(also `python -m vtx.export`). The artefact maps a batch of clips, float32 [B, T, H, W, 3]
(B symbolic, T = data.num_frames, H = W = data.crop_size, RGB, normalised as the config's eval
pipeline does), to logits float32 [B, K], or with `--output features` to the classifier's input
features float32 [B, D] (`vtx.steps.eval_features`); the params are inside it. Multi-view
testing (clips x crops, then averaging logits or probabilities) is left to the caller;
`serving.json` next to the model records the input shape, normalisation, test protocol and
class names it needs.

- stablehlo: PATH/model.jax_exported, a `jax.export` serialization (StableHLO plus calling
  convention) lowered for each of --platforms; reload with `vtx.export.load_stablehlo(PATH)`.
- savedmodel: PATH is a TF SavedModel (`jax2tf`, the StableHLO inside an XlaCallModule op; the
  params are tf.Variables) with signature 'serving_default': video -> logits.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from vtx import cli
from vtx import config as vtx_config
from vtx.errors import VtxError


def define_flags():
    """The command line's flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file('config', None, 'A zoo config name or a config file.',
                                    lock_config=True)
    flags.DEFINE_string('checkpoint', None, 'Params checkpoint folder or training workdir.')
    flags.DEFINE_string('format', 'stablehlo', 'Artefact format: stablehlo or savedmodel.')
    flags.DEFINE_string('out', None, 'New folder for the artefact.')
    flags.DEFINE_list('platforms', None, 'Platforms to lower for (cpu, cuda, rocm, tpu); '
                      'default: the one JAX runs on here. A SavedModel served by TensorFlow on '
                      'CPU needs cpu.')
    flags.DEFINE_string('labels', None, 'Class names, one per line, stored in serving.json.')
    flags.DEFINE_string('output', 'logits', 'What the artefact returns: logits, or '
                        "features (the classifier's input, the videos' embeddings).")
    flags.mark_flags_as_required(['config', 'checkpoint', 'out'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about metadata a workdir never has
    from vtx import export, predict   # JAX: only once the command line has parsed
    try:
        labels = predict.read_label_names(FLAGS.labels) if FLAGS.labels else None
        path = export.export(vtx_config.prepare(FLAGS.config), FLAGS.checkpoint, FLAGS.format,
                             FLAGS.out, FLAGS.platforms, labels, FLAGS.output)
    except VtxError as e:
        cli.fail(e)
    print(f'wrote {path}')


def run():
    cli.run(main, 'vtx-export', define_flags)


if __name__ == '__main__':
    run()

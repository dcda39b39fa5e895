r"""Command line: classify video files, or write their embeddings, with a zoo, converted or
trained model.

    vtx-predict --model NAME [--config.a.b=v ...] VIDEO [VIDEO ...]
    vtx-predict --config NAME|FILE --checkpoint DIR [--config.a.b=v ...] \
        [--labels names.txt] [--top_k 5] [--json] [--batch_size N] [--features OUT.npz] VIDEO ...

NAME is a zoo model (`vtx-zoo list`: downloaded and converted on first use, then cached; where
the official host needs a browser, give the downloaded file once with `--checkpoint FILE`). DIR
is a params checkpoint (`vtx-convert`, or any `checkpoint.save_params` folder) or a training
workdir (the params of its newest checkpoint). Also `python -m vtx.predict`. Each video is turned into the record a
shard builder would write for it (decoded with PyAV, resampled to `data.shard_fps` if set, short
side scaled to `data.shard_short_side`, JPEG-encoded at `data.shard_qscale`) and that record goes
through the eval pipeline's view construction: the config's clips x crops, sampling, resize, crop
and normalisation, bit for bit as `vtx-train --mode=eval` on shards. The views' logits are
aggregated as `data.eval_aggregation` says and reported as class probabilities. With
`--features OUT.npz`, the classifier's input averaged over the views is written instead
(`features` [N, D] and `videos`, the files in the same order).

Exit status: 0, or 1 when a video could not be decoded (the others are still classified), or 2
for a bad config, checkpoint or label file.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vtx import cli, xla_flags
from vtx import config as vtx_config
from vtx.errors import VtxError


def _print_text(results, out=sys.stdout):
    for r in results:
        print(r['video'], file=out)
        for t in r['top_k']:
            name = f"  {t['label']}" if 'label' in t else ''
            print(f"  {t['score']:.4f}  class {t['class']}{name}", file=out)


def define_flags():
    """The command line's flags (defined only when run as a program, so importing this module
    leaves absl's global flags alone)."""
    config_flags.DEFINE_config_file('config', None, 'A zoo config name or a config file '
                                    '(default with --model: the zoo model\'s).', lock_config=True)
    flags.DEFINE_string('model', None, 'A zoo model name (vtx-zoo list).')
    flags.DEFINE_string('checkpoint', None, 'Params checkpoint folder or training workdir; with '
                        '--model, the official checkpoint file of a model whose host needs a '
                        'browser.')
    flags.DEFINE_string('labels', None, 'Class names, one per line in index order (default: '
                        'label_names stored in the checkpoint, if any).')
    flags.DEFINE_string('features', None, 'Write the videos\' embeddings to this .npz instead '
                        'of classifying them.')
    flags.DEFINE_integer('top_k', 5, 'How many classes to report per video.', lower_bound=1)
    flags.DEFINE_bool('json', False, 'Print one JSON document instead of text.')
    flags.DEFINE_integer('batch_size', 0, 'Videos per model call (each has clips x crops '
                         'views); 0: config.train.eval_batch_size.', lower_bound=0)
    flags.DEFINE_string('explain', None, 'Also write OUT_DIR/<video>.png per video: its frames '
                        'with what the model used (docs/explain.md) and the top-k classes.')
    flags.DEFINE_bool('explain_gif', False, 'With --explain, also write an animated <video>.gif.')


def main(argv):
    FLAGS = flags.FLAGS
    from vtx import predict   # JAX, Flax and orbax: only once the command line has parsed
    logging.set_verbosity(logging.ERROR)  # orbax warns about metadata a workdir never has
    xla_flags.enable_compilation_cache()
    videos = argv[1:]
    if not videos:
        raise app.UsageError('give one or more video files to classify')
    if not FLAGS.model and not (FLAGS.config and FLAGS.checkpoint):
        raise app.UsageError('give --model NAME, or --config and --checkpoint')
    config = FLAGS.config
    try:
        labels = predict.read_label_names(FLAGS.labels) if FLAGS.labels else None
        if FLAGS.model:
            from vtx import pretrained
            predictor = pretrained.load(FLAGS.model, config=config, checkpoint=FLAGS.checkpoint,
                                        label_names=labels)
        else:
            predictor = predict.Predictor(vtx_config.prepare(config), FLAGS.checkpoint, labels)
        batch_size = FLAGS.batch_size or predictor.config.train.eval_batch_size
        if FLAGS.features:
            failures = predict.write_features(predictor, videos, FLAGS.features, batch_size)
        else:
            results, failures = predict.predict_videos(predictor, videos, FLAGS.top_k, batch_size)
            if FLAGS.explain:
                from vtx import explain
                for path in explain.write_explanations(predictor, [r['video'] for r in results],
                                                       FLAGS.explain, FLAGS.top_k, FLAGS.explain_gif):
                    print(f'wrote {path}', file=sys.stderr)  # stdout stays the predictions
    except VtxError as e:
        cli.fail(e)
    for f in failures:
        print(f"vtx-predict: skipped: {f['error']}", file=sys.stderr)
    if FLAGS.features:
        print(f'wrote {FLAGS.features}')
    elif FLAGS.json:
        print(json.dumps({'predictions': results, 'failed': failures}, indent=1))
    else:
        _print_text(results)
    sys.exit(1 if failures else 0)


def run():
    cli.run(main, 'vtx-predict', define_flags)


if __name__ == '__main__':
    run()

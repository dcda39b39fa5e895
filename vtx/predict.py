"""Command line: classify video files with a trained or converted model.

    python -m vtx.predict --config configs/X.py --checkpoint DIR [--config.a.b=v ...] \
        [--labels names.txt] [--top_k 5] [--json] [--batch_size N] VIDEO [VIDEO ...]

DIR is a params checkpoint (`python -m convert`, or any `checkpoint.save_params` folder) or a
training workdir (the params of its newest checkpoint). Each video is turned into the record a
shard builder would write for it (decoded with PyAV, resampled to `data.shard_fps` if set, short
side scaled to `data.shard_short_side`, JPEG-encoded at `data.shard_qscale`) and that record goes
through the eval pipeline's view construction: the config's clips x crops, sampling, resize, crop
and normalisation, bit for bit as `vtx.main --mode=eval` on shards. The views' logits are
aggregated as `data.eval_aggregation` says and reported as class probabilities.

Exit status: 0, or 1 when a video could not be decoded (the others are still classified), or 2
for a bad config, checkpoint or label file.
"""
import dataclasses
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vtx import checkpoint, cli  # noqa: E402
from vtx.errors import VtxError  # noqa: E402
from vtx.models import IMPLEMENTATION_FIELDS, build_model, model_class  # noqa: E402

def shard_settings(data_config):
    """(fps or None for the native rate, short side, JPEG qscale) of the config's shards."""
    return (float(data_config.shard_fps) or None), int(data_config.shard_short_side), int(
        data_config.shard_qscale)


def video_views(path: str, data_config) -> np.ndarray:
    """One video file -> its eval views, float32 [V, T, c, c, 3]. Raises
    `video_io.DecodeError` (naming the file) when the video cannot be read."""
    from vtx.data import video_io
    from vtx.data import pipeline  # loads TF, which only feeds the host
    fps, short_side, qscale = shard_settings(data_config)
    frames = video_io.decode_video(path, fps=fps)
    jpegs = video_io.JpegEncoder(qscale).encode(frames, short_side)
    return pipeline.video_eval_views(jpegs, data_config)


def model_differences(stored: Optional[dict], configured: dict) -> List[str]:
    """Fields where the model a checkpoint was made for differs from config.model, each side
    completed with the family's defaults. Dropout rates and how the model computes
    (`IMPLEMENTATION_FIELDS`: dtype, attention kernel, remat, ...) do not change what the params
    mean and are not compared."""
    if not stored:
        return []
    if stored.get('name') != configured.get('name'):
        return [f"name: checkpoint {stored.get('name')!r}, config {configured.get('name')!r}"]
    defaults = {f.name: f.default for f in dataclasses.fields(model_class(configured['name']))
                if f.default is not dataclasses.MISSING}
    out = []
    for key in sorted(set(stored) | set(configured)):
        if 'drop' in key or key in IMPLEMENTATION_FIELDS:
            continue
        a, b = stored.get(key, defaults.get(key)), configured.get(key, defaults.get(key))
        if json.dumps(a, default=str) != json.dumps(b, default=str):
            out.append(f'{key}: checkpoint {a!r}, config {b!r}')
    return out


def read_label_names(path: str) -> List[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise VtxError(f'--labels {path}: {e.strerror}') from None


class Predictor:
    """A model with its params, the config's test protocol, and optional class names."""

    def __init__(self, config, checkpoint_dir: str, label_names: Optional[Sequence[str]] = None,
                 warn=lambda message: print(f'vtx.predict: warning: {message}', file=sys.stderr)):
        from vtx import train
        self.config = config
        self.model = build_model(config.model)
        abstract = nn.meta.unbox(train.abstract_variables(self.model, config)['params'])
        self.params, meta = checkpoint.load_any_params(checkpoint_dir, abstract)
        self.params = jax.device_put(self.params)
        differences = model_differences(meta.get('model'), config.model.to_dict())
        if differences:
            warn(f'{checkpoint_dir} was made for another config.model ({"; ".join(differences)})')
        names = list(label_names) if label_names else meta.get('label_names')
        k = config.data.num_classes
        if names is not None and len(names) != k:
            raise VtxError(f'{len(names)} label names for config.data.num_classes={k} classes; '
                           'give one name per class, in index order')
        if config.model.get('num_classes', k) != k:
            raise VtxError(f'config.model.num_classes={config.model.num_classes} differs from '
                           f'config.data.num_classes={k}')
        self.label_names = names
        self.aggregation = config.data.eval_aggregation
        self._logits = jax.jit(lambda p, x: self.model.apply({'params': p}, x, train=False))

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """Per-clip logits [N, K] of clips [N, T, c, c, 3] (normalised as the config says)."""
        return np.asarray(self._logits(self.params, jnp.asarray(clips, jnp.float32)), np.float32)

    def probabilities(self, views: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """Class probabilities [B, K] of videos given as views [V, T, c, c, 3] each, run
        `batch_size` videos at a time (a short batch is padded, so one shape compiles)."""
        from vtx import train
        out = []
        for start in range(0, len(views), batch_size):
            chunk = np.stack(views[start:start + batch_size])
            real = len(chunk)
            chunk = np.pad(chunk, [(0, batch_size - real)] + [(0, 0)] * (chunk.ndim - 1))
            b, v = chunk.shape[:2]
            logits = self.logits(chunk.reshape(b * v, *chunk.shape[2:])).reshape(b, v, -1)
            scores = train.aggregate_views(logits[:real], self.aggregation)
            out.append(np.asarray(scores if self.aggregation == 'probs'
                                  else jax.nn.softmax(scores, -1)))
        return np.concatenate(out)

    def top_k(self, probs: np.ndarray, k: int) -> List[Dict]:
        order = np.argsort(-probs, kind='stable')[:k]
        return [{'class': int(i), 'score': float(probs[i]),
                 **({'label': self.label_names[i]} if self.label_names else {})} for i in order]


def predict_videos(predictor: Predictor, paths: Sequence[str], top_k: int = 5,
                   batch_size: int = 8):
    """-> (results [{'video', 'top_k'}], failures [{'video', 'error'}]); decoding failures are
    collected, batches of `batch_size` decoded videos run as they fill."""
    from vtx.data import video_io
    batch_size = max(1, min(batch_size, len(paths)))  # few videos: no padding to a full batch
    results, failures, pending = [], [], []

    def flush():
        if pending:
            probs = predictor.probabilities([v for _, v in pending], batch_size)
            results.extend({'video': p, 'top_k': predictor.top_k(row, top_k)}
                           for (p, _), row in zip(pending, probs))
            pending.clear()

    for path in paths:
        try:
            pending.append((path, video_views(path, predictor.config.data)))
        except video_io.DecodeError as e:
            failures.append({'video': path, 'error': str(e)})
        except Exception as e:  # a decoder or codec failure skips this video, not the run
            failures.append({'video': path, 'error': f'{path}: {type(e).__name__}: {e}'})
        if len(pending) == batch_size:
            flush()
    flush()
    return results, failures


def _print_text(results, out=sys.stdout):
    for r in results:
        print(r['video'], file=out)
        for t in r['top_k']:
            name = f"  {t['label']}" if 'label' in t else ''
            print(f"  {t['score']:.4f}  class {t['class']}{name}", file=out)


def define_flags():
    """The command line's flags (defined only when run as a program, so importing this module
    leaves absl's global flags alone)."""
    config_flags.DEFINE_config_file('config', None, 'A zoo config name or a config file.',
                                    lock_config=True)
    flags.DEFINE_string('checkpoint', None, 'Params checkpoint folder or training workdir.')
    flags.DEFINE_string('labels', None, 'Class names, one per line in index order (default: '
                        'label_names stored in the checkpoint, if any).')
    flags.DEFINE_integer('top_k', 5, 'How many classes to report per video.')
    flags.DEFINE_bool('json', False, 'Print one JSON document instead of text.')
    flags.DEFINE_integer('batch_size', 0, 'Videos per model call (each has clips x crops '
                         'views); 0: config.train.eval_batch_size.')
    flags.mark_flags_as_required(['config', 'checkpoint'])


def main(argv):
    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about metadata a workdir never has
    videos = argv[1:]
    if not videos:
        raise app.UsageError('give one or more video files to classify')
    config = FLAGS.config
    try:
        labels = read_label_names(FLAGS.labels) if FLAGS.labels else None
        predictor = Predictor(config, FLAGS.checkpoint, labels)
        batch_size = FLAGS.batch_size or config.train.eval_batch_size
        results, failures = predict_videos(predictor, videos, FLAGS.top_k, batch_size)
    except VtxError as e:
        cli.fail(e)
    for f in failures:
        print(f"vtx-predict: skipped: {f['error']}", file=sys.stderr)
    if FLAGS.json:
        print(json.dumps({'predictions': results, 'failed': failures}, indent=1))
    else:
        _print_text(results)
    sys.exit(1 if failures else 0)


def run():
    cli.run(main, 'vtx-predict', define_flags)


if __name__ == '__main__':
    run()

"""Classifying videos, or embedding them, with a model and its checkpoint under the config's test
protocol: `Predictor` (what `vtx.load` returns), `video_views`, `predict_videos` and `write_features`.
The command line `vtx-predict` (`vtx.commands.predict`) runs them.
"""
import functools
import os
import sys
from typing import Dict, List, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vtx import checkpoint, steps  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.errors import VtxError  # noqa: E402
from vtx.models import build_model  # noqa: E402


def shard_settings(data_config):
    """(fps or None for the native rate, short side, JPEG qscale) of the config's shards."""
    return (float(data_config.shard_fps) or None), int(data_config.shard_short_side), int(
        data_config.shard_qscale)


def video_views(video, data_config) -> np.ndarray:
    """One video -> its eval views, float32 [V, T, c, c, 3]. `video` is a file (raises
    `video_io.DecodeError` naming it when it cannot be read) or decoded RGB frames, uint8
    [T, H, W, 3] at the rate the config's shards were built at."""
    from vtx.data import protocols, video_io
    if protocols.protocol_name(data_config) != protocols.DMVR:  # the paper's test pipeline
        from vtx.data import video_sources
        s = protocols.settings(data_config)
        video = (video_sources.open_video(video, s.protocol) if isinstance(video, str) else
                 video_sources.ArrayVideo(_checked_frames(video)))
        return protocols.video_views(video, s)[1]
    from vtx.data import pipeline  # loads TF, which only feeds the host
    fps, short_side, qscale = shard_settings(data_config)
    if isinstance(video, str):
        frames = video_io.decode_video(video, fps=fps)
    else:
        frames = video_io.frames_from_array(_checked_frames(video))
    jpegs = video_io.JpegEncoder(qscale).encode(frames, short_side)
    return pipeline.video_eval_views(jpegs, data_config)


def _checked_frames(video) -> np.ndarray:
    array = np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or not len(array):
        raise VtxError(f'a video given as an array must be uint8 frames [T, H, W, 3], got '
                       f'{array.dtype} {array.shape}')
    return array


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
        self.config = config
        self.model = build_model(config.model)
        abstract = nn.meta.unbox(steps.abstract_variables(self.model, config)['params'])
        self.params, meta = checkpoint.load_any_params(checkpoint_dir, abstract)
        self.params = jax.device_put(self.params)
        differences = checkpoint.model_differences(meta.get('model'), config.model.to_dict())
        if differences:
            warn(f'{checkpoint_dir} was made for another config.model ({"; ".join(differences)})')
        names = (list(label_names) if label_names else
                 meta.get('label_names') or vtx_config.dataset_label_names(config))
        k = config.data.num_classes
        if names is not None and len(names) != k:
            raise VtxError(f'{len(names)} label names for config.data.num_classes={k} classes; '
                           'give one name per class, in index order')
        if config.model.get('num_classes', k) != k:
            raise VtxError(f'config.model.num_classes={config.model.num_classes} differs from '
                           f'config.data.num_classes={k}')
        self.label_names = names
        self.aggregation = config.data.eval_aggregation
        self._logits = steps.make_forward(self.model)
        self._features = steps.jit_forward(functools.partial(steps.eval_features, self.model))

    @property
    def class_names(self) -> Optional[List[str]]:
        return self.label_names

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """Per-clip logits [N, K] of clips [N, T, c, c, 3] (normalised as the config says)."""
        return np.asarray(self._logits(self.params, jnp.asarray(clips, jnp.float32)), np.float32)

    apply = logits  # the raw model: prepared clips in, logits out

    def predict(self, videos: Sequence, top_k: int = 5, batch_size: int = 0) -> List[Dict]:
        """Top-k classes of each video (a file or uint8 frames [T, H, W, 3]) under the config's
        test protocol, exactly as `vtx-predict`: [{'video', 'top_k': [{'class', 'score',
        'label'}]}] in input order; a video that cannot be decoded gets {'video', 'error'}
        instead and the others still run."""
        results, failures = predict_videos(self, videos, top_k,
                                           batch_size or self.config.train.eval_batch_size)
        by_video = {id(r['video']): r for r in results + failures}
        return [by_video[id(v)] for v in videos]

    def embed(self, videos: Sequence, batch_size: int = 0) -> np.ndarray:
        """One feature vector per video (a file or uint8 frames [T, H, W, 3]): the classifier's
        input (`steps.eval_features`) averaged over the config's views, float32 [N, D]. A video
        that cannot be decoded is an error naming it."""
        batch_size = max(1, min(batch_size or self.config.train.eval_batch_size, len(videos)))
        failures, out = [], []
        for batch in decoded_batches(videos, self.config.data, batch_size, failures):
            out.append(self.view_features([v for _, v in batch], batch_size))
        if failures:
            raise VtxError('; '.join(f['error'] for f in failures))
        return np.concatenate(out)

    def explain(self, videos: Sequence, top_k: int = 5) -> List:
        """What the model used for each video (a file or uint8 frames [T, H, W, 3]), as
        `vtx.explain.Explanation`s (frames, overlay, top-k; `.save_png(path)`)."""
        from vtx import explain
        return explain.explain(self, videos, top_k)

    def _batched(self, fn, views: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """fn(params, clips) on videos given as views [V, T, c, c, 3] each, `batch_size` videos
        a call (a short batch is padded, so one shape compiles) -> [B, V, ...]."""
        out = []
        for start in range(0, len(views), batch_size):
            chunk = np.stack(views[start:start + batch_size])
            real = len(chunk)
            chunk = np.pad(chunk, [(0, batch_size - real)] + [(0, 0)] * (chunk.ndim - 1))
            b, v = chunk.shape[:2]
            y = np.asarray(fn(self.params, jnp.asarray(chunk.reshape(b * v, *chunk.shape[2:]),
                                                       jnp.float32)), np.float32)
            out.append(y.reshape(b, v, *y.shape[1:])[:real])
        return np.concatenate(out)

    def view_features(self, views: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """Feature vectors [B, D] of videos given as views, averaged over the views."""
        return self._batched(self._features, views, batch_size).mean(1)

    def probabilities(self, views: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """Class probabilities [B, K] of videos given as views [V, T, c, c, 3] each, the views'
        logits aggregated as the config's test protocol says."""
        scores = steps.aggregate_views(self._batched(self._logits, views, batch_size),
                                       self.aggregation)
        return np.asarray(scores if self.aggregation == 'probs' else jax.nn.softmax(scores, -1))

    def top_k(self, probs: np.ndarray, k: int) -> List[Dict]:
        order = np.argsort(-probs, kind='stable')[:k]
        return [{'class': int(i), 'score': float(probs[i]),
                 **({'label': self.label_names[i]} if self.label_names else {})} for i in order]


def decoded_batches(videos: Sequence, data_config, batch_size: int, failures: List[Dict]):
    """Batches of up to `batch_size` (video, views) pairs, in order, as the videos decode; a video
    that cannot be decoded is appended to `failures` as {'video', 'error'} and skipped."""
    from vtx.data import video_io
    pending = []
    for video in videos:
        name = video if isinstance(video, str) else f'array {np.shape(video)}'
        try:
            pending.append((video, video_views(video, data_config)))
        except video_io.DecodeError as e:
            failures.append({'video': video, 'error': str(e)})
        except VtxError as e:
            failures.append({'video': video, 'error': f'{name}: {e}'})
        except Exception as e:  # a decoder or codec failure skips this video, not the run
            failures.append({'video': video, 'error': f'{name}: {type(e).__name__}: {e}'})
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def predict_videos(predictor: Predictor, paths: Sequence, top_k: int = 5, batch_size: int = 8):
    """-> (results [{'video', 'top_k'}], failures [{'video', 'error'}]); decoding failures are
    collected, batches of `batch_size` decoded videos run as they fill."""
    batch_size = max(1, min(batch_size, len(paths)))  # few videos: no padding to a full batch
    results, failures = [], []
    for batch in decoded_batches(paths, predictor.config.data, batch_size, failures):
        probs = predictor.probabilities([v for _, v in batch], batch_size)
        results.extend({'video': p, 'top_k': predictor.top_k(row, top_k)}
                       for (p, _), row in zip(batch, probs))
    return results, failures


def write_features(predictor: Predictor, paths: Sequence[str], out: str, batch_size: int):
    """Writes the embeddings of the videos that decode to `out` (.npz: `features` [N, D],
    `videos` [N]); returns the failures."""
    batch_size = max(1, min(batch_size, len(paths)))
    failures, names, features = [], [], []
    for batch in decoded_batches(paths, predictor.config.data, batch_size, failures):
        names += [p for p, _ in batch]
        features.append(predictor.view_features([v for _, v in batch], batch_size))
    if not features:
        raise VtxError('no video could be decoded; nothing written')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, features=np.concatenate(features), videos=np.array(names))
    return failures


if __name__ == '__main__':   # `python -m vtx.predict` is the vtx-predict command
    from vtx.commands import predict as command
    command.run()

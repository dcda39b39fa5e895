"""Eval batches under an official test protocol, decoded in parallel worker processes.

The videos come from `config.data.eval_videos` (a CSV of `path,label[,num_frames]`: video files,
XViT `.h5` files, TokShift frame folders) or from `config.data.eval_shards`. Shards serve a
protocol exactly when they hold what its official loader reads: the video file itself
(`vtx-shards-from-* --keep_video`) or the official JPEG frames unchanged (frame folders with
`--short_side 0`, `.h5` files with `--keep_video`); ordinary shards (frames re-encoded at build
time) still get the protocol's sampling, resizing, crops and normalisation, on their frames.

Workers are spawned processes running `vtx.data.protocols` (numpy, Pillow, decord, PyAV: no TF,
no JAX); the main process only reads the list or the records and batches the views in order.
"""
import functools
import logging
import multiprocessing
import os
from typing import Iterator, List

import numpy as np

from vtx.data import protocols, video_sources
from vtx.data.shards import VIDEO_KEY
from vtx.errors import VtxError

log = logging.getLogger(__name__)



def _csv_items(path: str):
    for source, label, count in video_sources.read_list_rows(path):
        yield {'name': source, 'path': source, 'label': label, 'num_frames': count}


def _record_items(patterns: str, field: str):
    """Records of the eval shards as work items: the stored video file or the stored frames."""
    from vtx.data.tf_on_host import tf

    from vtx.data import dmvr, pipeline
    for path in pipeline.resolve_shards(patterns, field):
        for number, serialized in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            example = tf.train.SequenceExample.FromString(serialized)
            context = example.context.feature
            labels = context[dmvr.LABEL_INDEX_KEY].int64_list.value
            if len(labels) != 1:
                raise VtxError(f'{path}: record {number}: expected one {dmvr.LABEL_INDEX_KEY}, '
                               f'found {len(labels)}')
            item = {'name': f'{path}:{number}', 'label': int(labels[0])}
            if context[VIDEO_KEY].bytes_list.value:
                item['video'] = context[VIDEO_KEY].bytes_list.value[0]
            else:
                steps = example.feature_lists.feature_list[dmvr.IMAGE_KEY].feature
                item['jpegs'] = [b for f in steps for b in f.bytes_list.value] or list(
                    context[dmvr.IMAGE_KEY].bytes_list.value)
            yield item


def _video(item: dict, protocol: str):
    if 'path' in item:
        return video_sources.open_video(item['path'], protocol, item['num_frames'])
    if 'video' in item:
        return video_sources.encoded_video(item['video'], protocol, item['name'])
    if not item['jpegs']:
        raise video_sources.VideoReadError(f'{item["name"]}: the record holds no frames')
    return video_sources.JpegVideo(item['jpegs'], name=item['name'])


def item_views(item: dict, s: protocols.Settings):
    """Worker: -> (views [V, T, c, c, 3], label, None) or (None, label, error line)."""
    try:
        return protocols.video_views(_video(item, s.protocol), s)[1], item['label'], None
    except Exception as e:  # noqa: BLE001  one bad video is reported by name, never a traceback
        message = str(e) if isinstance(e, VtxError) else f'{type(e).__name__}: {e}'
        if not message.startswith(item['name']):  # decoder errors name the file already
            message = f'{item["name"]}: {message}'
        return None, item['label'], message


def eval_batches(data_config, *, local_batch: int, process_index: int,
                 process_count: int) -> Iterator[dict]:
    """{'image': float32 [b, V, T, c, c, 3], 'label': int32 [b], 'mask': bool [b]} over this
    process's share (every process_count-th video); the last batch is padded with mask False."""
    s = protocols.settings(data_config)
    if data_config.eval_videos:
        items = _csv_items(data_config.eval_videos)
        where = f'config.data.eval_videos={data_config.eval_videos!r}'
    else:
        items = _record_items(data_config.eval_shards, 'config.data.eval_shards')
        where = f'config.data.eval_shards={data_config.eval_shards!r}'
    mine = (_checked_label(item, data_config.num_classes) for i, item in enumerate(items)
            if i % process_count == process_index)
    workers = int(data_config.eval_workers) or os.cpu_count() or 1
    work = functools.partial(item_views, s=s)
    skipped: List[str] = []
    if workers == 1:
        yield from _batched(map(work, mine), local_batch, data_config, skipped)
    else:
        with multiprocessing.get_context('spawn').Pool(workers) as pool:
            yield from _batched(pool.imap(work, mine), local_batch, data_config, skipped)
    if skipped:
        log.warning('eval pass over %s: skipped %d unreadable videos (%s%s)', where, len(skipped),
                    '; '.join(skipped[:20]), ' ...' if len(skipped) > 20 else '')


def _checked_label(item: dict, num_classes: int) -> dict:
    if not 0 <= item['label'] < num_classes:
        raise VtxError(f'{item["name"]}: label {item["label"]} is outside [0, {num_classes}) '
                       '(config.data.num_classes)')
    return item


def _batched(results, local_batch: int, data_config, skipped: List[str]):
    views, labels = [], []
    for image, label, error in results:
        if error:
            if not data_config.skip_bad_records:
                raise VtxError(f'{error} (set config.data.skip_bad_records=True to skip '
                               'unreadable videos)')
            skipped.append(error)
            continue
        views.append(image)
        labels.append(label)
        if len(views) == local_batch:
            yield _batch(views, labels, local_batch)
            views, labels = [], []
    if views:
        yield _batch(views, labels, local_batch)


def _batch(views, labels, local_batch: int) -> dict:
    num = len(views)
    pad = [np.zeros_like(views[0])] * (local_batch - num)
    return {'image': np.stack(views + pad), 'label': np.asarray(labels + [0] * len(pad), np.int32),
            'mask': np.arange(local_batch) < num}

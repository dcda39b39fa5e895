"""Train and eval iterators over DMVR shards (or a TFDS video dataset), the API the trainer calls.

Determinism: the train stream is a pure function of (data config, seed). Each epoch permutes the
process's shards with a stateless seed, interleaves them in a fixed order, shuffles records in
blocks of `shuffle_buffer` (a stateless permutation per block, so no hidden shuffle state), and
numbers the records; a clip's temporal sampling and augmentation are seeded by (seed, epoch,
position). Resuming at step s therefore skips s * local_batch raw records (before any parsing or
decoding) and yields exactly the batches a run from step 0 would.

Bad data (a record without frames, a label outside [0, num_classes), a non-JPEG frame, a JPEG
that fails to decode, a corrupt TFRecord) stops the run with an error naming the shard and record;
with `data.skip_bad_records` such records are dropped and counted, and the count (with the records
named) is logged at the end of each epoch. Dropped records shift later batches, so a resumed run
matches a fresh one exactly only if no record was dropped before the resume step.
"""
import logging
import re
import struct
from typing import Iterator, List, Optional, Tuple

import numpy as np
from vtx.data.tf_on_host import tf

from vtx.data import augment, dmvr
from vtx.errors import VtxError

log = logging.getLogger(__name__)

_ERROR_TAG = 'VTX_BAD_RECORD'
# Salts that keep the independent random streams of one run apart.
_SHARD_ORDER, _BLOCK_SHUFFLE, _CLIP = 1, 2, 3


# ----------------------------------------------------------------------------------------------
# Config access

class _Settings:
    """The data-config fields the pipeline uses, read once and checked."""

    def __init__(self, c):
        self.num_classes = int(c.num_classes)
        if self.num_classes <= 0:
            raise VtxError(f'config.data.num_classes={c.num_classes} must be positive')
        self.num_frames = int(c.num_frames)
        self.stride = int(c.stride)
        self.sampling = c.sampling
        if self.sampling not in ('dense', 'uniform'):
            raise VtxError(f"config.data.sampling={self.sampling!r}: expected 'dense' or 'uniform'")
        self.min_resize = int(c.min_resize)
        self.crop_size = int(c.crop_size)
        scale = tuple(c.train_scale_range or (self.min_resize, self.min_resize))
        if len(scale) != 2 or scale[0] > scale[1]:
            raise VtxError(f'config.data.train_scale_range={scale}: expected (low, high) short '
                           'sides')
        self.train_scale_range = (int(scale[0]), int(scale[1]))
        self.random_resized_crop = bool(c.random_resized_crop)
        self.rrc_area_range = tuple(c.random_resized_crop_area)
        self.random_flip = bool(c.random_flip)
        self.zero_centering = bool(c.zero_centering)
        self.mean = tuple(float(v) for v in np.ravel(c.normalization_mean))
        self.std = tuple(float(v) for v in np.ravel(c.normalization_std))
        self.randaugment_layers = int(c.randaugment_layers)
        self.randaugment_magnitude = float(c.randaugment_magnitude)
        self.random_erasing = float(c.random_erasing)
        self.eval_num_clips = int(c.eval_num_clips)
        self.eval_num_crops = int(c.eval_num_crops)
        self.shuffle_buffer = max(1, int(c.shuffle_buffer))
        self.skip_bad_records = bool(c.skip_bad_records)

    @property
    def num_views(self):
        return self.eval_num_clips * self.eval_num_crops


# ----------------------------------------------------------------------------------------------
# Clip processing (TF): string vector of encoded frames -> float32 clip(s)

def train_clip(encoded, s: _Settings, seed, any_image_format: bool = False):
    """Random temporal window and spatial augmentation -> float32 [n, c, c, 3]."""
    seeds = tf.random.experimental.stateless_split(seed, 7)
    num_stored = tf.size(encoded)
    if s.sampling == 'uniform':
        indices = dmvr.segment_indices(num_stored, s.num_frames, seed=seeds[0])
    else:
        indices = dmvr.random_indices(num_stored, s.num_frames, s.stride, seeds[0])
    frames = dmvr.decode_frames(tf.gather(encoded, indices), any_image_format)
    if s.random_resized_crop:
        frames = dmvr.random_resized_crop(frames, s.crop_size, seeds[1], s.rrc_area_range)
    else:
        low, high = s.train_scale_range
        short_side = tf.random.stateless_uniform((), seeds[1], low, high + 1, dtype=tf.int32)
        frames = dmvr.random_crop(dmvr.resize_smallest(frames, short_side), s.crop_size, seeds[2])
    if s.random_flip:
        frames = dmvr.random_flip(frames, seeds[3])
    if s.randaugment_layers > 0:
        frames = augment.randaugment(frames, s.randaugment_layers, s.randaugment_magnitude,
                                     seeds[4])
    clip = dmvr.normalize(frames, s.zero_centering, s.mean, s.std)
    if s.random_erasing > 0:
        clip = augment.random_erasing(clip, s.random_erasing, seeds[5])
    return tf.ensure_shape(clip, [s.num_frames, s.crop_size, s.crop_size, 3])


def eval_views(encoded, s: _Settings, any_image_format: bool = False):
    """num_clips x num_crops views -> float32 [V, n, c, c, 3], clip-major. Clips are evenly
    spaced (DMVR's centred / linspace sampling) and share one resize, as in DMVR."""
    num_stored = tf.size(encoded)
    k, n = s.eval_num_clips, s.num_frames
    if s.sampling == 'uniform':
        indices = dmvr.segment_indices(num_stored, n, k)
    else:
        indices = dmvr.test_indices(num_stored, n, s.stride, k)
    frames = dmvr.decode_frames(tf.gather(encoded, indices), any_image_format)
    frames = dmvr.resize_smallest(frames, s.min_resize)
    views = dmvr.spatial_views(frames, s.crop_size, s.eval_num_crops)  # [crops, K*n, c, c, 3]
    c = s.crop_size
    views = tf.reshape(views, [s.eval_num_crops, k, n, c, c, 3])
    views = tf.reshape(tf.transpose(views, [1, 0, 2, 3, 4, 5]), [s.num_views, n, c, c, 3])
    return dmvr.normalize(views, s.zero_centering, s.mean, s.std)


def video_eval_views(jpeg_frames, data_config) -> np.ndarray:
    """The eval views of one video given as the JPEG frames a record of it would hold: the
    config's test protocol exactly as for the eval shards -> float32 [V, T, c, c, 3]."""
    return eval_views(tf.constant(list(jpeg_frames), tf.string), _Settings(data_config)).numpy()


# ----------------------------------------------------------------------------------------------
# Shards

def resolve_shards(patterns: str, field: str) -> List[str]:
    """Comma-separated globs (or plain paths, extension or not) -> sorted, de-duplicated files."""
    if not patterns or not patterns.strip():
        raise VtxError(f'{field} is empty: set it to a glob of DMVR shards, e.g. '
                       '"/data/train-*-of-*"')
    files = []
    for pattern in (p.strip() for p in patterns.split(',')):
        if not pattern:
            continue
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise VtxError(f'{field}: the glob {pattern!r} matches no files')
        files.extend(f for f in matched if f not in files)
    return files


_record_scans = {}


def count_records(path: str, strict: bool = True) -> int:
    """Records in a TFRecord file, from the length headers alone (no data is read). A truncated
    last record is an error, or with `strict=False` counts as a (bad) record."""
    if path not in _record_scans:
        size = tf.io.gfile.stat(path).length
        count, position, problem = 0, 0, None
        with tf.io.gfile.GFile(path, 'rb') as f:
            while position < size:
                header = f.read(12)
                length = struct.unpack('<Q', header[:8])[0] if len(header) == 12 else 0
                position += 12 + length + 4
                if len(header) < 12 or position > size:
                    problem = (f'{path}: record {count} is cut off at the end of the file '
                               '(a truncated shard, or not a TFRecord file)')
                    count += 1
                    break
                f.seek(position)
                count += 1
        _record_scans[path] = (count, problem)
    count, problem = _record_scans[path]
    if problem and strict:
        raise VtxError(problem)
    return count


class DmvrSource:
    """This process's part of a shard set: whole shards (shard i -> process i % P) or, when there
    are fewer shards than processes, every P-th record of every shard.

    A source gives (shard position, record index, payload) elements, and `parse(payload)` gives
    the fields of `dmvr.parse`; `vtx.data.tfds_source.TfdsSource` is the other source."""
    any_image_format = False  # frames must be JPEG (what DMVR decodes)

    def __init__(self, patterns: str, field: str, process_index: int, process_count: int,
                 skip_bad: bool):
        self.field, self.patterns, self.skip_bad = field, patterns, skip_bad
        shards = resolve_shards(patterns, field)
        if len(shards) >= process_count:
            self.shards, self.record_split = shards[process_index::process_count], None
        else:
            self.shards, self.record_split = shards, (process_index, process_count)

    def record_ids(self) -> List[Tuple[int, int]]:
        """(shard position, record index) of every record this process reads."""
        start, step = self.record_split if self.record_split else (0, 1)
        return [(i, j) for i, path in enumerate(self.shards)
                for j in range(start, count_records(path, strict=not self.skip_bad), step)]

    def num_records(self) -> int:
        num = len(self.record_ids())
        if num == 0:
            raise VtxError(f'{self.field}={self.patterns!r} gives this process no records '
                           f'(shards: {self.shards})')
        return num

    parse = staticmethod(dmvr.parse)

    def describe(self, shard: int, record: int) -> str:
        path = self.shards[shard]
        return dmvr.describe_record(
            next(iter(tf.data.TFRecordDataset(path).skip(record).take(1))).numpy())

    def find_unreadable(self) -> Optional[str]:
        """Names the first record whose TFRecord framing or checksum is broken, if any."""
        for path in self.shards:
            record = 0
            try:
                for _ in tf.data.TFRecordDataset(path):
                    record += 1
            except tf.errors.OpError as e:
                return f'{path}: record {record} cannot be read ({_tf_message(e)})'
        return None

    def read(self, shard_order, cycle_length: int, skip_bad: bool):
        """Dataset of (shard position, record index, serialized) over `shard_order` (a tensor of
        positions in self.shards), `cycle_length` shards interleaved record by record."""
        paths = tf.constant(self.shards)
        split = self.record_split

        def open_shard(i):
            records = tf.data.TFRecordDataset(paths[i]).enumerate()
            if skip_bad:
                records = records.ignore_errors()
            if split:
                records = records.filter(lambda j, _: j % split[1] == split[0])
            return records.map(lambda j, x: (tf.cast(i, tf.int64), j, x))

        return tf.data.Dataset.from_tensor_slices(shard_order).interleave(
            open_shard, cycle_length=cycle_length, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------------------------
# Record checks shared by train and eval

def _checked(source, payload, shard, record, s: _Settings):
    """Parses a record; bad records raise a tagged error (or, when skipping, give ok=False)."""
    parsed = source.parse(payload)
    reason = dmvr.record_problem(parsed, s.num_classes, jpeg=not source.any_image_format)
    ok = tf.equal(reason, '')
    frames = parsed['frames']
    label = tf.cast(tf.reshape(parsed['label_indices'], [-1])[:1], tf.int32)
    label = tf.reshape(tf.pad(label, [[0, 1 - tf.size(label)]], constant_values=-1), [])
    if not s.skip_bad_records:
        message = tf.strings.join([_ERROR_TAG, tf.strings.as_string(shard),
                                   tf.strings.as_string(record), reason, 'END'], separator='|')
        with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
            frames, label = tf.identity(frames), tf.identity(label)  # decode only after the check
    return frames, label, ok


def _raise_clear(error: tf.errors.OpError, source, stream_after):
    """Turns a TF error from the pipeline into a VtxError naming the shard and record.
    `stream_after()` gives the (shard, record, payload) elements from the first undelivered one."""
    match = re.search(_ERROR_TAG + r'\|(\d+)\|(\d+)\|(.*?)\|END', str(error.message))
    if match:
        shard, record, reason = int(match.group(1)), int(match.group(2)), match.group(3)
        if reason.startswith('no frames'):
            reason = 'no frames: ' + source.describe(shard, record)
        raise VtxError(f'{source.shards[shard]}: record {record}: {reason} (set '
                       'config.data.skip_bad_records=True to skip bad records)') from None
    unreadable = source.find_unreadable()
    if unreadable:
        raise VtxError(unreadable) from None
    found = _first_undecodable(source, stream_after())  # passed the checks, fails to decode
    if found:
        shard, record, message = found
        raise VtxError(f'{source.shards[shard]}: record {record}: {message} (set '
                       'config.data.skip_bad_records=True to skip bad records)') from None
    raise VtxError(f'reading {source.field}={source.patterns!r} failed: {_tf_message(error)}') \
        from None


def _tf_message(error) -> str:
    """The first line of a TF error without its op and function-node decorations."""
    text = str(getattr(error, 'message', error)).splitlines()[0]
    text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', text)
    return re.sub(r'\s*\[Op:[^\]]*\].*$', '', text).strip()


def _first_undecodable(source, records, limit: int = 4096):
    """Scans (shard, record, payload) elements and returns the first whose frames do not
    decode, as (shard, record, TF message), or None."""
    for shard, record, payload in records.take(limit):
        bad = dmvr.first_undecodable_frame(source.parse(payload)['frames'], source.any_image_format)
        if bad:
            return int(shard), int(record), f'frame {bad[0]} does not decode: {_tf_message(bad[1])}'
    return None


# ----------------------------------------------------------------------------------------------
# Train

def _fold(seed, *values):
    for v in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int64))
    return seed


def _make_source(data_config, split: str, process_index: int, process_count: int):
    if not 0 <= process_index < process_count:
        raise VtxError(f'process_index={process_index} is not in [0, {process_count})')
    if data_config.tfds_name:
        from vtx.data import tfds_source
        return tfds_source.TfdsSource(data_config, split, process_index, process_count)
    field = f'{split}_shards'
    return DmvrSource(data_config[field], f'config.data.{field}', process_index, process_count,
                      bool(data_config.skip_bad_records))


def _train_records(source, s: _Settings, seed: int, first_epoch: int):
    """(epoch, position, shard, record, payload) for epochs first_epoch, first_epoch + 1, ..."""
    base = tf.constant([seed, 0], tf.int64)
    num_shards = len(source.shards)
    cycle = min(num_shards, 16)

    def epoch_records(epoch):
        order = tf.argsort(tf.random.stateless_uniform([num_shards],
                                                       _fold(base, _SHARD_ORDER, epoch)))
        records = source.read(order, cycle, s.skip_bad_records)
        blocks = records.batch(s.shuffle_buffer).enumerate()

        def shuffle_block(b, block):
            perm = tf.argsort(tf.random.stateless_uniform(
                tf.shape(block[0]), _fold(base, _BLOCK_SHUFFLE, epoch, b)))
            return tf.data.Dataset.from_tensor_slices(
                tf.nest.map_structure(lambda x: tf.gather(x, perm), block))

        return blocks.flat_map(shuffle_block).enumerate().map(
            lambda pos, r: (epoch, pos) + r)

    return tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch_records)


def train_batches(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Endless iterator of {'image': float32 [b, T, c, c, 3], 'label': int32 [b]} with
    b = global_batch_size // process_count; batch s is the same whatever `start_step` was."""
    local_batch = _local_batch(global_batch_size, process_count)
    s = _Settings(data_config)
    source = _make_source(data_config, 'train', process_index, process_count)
    num_records = source.num_records()  # also refuses an empty set, which would never yield
    first_epoch, offset = divmod(start_step * local_batch, num_records)
    base = tf.constant([seed, 0], tf.int64)

    def example(epoch, pos, shard, record, payload):
        encoded, label, ok = _checked(source, payload, shard, record, s)
        clip = train_clip(encoded, s, _fold(base, _CLIP, epoch, pos), source.any_image_format)
        return {'image': clip, 'label': label, 'ok': ok, 'epoch': epoch, 'shard': shard,
                'record': record}

    records = _train_records(source, s, seed, first_epoch).skip(offset)
    ds = records.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if s.skip_bad_records:
        ds = ds.filter(lambda e: e['ok']).ignore_errors()
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
    return _train_iterator(ds, source, s, num_records, first_epoch, offset > 0, records)


def _train_iterator(ds, source, s: _Settings, num_records: int, first_epoch: int,
                    resumed_mid_epoch: bool, records):
    seen, epoch, delivered = set(), first_epoch, 0
    iterator = iter(ds)
    while True:
        try:
            batch = next(iterator)
        except tf.errors.OpError as e:
            _raise_clear(e, source, lambda: records.skip(delivered).map(
                lambda epoch_, pos, shard, record, payload: (shard, record, payload)))
        delivered += len(batch['label'])
        if s.skip_bad_records:
            epochs = batch['epoch'].numpy()
            ids = zip(epochs, batch['shard'].numpy(), batch['record'].numpy())
            for e_, shard, record in ids:
                if e_ != epoch:
                    if not (resumed_mid_epoch and epoch == first_epoch):  # saw only part of it
                        _report_skipped(f'epoch {epoch}', seen, source, num_records)
                    seen, epoch = set(), e_
                seen.add((int(shard), int(record)))
        yield {'image': batch['image'].numpy(), 'label': batch['label'].numpy()}


def _report_skipped(what, seen, source, num_records):
    missing = [r for r in source.record_ids() if r not in seen]
    if missing:
        named = ', '.join(f'{source.shards[i]}:{j}' for i, j in missing[:20])
        log.warning('%s: skipped %d bad records of %d (%s%s)', what, len(missing),
                    num_records, named, ', ...' if len(missing) > 20 else '')


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise VtxError(f'global batch size {global_batch_size} must be a positive multiple of the '
                       f'process count {process_count}')
    return global_batch_size // process_count


# ----------------------------------------------------------------------------------------------
# Eval

def eval_batches(data_config, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
    """One pass over this process's share of the eval set: {'image': float32 [b, V, T, c, c, 3],
    'label': int32 [b], 'mask': bool [b]}; the last batch is padded with mask False."""
    local_batch = _local_batch(global_batch_size, process_count)
    if data_config.get('test_protocol', 'dmvr') != 'dmvr' or data_config.get('eval_videos'):
        from vtx.data import protocol_eval  # an official test pipeline
        return protocol_eval.eval_batches(data_config, local_batch=local_batch,
                                          process_index=process_index,
                                          process_count=process_count)
    s = _Settings(data_config)
    source = _make_source(data_config, 'eval', process_index, process_count)

    def example(shard, record, payload):
        encoded, label, ok = _checked(source, payload, shard, record, s)
        return {'image': eval_views(encoded, s, source.any_image_format), 'label': label,
                'ok': ok, 'shard': shard, 'record': record}

    records = source.read(tf.range(len(source.shards)), 1, s.skip_bad_records)
    ds = records.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if s.skip_bad_records:
        ds = ds.filter(lambda e: e['ok']).ignore_errors()
    ds = ds.batch(local_batch).prefetch(2)
    return _eval_iterator(ds, source, s, local_batch, records)


def _eval_iterator(ds, source, s: _Settings, local_batch: int, records):
    seen = set()
    iterator = iter(ds)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            _raise_clear(e, source, lambda: records.skip(len(seen)))
        seen.update(zip(batch['shard'].numpy().tolist(), batch['record'].numpy().tolist()))
        num = len(batch['label'])
        pad = local_batch - num
        yield {
            'image': np.pad(batch['image'].numpy(), [(0, pad)] + [(0, 0)] * 5),
            'label': np.pad(batch['label'].numpy(), (0, pad)),
            'mask': np.arange(local_batch) < num,
        }
    if s.skip_bad_records:
        _report_skipped('eval pass', seen, source, len(source.record_ids()))

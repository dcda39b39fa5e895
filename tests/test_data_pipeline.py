"""train_batches / eval_batches: shapes, exact resume, process split, padding, bad data."""
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from vtx import config as vtx_config
from vtx.data import dmvr, pipeline
from vtx.errors import VtxError

NUM_CLASSES = 4


def _frames(video_id, num_frames=6, h=12, w=16):
    """Frames whose pixels encode (video, frame), so outputs can be traced back."""
    return [np.full((h, w, 3), (video_id * 7 + t * 3) % 256, np.uint8) for t in range(num_frames)]


def _jpegs(frames):
    return [tf.io.encode_jpeg(f, quality=100).numpy() for f in frames]


def _write(path, records):
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)


def _record(video_id, label=None, jpegs=None):
    label = video_id % NUM_CLASSES if label is None else label
    jpegs = _jpegs(_frames(video_id)) if jpegs is None else jpegs
    return dmvr.make_sequence_example(jpegs, label, f'class{label}', f'v{video_id}.mp4', 0,
                                      600000).SerializeToString()


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """20 videos in 4 shards named like DMVR's (no extension); video v in shard v % 4."""
    folder = tmp_path_factory.mktemp('shards')
    for k in range(4):
        _write(str(folder / f'clips-{k:05d}-of-00004'), [_record(v) for v in range(k, 20, 4)])
    return str(folder / 'clips-*-of-*')


def _config(shards, **overrides):
    c = vtx_config.defaults().data
    c.train_shards = c.eval_shards = shards
    c.num_classes = NUM_CLASSES
    c.num_frames, c.stride = 4, 1
    c.min_resize, c.crop_size, c.train_scale_range = 12, 8, (12, 14)
    c.shuffle_buffer = 8
    for k, v in overrides.items():
        c[k] = v
    return c


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batch_shapes_and_labels(shards):
    batch = next(pipeline.train_batches(_config(shards), global_batch_size=6, seed=0))
    assert batch['image'].shape == (6, 4, 8, 8, 3) and batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    # Every pixel of video v is (7v + 3t) % 256 / 255, so each clip names its video.
    video = np.round(batch['image'][:, 0, 0, 0, 0] * 255).astype(int)
    assert set(batch['label']) <= set(range(NUM_CLASSES))
    for pixel, label in zip(video, batch['label']):
        candidates = [v for v in range(20) if any((7 * v + 3 * t) % 256 == pixel for t in range(6))]
        assert label in {v % NUM_CLASSES for v in candidates}


def test_train_resume_is_exact_across_epochs(shards):
    config = _config(shards)
    # 20 records, batch 6: step 5 starts in epoch 1 (records 30..35 of the stream).
    fresh = _take(pipeline.train_batches(config, global_batch_size=6, seed=3), 7)
    for start in (1, 5):
        resumed = _take(pipeline.train_batches(config, global_batch_size=6, seed=3,
                                               start_step=start), 7 - start)
        for a, b in zip(fresh[start:], resumed):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])
    other_seed = next(pipeline.train_batches(config, global_batch_size=6, seed=4))
    assert not np.array_equal(other_seed['image'], fresh[0]['image'])


def test_train_epochs_cover_every_record_in_new_orders(shards):
    config = _config(shards, random_flip=False, train_scale_range=(12, 12), crop_size=12)
    batches = _take(pipeline.train_batches(config, global_batch_size=4, seed=0), 10)
    epochs = [np.concatenate([b['label'] for b in batches[:5]]),
              np.concatenate([b['label'] for b in batches[5:]])]
    for labels in epochs:  # 20 records, 5 per class
        assert np.bincount(labels, minlength=NUM_CLASSES).tolist() == [5] * NUM_CLASSES
    first = [b['image'][:, 0, 0, 0, 0] for b in batches]
    assert not np.array_equal(np.concatenate(first[:5]), np.concatenate(first[5:]))


def test_eval_padding_mask_and_views(shards):
    config = _config(shards, eval_num_clips=2, eval_num_crops=3)
    batches = list(pipeline.eval_batches(config, global_batch_size=8))
    assert [b['mask'].sum() for b in batches] == [8, 8, 4]
    assert batches[-1]['mask'].tolist() == [True] * 4 + [False] * 4
    assert batches[0]['image'].shape == (8, 6, 4, 8, 8, 3)
    assert batches[0]['label'].dtype == np.int32 and batches[0]['mask'].dtype == np.bool_
    # Sorted shards, records in order: clips-00000 holds videos 0, 4, 8, ...
    assert batches[0]['label'].tolist() == [v % NUM_CLASSES for v in (0, 4, 8, 12, 16, 1, 5, 9)]


@pytest.mark.parametrize('num_shards', [4, 1])
def test_processes_read_disjoint_parts(shards, num_shards):
    pattern = shards if num_shards == 4 else shards.replace('*-of-*', '00001-of-00004')
    config = _config(pattern)
    seen = []
    for process in range(2):
        for b in pipeline.eval_batches(config, global_batch_size=4, process_index=process,
                                       process_count=2):
            seen.extend(np.round(b['image'][b['mask']][:, 0, 0, 0, 0, 0] * 255).astype(int))
    expected_count = 20 if num_shards == 4 else 5
    assert len(seen) == expected_count
    # The centred clip starts at frame 1 of 6: pixel 7v + 3 identifies the video.
    assert len(set(seen)) == expected_count
    with pytest.raises(VtxError, match='multiple of the process count'):
        pipeline.train_batches(config, global_batch_size=5, seed=0, process_count=2)


def test_shard_globs(shards, tmp_path):
    overlapping = shards + ', ' + shards.replace('*-of-*', '00002-of-00004')
    files = pipeline.resolve_shards(overlapping, 'config.data.eval_shards')
    assert [os.path.basename(f) for f in files] == [f'clips-{k:05d}-of-00004' for k in range(4)]
    assert [pipeline.count_records(f) for f in files] == [5, 5, 5, 5]
    with pytest.raises(VtxError, match="the glob '.*nothing-here-\\*' matches no files"):
        next(pipeline.eval_batches(_config(str(tmp_path / 'nothing-here-*')), global_batch_size=2))
    with pytest.raises(VtxError, match='eval_shards is empty'):
        next(pipeline.eval_batches(_config(''), global_batch_size=2))


def _bad_shards(tmp_path, bad_record):
    path = str(tmp_path / 'bad-00000-of-00001')
    _write(path, [_record(0), _record(1), bad_record, _record(3)])
    return path


@pytest.mark.parametrize('kind, message', [
    ('label', r'record 2: label 9 \(clip/label/index\) is outside \[0, 4\)'),
    ('not_jpeg', 'record 2: frame 0 is not a JPEG'),
    ('no_frames',
     r"record 2: no frames: context features .*feature lists \{'image/encoded': '0 steps'\}"),
    ('corrupt_jpeg', 'record 2: '),
], ids=['label', 'not_jpeg', 'no_frames', 'corrupt_jpeg'])
def test_bad_records_are_named_or_skipped(tmp_path, caplog, kind, message):
    good = _jpegs(_frames(2))
    bad = {
        'label': _record(2, label=9),
        'not_jpeg': _record(2, jpegs=[b'GIF89a...'] + good[1:]),
        'no_frames': _record(2, jpegs=[]),
        'corrupt_jpeg': _record(2, jpegs=[g[:40] + b'\x00' * 30 for g in good]),
    }[kind]
    path = _bad_shards(tmp_path, bad)
    with pytest.raises(VtxError, match=f'{path}: {message}'):
        list(pipeline.eval_batches(_config(path), global_batch_size=2))
    with pytest.raises(VtxError, match=f'{path}: {message}'):
        _take(pipeline.train_batches(_config(path), global_batch_size=2, seed=0), 2)
    with caplog.at_level(logging.WARNING, logger='vtx.data.pipeline'):
        batches = list(pipeline.eval_batches(_config(path, skip_bad_records=True),
                                             global_batch_size=2))
    assert sum(b['mask'].sum() for b in batches) == 3
    assert f'eval pass: skipped 1 bad records of 4 ({path}:2)' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='vtx.data.pipeline'):
        train = _take(pipeline.train_batches(_config(path, skip_bad_records=True),
                                             global_batch_size=2, seed=0), 3)  # into epoch 1
    assert all(b['label'].shape == (2,) for b in train)
    assert f'epoch 0: skipped 1 bad records of 4 ({path}:2)' in caplog.text


@pytest.mark.parametrize('damage', ['truncate', 'flip_byte'])
def test_broken_tfrecord_is_named_or_skipped(tmp_path, caplog, damage):
    path = str(tmp_path / 'cut-00000-of-00001')
    _write(path, [_record(i) for i in range(4)])
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    if damage == 'truncate':
        data = data[:-50]  # the last record is cut off
    else:
        data[len(data) * 5 // 8] ^= 0xFF  # inside record 2: its checksum fails
    with open(path, 'wb') as f:
        f.write(bytes(data))
    bad = 3 if damage == 'truncate' else 2
    with pytest.raises(VtxError, match=f'{path}: record {bad} cannot be read'):
        list(pipeline.eval_batches(_config(path), global_batch_size=2))
    with caplog.at_level(logging.WARNING, logger='vtx.data.pipeline'):
        batches = list(pipeline.eval_batches(_config(path, skip_bad_records=True),
                                             global_batch_size=2))
    # A reader cannot resynchronise after a bad checksum: the rest of that shard is lost.
    assert sum(int(b['mask'].sum()) for b in batches) == bad
    assert f'eval pass: skipped {4 - bad} bad records of 4 ({path}:{bad}' in caplog.text


def test_all_frames_in_one_feature_layout(tmp_path):
    """Older files keep all JPEGs in one step of the feature list (or in the context)."""
    jpegs = _jpegs(_frames(5))
    per_frame = dmvr.make_sequence_example(jpegs, 1, 'a', 'v', 0, 1)
    one_step = tf.train.SequenceExample()
    one_step.CopyFrom(per_frame)
    del one_step.feature_lists.feature_list[dmvr.IMAGE_KEY].feature[:]
    one_step.feature_lists.feature_list[dmvr.IMAGE_KEY].feature.add().bytes_list.value.extend(jpegs)
    in_context = tf.train.SequenceExample()
    in_context.CopyFrom(per_frame)
    del in_context.feature_lists.feature_list[dmvr.IMAGE_KEY]
    in_context.context.feature[dmvr.IMAGE_KEY].bytes_list.value.extend(jpegs)
    for example in (one_step, in_context):
        frames = dmvr.parse(example.SerializeToString())['frames'].numpy().tolist()
        assert frames == jpegs

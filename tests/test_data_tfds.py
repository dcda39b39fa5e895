"""A TFDS video dataset as the pipeline's source (a tiny builder prepared in the test)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vtx import config as vtx_config
from vtx.data import pipeline
from vtx.errors import VtxError


class TinyVideos(tfds.core.GeneratorBasedBuilder):
    """Video i has 4 + i frames of brightness 10 * i and label i % 3 (PNG frames, TFDS default)."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'video': tfds.features.Video(shape=(None, 12, 16, 3)),
            'label': tfds.features.ClassLabel(names=['a', 'b', 'c']),
            'caption': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(range(8)),
                'test': self._generate_examples(range(8, 13))}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {'video': np.full((4 + i, 12, 16, 3), 10 * i, np.uint8), 'label': i % 3,
                      'caption': f'video {i}'}


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    TinyVideos(data_dir=data_dir).download_and_prepare()
    c = vtx_config.defaults().data
    c.tfds_name, c.tfds_data_dir = 'tiny_videos', data_dir
    c.num_classes, c.num_frames, c.min_resize, c.crop_size = 3, 2, 12, 8
    c.train_scale_range, c.shuffle_buffer = (12, 12), 4
    return c


def _video_ids(images):
    return np.round(images.reshape(len(images), -1)[:, 0] * 255 / 10).astype(int)


def test_eval_reads_every_video_once_across_processes(config):
    ids, labels = [], []
    for process in range(2):
        for b in pipeline.eval_batches(config, global_batch_size=4, process_index=process,
                                       process_count=2):
            assert b['image'].shape == (2, 1, 2, 8, 8, 3)
            ids.extend(_video_ids(b['image'][b['mask']]))
            labels.extend(b['label'][b['mask']])
    assert sorted(ids) == list(range(8, 13))
    assert all(label == i % 3 for i, label in zip(ids, labels))


def test_train_resume_is_exact(config):
    fresh = [next(it) for it in [pipeline.train_batches(config, global_batch_size=3, seed=1)]
             for _ in range(6)]
    resumed = pipeline.train_batches(config, global_batch_size=3, seed=1, start_step=4)
    for step in (4, 5):  # epoch 1 (8 videos, 3 per batch)
        batch = next(resumed)
        np.testing.assert_array_equal(batch['image'], fresh[step]['image'])
    ids = np.concatenate([_video_ids(b['image']) for b in fresh])
    assert sorted(ids[:8]) == list(range(8))  # the first epoch holds every video once
    labels = np.concatenate([b['label'] for b in fresh])
    np.testing.assert_array_equal(labels, ids % 3)


def test_unknown_split_is_named(config):
    bad = config.copy_and_resolve_references()
    bad.tfds_eval_split = 'validation'
    with pytest.raises(VtxError, match="tfds_eval_split='validation'.*splits"):
        next(pipeline.eval_batches(bad, global_batch_size=2))

"""The motion demo dataset: its label is visible in motion only, and `ensure` writes it once."""
import os

import numpy as np
import pytest

from vtx import config as vtx_config
from vtx.data import synthetic
from vtx.data import pipeline
from vtx.errors import VtxError


def _videos(count, spec=synthetic.MotionSpec()):
    videos, labels = [], []
    for i in range(count):
        rng = synthetic._video_rng(0, 'train', i)
        label = int(rng.integers(len(synthetic.CLASSES)))
        videos.append(synthetic.make_video(spec, label, rng).astype(np.float32))
        labels.append(label)
    return np.stack(videos), np.array(labels)


def _motion_guess(video):
    """Direction of the strongest small shift between consecutive frames (phase correlation)."""
    grey = video.mean(-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    f = np.fft.fft2(grey)
    corr = np.real(np.fft.ifft2(f[1:] * np.conj(f[:-1]))).sum(0)  # corr[dy, dx], wrapping
    scores = {'left': corr[0, -4:-1].sum(), 'right': corr[0, 1:4].sum(),
              'up': corr[-4:-1, 0].sum(), 'down': corr[1:4, 0].sum()}
    return synthetic.CLASSES.index(max(scores, key=scores.get))


def test_label_is_in_the_motion_not_in_any_frame():
    videos, labels = _videos(480)
    assert np.bincount(labels).min() > 90  # classes are balanced
    motion = np.array([_motion_guess(v) for v in videos])
    assert (motion == labels).mean() > 0.8
    # A ridge classifier on single frames fits its training videos but is at chance on new ones.
    frames = videos[:, 5].reshape(len(videos), -1)
    train, test = slice(0, 360), slice(360, None)
    mean = frames[train].mean(0)
    x = frames[train] - mean
    w = np.linalg.solve(x.T @ x + 1e3 * np.eye(x.shape[1]), x.T @ np.eye(4)[labels[train]])
    assert ((x @ w).argmax(1) == labels[train]).mean() > 0.9
    assert ((frames[test] - mean) @ w).argmax(1).__eq__(labels[test]).mean() < 0.4


def test_ensure_writes_once_and_deterministically(tmp_path):
    def config(folder):
        c = vtx_config.defaults().data
        c.synthetic = 'motion'
        c.num_classes = 4
        c.train_shards = str(folder / 'train-*-of-*')
        c.eval_shards = str(folder / 'eval-*-of-*')
        c.synthetic_num_train, c.synthetic_num_eval, c.synthetic_num_shards = 24, 8, 3
        c.num_frames, c.min_resize, c.crop_size, c.train_scale_range = 8, 32, 32, (32, 32)
        return c

    a, b = config(tmp_path / 'a'), config(tmp_path / 'b')
    synthetic.ensure(a)
    synthetic.ensure(b)
    names = sorted(os.listdir(tmp_path / 'a'))
    assert names == sorted([f'{s}-0000{i}-of-00003' for s in ('eval', 'train') for i in range(3)]
                           + ['eval.motion.json', 'train.motion.json'])
    for name in names:
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    stamp = os.stat(tmp_path / 'a' / names[0]).st_mtime_ns
    synthetic.ensure(a)  # present: left alone
    assert os.stat(tmp_path / 'a' / names[0]).st_mtime_ns == stamp
    batches = list(pipeline.eval_batches(a, global_batch_size=4))
    assert sum(int(x['mask'].sum()) for x in batches) == 8
    assert batches[0]['image'].shape == (4, 1, 8, 32, 32, 3)
    a.synthetic_num_train = 30  # other settings than the shards on disk were made with
    with pytest.raises(VtxError, match='generated with other synthetic settings'):
        synthetic.ensure(a)
    a.num_classes = 5
    with pytest.raises(VtxError, match='num_classes=5'):
        synthetic.ensure(a)


def test_command_line(tmp_path):
    synthetic.main(['--out', str(tmp_path), '--num_train', '6', '--num_eval', '2',
                    '--num_shards', '2', '--frame_size', '16', '--target_size', '4'])
    assert sorted(os.listdir(tmp_path)) == ['eval-00000-of-00002', 'eval-00001-of-00002',
                                           'train-00000-of-00002', 'train-00001-of-00002']

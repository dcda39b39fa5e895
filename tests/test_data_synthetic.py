"""The motion demo dataset: its label is visible in motion only, and `ensure` writes it once."""
import glob
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


def config(folder):
    c = vtx_config.defaults().data
    c.synthetic = 'motion'
    c.num_classes = 4
    c.train_shards = str(folder / 'train-*-of-*')
    c.eval_shards = str(folder / 'eval-*-of-*')
    c.synthetic_num_train, c.synthetic_num_eval, c.synthetic_num_shards = 24, 8, 3
    c.num_frames, c.min_resize, c.crop_size, c.train_scale_range = 8, 32, 32, (32, 32)
    return c


def test_ensure_writes_once_and_deterministically(tmp_path):
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


def test_an_interrupted_generation_is_made_again_in_full(tmp_path, monkeypatch):
    """Killed after some shards of the train set were complete: the rerun regenerates the whole
    set instead of training on the shards that happened to be finished."""
    write_split = synthetic.write_split

    def killed_after_one_shard(out_dir, prefix, split, num_videos, num_shards, spec, seed=0):
        write_split(out_dir, prefix, split, num_videos // num_shards, 1, spec, seed)
        os.replace(os.path.join(out_dir, f'{prefix}-00000-of-00001'),
                   os.path.join(out_dir, f'{prefix}-00000-of-{num_shards:05d}'))
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, 'write_split', killed_after_one_shard)
    c = config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure(c)
    assert os.listdir(tmp_path).count('train-00000-of-00003') == 1
    monkeypatch.setattr(synthetic, 'write_split', write_split)
    synthetic.ensure(c)
    assert sum(pipeline.count_records(p) for p in glob.glob(c.train_shards)) == 24
    assert not [n for n in os.listdir(tmp_path) if 'generating' in n]


def test_shards_the_generator_did_not_finish_are_refused(tmp_path):
    c = config(tmp_path)
    synthetic.ensure(c)
    os.remove(tmp_path / 'train.motion.json')
    with pytest.raises(VtxError, match='did not finish .*train.motion.json is missing'):
        synthetic.ensure(c)


def test_command_line(tmp_path):
    synthetic.main(['--out', str(tmp_path), '--num_train', '6', '--num_eval', '2',
                    '--num_shards', '2', '--frame_size', '16', '--target_size', '4'])
    assert sorted(os.listdir(tmp_path)) == ['eval-00000-of-00002', 'eval-00001-of-00002',
                                           'train-00000-of-00002', 'train-00001-of-00002']

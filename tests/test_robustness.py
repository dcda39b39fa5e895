"""Faults injected on purpose: a second trainer, damaged checkpoints, bad settings, bad files.

Each fault gives one error line naming the culprit before anything is written, or a run that
recovers and says how."""
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, demo_cli, tiny_demo_config
from vtx import checkpoint, train
from vtx.errors import VtxError


def test_no_readable_checkpoint_is_one_error_and_nothing_moves(tmp_path):
    for step in (1, 2):
        os.makedirs(tmp_path / 'checkpoints' / str(step))  # killed before `default/` was written
    with pytest.raises(checkpoint.CheckpointError,
                       match=r'no checkpoint in .* can be read \(step 2: FileNotFoundError.*; '
                             r'step 1: .*nothing was moved'):
        checkpoint.load_any_params(str(tmp_path), {})
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_one_trainer_per_workdir(demo_data_dir, tmp_path):
    workdir = str(tmp_path / 'run')
    os.makedirs(workdir)
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from vtx import checkpoint; '
         'checkpoint.WorkdirLock(sys.argv[1]); print("held", flush=True); time.sleep(300)',
         workdir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        with pytest.raises(VtxError, match=f'in use by another trainer \\(host '
                                           f'{socket.gethostname()}, pid {holder.pid}, since'):
            train.train_and_evaluate(tiny_demo_config(demo_data_dir), workdir, 'train')
        assert os.listdir(workdir) == ['lock']  # refused before writing anything
        # Evaluation only reads: it takes no lock (here it stops only for want of a checkpoint).
        with pytest.raises(VtxError, match='has no checkpoint'):
            train.train_and_evaluate(tiny_demo_config(demo_data_dir), workdir, 'eval')
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    checkpoint.WorkdirLock(workdir).release()  # a killed holder's lock is gone with it


@pytest.mark.parametrize('overrides, expected', [
    ({'train.batch_size': -8}, 'config.train.batch_size=-8 must be at least 1'),
    ({'data.num_frames': 0, 'model.num_frames': 0}, 'config.data.num_frames=0 must be at least 1'),
    ({'train.log_every_steps': 0}, 'config.train.log_every_steps=0 must be at least 1'),
    ({'train.checkpoint_every_steps': -1}, 'checkpoint_every_steps=-1 must be at least 1'),
    ({'train.grad_accum_steps': 3}, 'batch_size=8 must divide evenly over 1 readers x 3'),
    ({'train.eval_batch_size': 0}, 'config.train.eval_batch_size=0 must be at least 1'),
    ({'train.num_steps': 0, 'data.num_train_examples': 0}, 'give no steps to train'),
    ({'data.synthetic': '', 'data.eval_shards': '/nowhere/eval-*'},
     "config.data.eval_shards: the glob '/nowhere/eval-*' matches no files"),
])
def test_bad_settings_fail_before_the_workdir_is_touched(demo_data_dir, tmp_path, overrides,
                                                         expected):
    with pytest.raises(VtxError, match=expected.replace('(', r'\(').replace('*', r'\*')):
        train.train_and_evaluate(tiny_demo_config(demo_data_dir, **overrides),
                                 str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


def test_class_counts_must_agree(demo_data_dir, tmp_path):
    with pytest.raises(VtxError, match='config.model.num_classes=5 but config.data.num_classes=4'):
        train.train_and_evaluate(tiny_demo_config(demo_data_dir, **{'model.num_classes': 5}),
                                 str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write to; as root only an immutable folder is one (chattr +i)."""
    path = tmp_path / 'read_only'
    path.mkdir()
    path.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(['chattr', '+i', str(path)],
                                                     capture_output=True).returncode == 0
    if os.access(path, os.W_OK):
        pytest.skip('no way to make a read-only folder here')
    yield path
    if immutable:
        subprocess.run(['chattr', '-i', str(path)], check=True)
    path.chmod(0o755)


def test_read_only_workdir_or_parent(demo_data_dir, read_only_folder):
    for workdir, expected in ((read_only_folder, 'the folder is not writable'),
                              (read_only_folder / 'run', 'its parent folder .* is not writable')):
        with pytest.raises(VtxError, match=f'--workdir {workdir}: {expected}'):
            train.train_and_evaluate(tiny_demo_config(demo_data_dir), str(workdir))


@pytest.mark.parametrize('args, expected', [
    (['--workdir=  '], '--workdir is empty'),
    (['--config.train.batch_size=-4'], 'config.train.batch_size=-4 must be at least 1'),
])
def test_cli_refuses_before_creating_the_workdir(demo_data_dir, tmp_path, args, expected):
    out = subprocess.run(demo_cli(demo_data_dir, str(tmp_path / 'run'), *args), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f'vtx-train: error: {expected}'] or (
        len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr), out.stderr
    assert not (tmp_path / 'run').exists() and not os.path.exists(os.path.join(REPO, 'config.json'))


def _shard_with_a_corrupt_frame(path):
    from vtx.data import dmvr
    from vtx.data.tf_on_host import tf
    good = tf.io.encode_jpeg(np.zeros((16, 16, 3), np.uint8)).numpy()
    frames = [good[:3] + b'\x00' * (len(good) - 3)] * 16  # a JPEG start marker, then nothing
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(dmvr.make_sequence_example(frames, 1, 'right', 'v0', 0, 1).SerializeToString())


def test_a_bad_eval_set_stops_the_run_before_training(demo_data_dir, tmp_path):
    shard = tmp_path / 'eval-00000-of-00001'
    _shard_with_a_corrupt_frame(shard)
    config = tiny_demo_config(demo_data_dir, **{'data.synthetic': ''})
    config.data.eval_shards = str(shard)
    with pytest.raises(VtxError) as error:
        train.train_and_evaluate(config, str(tmp_path / 'run'))
    message = str(error.value)
    assert message.startswith(f'{shard}: record 0: frame 0 does not decode: ')
    assert 'JPEG' in message and 'in user code' not in message and '\n' not in message
    assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.parametrize('content', [b'\x80\x02garbage' * 100, 'truncated', 'pickle'])
def test_unreadable_pth_is_one_line_naming_the_file(tmp_path, content):
    torch = pytest.importorskip('torch')
    import pickle

    from vtx.convert import engine
    path = tmp_path / 'model.pth'
    if content == 'truncated':
        torch.save({'w': torch.zeros(4)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == 'pickle':
        path.write_bytes(pickle.dumps({'note': 'not a checkpoint'}))
    else:
        path.write_bytes(content)
    with pytest.raises(engine.CheckpointFormatError) as error:
        engine.read_checkpoint(str(path))
    message = str(error.value)
    assert message.startswith(f'{path}: not a readable PyTorch checkpoint: ')
    assert '\n' not in message and 'file an issue' not in message

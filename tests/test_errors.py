"""Bad input gets one clear error naming the culprit, and nothing already saved is damaged."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, demo_cli, tiny_demo_config
from vtx import cli, train
from vtx.commands import benchmark, report
from vtx.data import synthetic
from vtx.errors import VtxError


def test_missing_workdir_parent(demo_data_dir):
    with pytest.raises(VtxError, match='parent folder /nonexistent/deeper does not exist'):
        train.train_and_evaluate(tiny_demo_config(demo_data_dir), '/nonexistent/deeper/run')


def test_empty_shard_glob(demo_data_dir, tmp_path):
    config = tiny_demo_config(demo_data_dir, **{'data.synthetic': ''})
    config.data.train_shards = str(tmp_path / 'nothing-*-of-*')
    with pytest.raises(VtxError, match='nothing-'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_frames_of_the_wrong_size_for_the_model(demo_data_dir, tmp_path):
    config = tiny_demo_config(demo_data_dir, **{'data.crop_size': 24, 'data.min_resize': 24})
    with pytest.raises(VtxError, match='image_size=16'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_eval_without_checkpoint(demo_data_dir, tmp_path):
    with pytest.raises(VtxError, match='has no checkpoint'):
        train.train_and_evaluate(tiny_demo_config(demo_data_dir), str(tmp_path / 'run'), 'eval')


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_data_dir, tmp_path):
    # 8 steps per epoch; at epoch 0.5 (step 4) the learning rate jumps to 1e17.
    config = tiny_demo_config(demo_data_dir, **{
        'data.num_train_examples': 64, 'optimizer.name': 'sgd', 'optimizer.schedule': 'step',
        'optimizer.warmup_epochs': 0.0, 'optimizer.step_epochs': (0.5,),
        'optimizer.step_factor': 1e20, 'optimizer.learning_rate': 1e-3})
    workdir = str(tmp_path / 'run')
    with pytest.raises(train.NonFiniteLossError, match=r'at step 6.*\(step 4\)'):
        train.train_and_evaluate(config, workdir, 'train')
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
    assert saved == [2, 4]
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(workdir, 'checkpoints', '4', 'default'))
    import jax
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['params']))


def test_workdir_of_another_model(demo_data_dir, tmp_path):
    workdir = str(tmp_path / 'run')
    train.train_and_evaluate(tiny_demo_config(demo_data_dir, **{'train.num_steps': 2}), workdir, 'train')
    before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
    other = tiny_demo_config(demo_data_dir, **{'model.hidden_size': 48, 'model.mlp_dim': 96})
    with pytest.raises(VtxError, match='holds a run of another model'):
        train.train_and_evaluate(other, workdir, 'train')
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
    # How the model computes is not what it is: the same workdir takes another dtype or kernel.
    train._check_workdir_model(workdir, tiny_demo_config(demo_data_dir, **{
        'model.dtype': 'bfloat16', 'model.attention_implementation': 'jax'}))


@pytest.mark.parametrize('args, expected', [
    (['--config.train.batchsize=4'], "no field 'batchsize' (did you mean batch_size"),
    (['--config.train.nope=1'],
     "vtx-train: error: --config.train.nope: the config has no field 'nope'"),
    (['--config.train.batch_size=abc'], "invalid literal for int() with base 10: 'abc'"),
    (['--config.model.name=swin_huge'], "config.model.name='swin_huge' is not a vtx model"),
    (['--config.model.window_size=(8,7,7)'], 'window_size'),
    (['--coordinator_address=localhost:1', '--num_processes=2', '--process_id=2'],
     '--process_id 2: processes are numbered 0 to --num_processes - 1 (1)'),
])
def test_cli_errors_are_one_paragraph(demo_data_dir, tmp_path, args, expected):
    out = subprocess.run(demo_cli(demo_data_dir, str(tmp_path / 'run'), *args), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert expected in out.stderr
    assert 'Traceback' not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith('vtx-train: error:')]
    assert len(errors) == 1, out.stderr


@pytest.mark.parametrize('flag', ['--top_k=0', '--batch_size=-1'])
def test_predict_counts_out_of_range_are_one_line(flag):
    out = subprocess.run([sys.executable, '-m', 'vtx.predict', '--model', 'xvit_k600', flag,
                          'unused.mp4'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f'vtx-predict: error: bad command '
                                                          f'line: flag {flag}:')


def test_cli_missing_config_file(tmp_path):
    out = subprocess.run([sys.executable, '-m', 'vtx.main', '--config', 'configs/no_such.py',
                          f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and 'configs/no_such.py' in out.stderr and 'Traceback' not in out.stderr


@pytest.mark.parametrize('text, expected', [
    ('def get_config(:\n    pass\n', 'syntax error at line 1: invalid syntax'),
    ('from vtx import config\n\n\ndef get_config():\n    c = config.defaults()\n'
     '    c.data.nope.x = 1\n    return c\n', "line 6: get_config() failed: AttributeError"),
])
def test_cli_config_file_that_fails_is_one_line(tmp_path, text, expected):
    path = tmp_path / 'mine.py'
    path.write_text(text)
    out = subprocess.run([sys.executable, '-m', 'vtx.main', '--config', str(path),
                          f'--workdir={tmp_path / "run"}'], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip().splitlines() == [f'vtx-train: error: config file {path}: {expected}'
                                               if 'syntax' in expected else
                                               f'vtx-train: error: config file {path}, {expected}: '
                                               '"\'nope\'"']
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('module, program, args, status, line', [
    ('vtx.main', 'vtx-train', ['--help'], 0, 'Command line: `vtx-train --config'),
    ('vtx.main', 'vtx-train', ['--nope'], 2,
     "vtx-train: error: bad command line: Unknown command line flag 'nope'"),
    ('vtx.commands.predict', 'vtx-predict', ['--help'], 0, 'Command line: classify video files'),
    ('vtx.commands.predict', 'vtx-predict', ['--nope', 'a.mp4'], 2,
     "vtx-predict: error: bad command line: Unknown command line flag 'nope'"),
    ('vtx.commands.export', 'vtx-export', ['--help'], 0, 'Command line: write a trained'),
    ('vtx.commands.report', 'vtx-report', ['--help'], 0, 'usage: vtx-report'),
    ('vtx.commands.report', 'vtx-report', ['--config', 'demo', '--nope'], 2,
     'vtx-report: error: unrecognized arguments: --nope'),
    ('vtx.commands.benchmark', 'vtx-benchmark', ['--help'], 0, 'usage: vtx-benchmark'),
    ('vtx.commands.benchmark', 'vtx-benchmark', ['--config', 'demo', '--steps', '0'], 2,
     "vtx-benchmark: error: argument --steps: expected an integer >= 1, got '0'")])
def test_help_and_a_bad_flag_answer_before_jax_loads(module, program, args, status, line):
    """The commands import JAX (~1 s) only for a command line that parses; the restart with the
    malloc tunables comes first and imports nothing. Help's first line, or the error's line."""
    code = (f"import importlib, sys; sys.modules['jax'] = None; sys.argv[0] = {program!r}\n"
            f'importlib.import_module({module!r}).run()')
    out = subprocess.run([sys.executable, '-c', code, *args], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == status, out.stderr[-2000:]
    shown = out.stdout.splitlines()[0] if status == 0 else out.stderr.splitlines()[-1]
    assert shown.startswith(line), (out.stdout + out.stderr)[-2000:]


@pytest.mark.parametrize('command', [['vtx.pretrained', 'list'], ['vtx.main', '--help']])
def test_a_command_whose_reader_closes_stdout_ends_quietly(command):
    """`vtx-zoo list | head -3`: no BrokenPipeError traceback, the status a shell gives SIGPIPE."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `head` is after its last
    out = subprocess.run([sys.executable, '-m', *command], cwd=REPO, stdout=write,
                         stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert (out.returncode, out.stderr) == (cli.CLOSED_STDOUT_STATUS, '')


def test_a_broken_pipe_other_than_stdout_is_not_hidden():
    @cli.command
    def writes_to_a_pipe_nobody_reads():
        read, write = os.pipe()
        os.close(read)
        try:
            os.write(write, b'x')
        finally:
            os.close(write)

    with pytest.raises(BrokenPipeError):
        writes_to_a_pipe_nobody_reads()


@pytest.mark.parametrize('main, args, expected', [
    (benchmark.main, ['--config', 'demo', '--batch', '0'],
     "vtx-benchmark: error: argument --batch: expected an integer >= 1, got '0'"),
    (benchmark.main, ['--config', 'demo', '--warmup', '-1'],
     "vtx-benchmark: error: argument --warmup: expected an integer >= 0, got '-1'"),
    (report.main, ['--config', 'demo', '--batch', 'two'],
     "vtx-report: error: argument --batch: expected an integer >= 1, got 'two'"),
    (synthetic.main, ['--out', 'unused', '--num_shards', '0'],
     "vtx-demo-data: error: argument --num_shards: expected an integer >= 1, got '0'"),
    (synthetic.main, ['--out', 'unused', '--speed', '0', '2'],
     'vtx-demo-data: error: --speed=(0, 2): expected (LOW, HIGH) with 1 <= LOW <= HIGH: a target '
     'that stands still shows no direction'),
    (synthetic.main, ['--out', 'unused', '--target_size', '3', '--num_distractors', '0', '1'],
     "vtx-demo-data: error: --target_size=3: expected a size other than the distractors' (3, 5)"),
])
def test_command_line_numbers_out_of_range_are_one_error_line(main, args, expected, capsys,
                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected
    assert not os.listdir(tmp_path)   # nothing written


def test_a_synthetic_setting_that_shows_no_motion_names_its_config_key(tmp_path):
    config = tiny_demo_config(str(tmp_path / 'data'), **{'data.synthetic_speed': (0, 1)})
    with pytest.raises(VtxError, match=r'^config\.data\.synthetic_speed=\(0, 1\): expected \(LOW, '
                                       r'HIGH\) with 1 <= LOW <= HIGH'):
        synthetic.ensure(config.data)
    config.data.synthetic_num_stored_frames = 1   # a key the demo config does not set
    config.data.synthetic_speed = (1, 1)
    with pytest.raises(VtxError, match=r'^config\.data\.synthetic_num_stored_frames=1: expected '
                                       'at least 2 frames'):
        synthetic.ensure(config.data)
    config.data.synthetic_num_stored_frames = 16
    config.data.synthetic_noise = 'loud'
    with pytest.raises(VtxError, match=r"^config\.data\.synthetic_noise='loud': expected a float"):
        synthetic.ensure(config.data)
    assert not (tmp_path / 'data').exists()

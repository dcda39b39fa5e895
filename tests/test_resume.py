"""A run killed with SIGKILL, or stopped by SIGTERM, resumes to bitwise the same parameters."""
import glob
import os
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import REPO, demo_cli as cli, tiny_demo_config

STEPS = 24


def start(data_dir, workdir, env=None):
    return subprocess.Popen(cli(data_dir, workdir, f'--config.train.num_steps={STEPS}'), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out, err


@pytest.fixture(scope='module')
def uninterrupted(demo_data_dir, tmp_path_factory):
    """The workdir of the run that nothing interrupts."""
    workdir = str(tmp_path_factory.mktemp('uninterrupted'))
    out, _ = finish(start(demo_data_dir, workdir))
    assert f'done: checkpoints (step {STEPS}) in {workdir}/checkpoints, metrics in ' in out
    return workdir


def wait_for_checkpoint(process, workdir, step):
    path = os.path.join(workdir, 'checkpoints', str(step))
    deadline = time.time() + 300
    while not os.path.isdir(path):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, 'no checkpoint appeared'
        time.sleep(0.05)


def final_params(workdir, step=STEPS):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))
    import jax
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state['params'])}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), f'{k} differs after resume'


def test_kill_and_sigterm_resume_bitwise(demo_data_dir, tmp_path, uninterrupted):
    expected = final_params(uninterrupted)
    killed = str(tmp_path / 'killed')
    p = start(demo_data_dir, killed)
    wait_for_checkpoint(p, killed, 8)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.isdir(os.path.join(killed, 'checkpoints', str(STEPS)))
    finish(start(demo_data_dir, killed))
    assert_bitwise_equal(final_params(killed), expected)

    stopped = str(tmp_path / 'sigterm')
    p = start(demo_data_dir, stopped)
    wait_for_checkpoint(p, stopped, 4)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]  # preemption is a clean exit
    saved = sorted(int(d) for d in os.listdir(os.path.join(stopped, 'checkpoints')) if d.isdigit())
    assert 4 <= saved[-1] < STEPS, saved  # it stopped early and saved where it stopped
    finish(start(demo_data_dir, stopped))
    assert_bitwise_equal(final_params(stopped), expected)


def _killed_at(process, moment, data_dir, workdir, rng):
    """Waits for `moment` of the run (or its end) and sends SIGKILL; whether it came."""
    checkpoints = os.path.join(workdir, 'checkpoints')
    arrived = {
        # first use: the demo's data is being generated
        'generating': lambda: glob.glob(os.path.join(data_dir, '*.generating')),
        # orbax is writing a checkpoint (its temporary folder exists)
        'checkpoint': lambda: glob.glob(os.path.join(checkpoints, '*orbax-checkpoint-tmp*')),
        # anywhere in start-up or training
        'anywhere': lambda: time.time() > started + rng.uniform(0.5, 6.0),
    }[moment]
    started = time.time()
    while not arrived() and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    return process.wait() == -signal.SIGKILL


def test_soak_ten_kills_in_a_row_end_where_an_uninterrupted_run_does(tmp_path, uninterrupted):
    """SIGKILL at ten moments in a row, the first during the first-use data generation, four
    during checkpoint writes, five anywhere; the eleventh run finishes with the parameters of the
    run that nothing interrupted (which also shows the generated set is whole)."""
    data_dir, workdir = str(tmp_path / 'data'), str(tmp_path / 'run')
    # Later starts reuse the first one's compiled steps: the soak costs start-ups, not compiles.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    rng = random.Random(14)
    moments = ['generating'] + ['checkpoint', 'anywhere'] * 4 + ['anywhere']
    for moment in moments:
        killed = _killed_at(start(data_dir, workdir, env), moment, data_dir, workdir, rng)
        assert killed or moment == 'anywhere', f'the run ended before the {moment} kill'
        if moment == 'generating':  # killed half-way: the marker of an unfinished set is left
            assert glob.glob(os.path.join(data_dir, '*.generating'))
    finish(start(data_dir, workdir, env))
    assert_bitwise_equal(final_params(workdir), final_params(uninterrupted))


def _damage(workdir, step, how):
    item = os.path.join(workdir, 'checkpoints', str(step), 'default')
    if how == 'missing':
        shutil.rmtree(item)
        return
    for data_file in glob.glob(os.path.join(item, 'ocdbt.process_0', 'd', '*')):
        size = os.path.getsize(data_file)
        with open(data_file, 'r+b') as f:
            if how == 'truncated':
                f.truncate(size // 2)
            else:
                f.write(np.random.default_rng(0).bytes(size))


def test_damaged_checkpoints_are_named_set_aside_and_the_run_resumes_exactly(
        demo_data_dir, tmp_path, uninterrupted):
    """The newest three checkpoints damaged three ways: readers (predict, export, init_from,
    --mode=eval) fall back to step 12 and move nothing; the trainer names each, sets it aside and
    ends with the parameters of the run that nothing interrupted."""
    import flax.linen as nn

    from vtx import checkpoint, steps
    from vtx.models import build_model
    workdir = str(tmp_path / 'damaged')
    shutil.copytree(uninterrupted, workdir)
    at_step_12 = final_params(workdir, 12)
    for step, how in ((24, 'missing'), (20, 'garbage'), (16, 'truncated')):
        _damage(workdir, step, how)

    config = tiny_demo_config(demo_data_dir)
    abstract = nn.meta.unbox(steps.abstract_variables(build_model(config.model), config)['params'])
    params, meta = checkpoint.load_any_params(workdir, abstract)
    assert meta['step'] == 12
    import jax
    assert_bitwise_equal({jax.tree_util.keystr(k): np.asarray(v)
                          for k, v in jax.tree_util.tree_leaves_with_path(params)}, at_step_12)
    assert len(os.listdir(os.path.join(workdir, 'checkpoints'))) == 6

    _, err = finish(start(demo_data_dir, workdir))
    for step in (24, 20, 16):
        item = f'{workdir}/checkpoints/{step}/default'
        assert f'checkpoint step {step} ({item}) cannot be read' in err
        assert f'set aside as {workdir}/checkpoints_unreadable/{step}' in err
    assert f'its folder {workdir}/checkpoints/24/default is missing' in err
    assert 'OCDBT database at local file' in err  # the reason names the file
    assert 'using checkpoint step 12, the newest one that reads' in err
    assert 'Traceback' not in err and 'Event loop' not in err and 'W1' not in err, err
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints_unreadable'))) == ['16', '20', '24']
    assert_bitwise_equal(final_params(workdir), final_params(uninterrupted))

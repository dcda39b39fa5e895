"""A run killed with SIGKILL, or stopped by SIGTERM, resumes to bitwise the same parameters."""
import os
import signal
import subprocess
import time

import numpy as np

from conftest import REPO, demo_cli as cli

STEPS = 24


def start(data_dir, workdir):
    return subprocess.Popen(cli(data_dir, workdir, f'--config.train.num_steps={STEPS}'), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(process):
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def wait_for_checkpoint(process, workdir, step):
    path = os.path.join(workdir, 'checkpoints', str(step))
    deadline = time.time() + 300
    while not os.path.isdir(path):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, 'no checkpoint appeared'
        time.sleep(0.05)


def final_params(workdir):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(workdir, 'checkpoints', str(STEPS), 'default'))
    import jax
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state['params'])}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), f'{k} differs after resume'


def test_kill_and_sigterm_resume_bitwise(demo_data_dir, tmp_path):
    reference = str(tmp_path / 'uninterrupted')
    finish(start(demo_data_dir, reference))
    expected = final_params(reference)

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

"""Two JAX processes on localhost train like one process on the same global batches."""
import json
import os
import socket
import subprocess

import numpy as np

from conftest import REPO, demo_cli as cli


def free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def read_metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def run(commands, devices_per_process):
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def test_two_processes_match_one(demo_data_dir, tmp_path):
    """2 processes of 2 devices each (a TPU host's layout, scaled down) and of 1 device each (one
    GPU per process) train and evaluate like 1 process of 4 devices."""
    # The global batch is made by 2 readers in every run: one per process, or both in one process.
    common = ['--mode=train_and_eval', '--config.data.num_readers=2', '--config.train.num_steps=8',
              '--config.train.eval_batch_size=8']
    single = str(tmp_path / 'one_process')
    run([cli(demo_data_dir, single, *common)], devices_per_process=4)
    one = read_metrics(single)
    train_one = [m for m in one if m['split'] == 'train']
    assert [m['step'] for m in train_one] == [2, 4, 6, 8]
    eval_one = one[-1]
    assert eval_one['split'] == 'eval'

    for devices_per_process in (2, 1):
        multi = str(tmp_path / f'two_processes_of_{devices_per_process}')
        address = f'localhost:{free_port()}'
        run([cli(demo_data_dir, multi, *common, f'--coordinator_address={address}',
                 '--num_processes=2', f'--process_id={i}') for i in range(2)],
            devices_per_process=devices_per_process)
        two = read_metrics(multi)
        train_two = [m for m in two if m['split'] == 'train']
        assert [m['step'] for m in train_two] == [2, 4, 6, 8], devices_per_process
        np.testing.assert_allclose([m['loss'] for m in train_two],
                                   [m['loss'] for m in train_one], rtol=1e-5)
        eval_two = two[-1]
        assert eval_two['split'] == 'eval'
        # 20 eval videos over batches of 8 split across hosts: each counted exactly once.
        assert eval_one['num_videos'] == eval_two['num_videos'] == 20
        np.testing.assert_allclose(eval_two['loss'], eval_one['loss'], rtol=1e-5)
        assert eval_two['top1'] == eval_one['top1']

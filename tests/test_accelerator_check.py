"""The device check (scripts/accelerator_check.py) in smoke mode on CPU: one official case
exported and passing at highest precision, every kind of speed run measured, both outputs
written; and one row of the memory table (scripts/memory_table.py) for a tiny config."""
import json
import os
import subprocess
import sys

from conftest import REPO, SHARED

CASE = 'vit_tiny_baseline'


def test_smoke_check_exports_a_case_and_writes_json_and_markdown(tmp_path):
    script = os.path.join(REPO, 'scripts', 'accelerator_check.py')
    cases, out = str(tmp_path / 'cases'), str(tmp_path / 'out')
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    common = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    exported = subprocess.run(
        [sys.executable, script, '--export_cases', cases, '--only_cases', CASE,
         '--official_cases', os.path.join(SHARED, 'parity', 'cases')], **common)
    assert exported.returncode == 0, exported.stderr[-2000:]
    run = subprocess.run([sys.executable, script, '--smoke', '--cases', cases, '--out', out,
                          '--batch', '2', '--steps', '1'], **common)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(os.path.join(out, 'accelerator_check.json')) as f:
        result = json.load(f)
    assert [r['case'] for r in result['parity']] == [CASE] and result['parity'][0]['passed']
    runs = [r['run'] for r in result['speed'] if 'error' not in r]
    assert runs == ['bf16 fast paths on', 'bf16 fast paths off'], result['speed']
    assert all(r['mfu'] > 0 and r['clips_per_sec'] > 0 for r in result['speed'])
    on, off = (r['fast_paths'] for r in result['speed'])
    assert on['fused_qkv'] and not off['fused_qkv'] and off['attention_implementation'] == 'xla'
    assert {r['dtype'] for r in result['speed']} == {'bfloat16'}
    with open(os.path.join(out, 'accelerator_check.md')) as f:
        assert f'| {CASE} |' in f.read()


def test_memory_table_row_for_a_tiny_config():
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    import memory_table
    from vtx import config as vtx_config
    config = vtx_config.load('demo', {'model.hidden_size': 32, 'model.mlp_dim': 64,
                                      'model.num_layers': 1, 'model.num_frames': 2,
                                      'model.image_size': 16, 'data.num_frames': 2,
                                      'data.crop_size': 16})
    import jax
    from vtx import report
    used = memory_table.train_step_bytes(config, 2, jax.devices()[:1])
    state = report.build_steps(config, jax.devices()[:1]).abstract_state
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    # Parameters and AdamW moments are the step's arguments; the activations come on top.
    assert state_bytes < used < 2 ** 30, (used, state_bytes)
    table = memory_table.markdown([{'config': 'demo', 'per_device_batch': 2, 'devices': 1,
                                    'remat': False, 'param_sharding': 'replicated',
                                    'bytes_per_device': used},
                                   {'config': 'big', 'per_device_batch': 8, 'devices': 8,
                                    'remat': True, 'param_sharding': 'fsdp',
                                    'bytes_per_device': 30 * 2 ** 30}])
    assert table.splitlines()[2:] == ['| demo | 2 | no | replicated over 1 | 0.0 | 16, 24, 40, 80 |',
                                      '| big | 8 | yes | fsdp over 8 | 30.0 | 40, 80 |']


def test_a_case_that_cannot_run_is_a_failed_row_not_the_end_of_the_check(tmp_path):
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    import accelerator_check
    case = tmp_path / 'broken_case'
    case.mkdir()
    (case / 'case.json').write_text(json.dumps({'family': 'video_swin', 'model': {}}))
    row = accelerator_check.parity_row(str(case))
    assert row['case'] == 'broken_case' and row['family'] == 'video_swin'
    assert not row['passed'] and 'params.npz' in row['error'], row
    assert '| broken_case | video_swin | error: ' in accelerator_check.markdown(
        {'device': 'cpu', 'devices': 1, 'jax': '0', 'peak': {'flops_per_sec': 1e12, 'size': 64},
         'parity': [row], 'speed': []})

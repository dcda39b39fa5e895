"""vtx.benchmark: runs 2 timed steps of a tiny config in both modes; fields present and consistent."""
import json
import os

import pytest

from conftest import SHARED
from tests.test_report import REPO, TINY, analytic_vit, tiny_config
from vtx import benchmark
from vtx.errors import VtxError


@pytest.fixture(scope='module')
def peak():
    return benchmark.matmul_peak('float32', size=256, repeats=3)


def test_peak_measured(peak):
    assert peak['flops_per_sec'] > 1e8 and peak['flops_per_sec_max'] >= peak['flops_per_sec']
    assert peak['dtype'] == 'float32' and peak['size'] == 256


@pytest.mark.parametrize('mode', ['forward', 'train'])
def test_two_steps(mode, peak):
    r = benchmark.benchmark(tiny_config(), batch=2, mode=mode, warmup=1, steps=2, peak=peak)
    assert len(r['step_s_all']) == 2 and r['steps'] == 2
    assert r['step_s_min'] <= r['step_s_median'] <= r['step_s_max']
    assert r['clips_per_sec'] == pytest.approx(2 / r['step_s_median'])
    _, macs, _, patch_macs = analytic_vit()
    assert r['macs_per_step'] == 2 * (macs if mode == 'forward' else 3 * macs - patch_macs)
    assert r['achieved_flops_per_sec'] == pytest.approx(2 * r['macs_per_step'] / r['step_s_median'])
    # MFU divides by the faster of the given reading and the one after the steps
    assert r['peak_readings'][0] == peak and len(r['peak_readings']) == 2
    assert r['peak'] == max(r['peak_readings'], key=lambda p: p['flops_per_sec'])
    assert r['mfu'] == pytest.approx(r['achieved_flops_per_sec'] / r['peak']['flops_per_sec'])
    assert r['xla_flops_per_step'] >= 2 * r['macs_per_step']
    assert r['peak_memory_bytes_xla'] > 0 and r['compile_s'] > 0
    # getrusage of the timed steps. Linux splits a thread's run time into user and kernel time
    # from tick samples, so in steps of milliseconds either share alone may read 0
    assert r['user_s_per_step'] >= 0 and r['system_s_per_step'] >= 0
    assert r['user_s_per_step'] + r['system_s_per_step'] > 0
    assert r['minor_faults_per_step'] >= 0


@pytest.mark.parametrize('given', [1e9, 1e15])
def test_mfu_divides_by_the_faster_matmul_reading(given, monkeypatch):
    after = {'size': 256, 'dtype': 'float32', 'flops_per_sec': 1e12, 'flops_per_sec_max': 1e12}
    monkeypatch.setattr(benchmark, 'matmul_peak', lambda dtype, size=None: after)
    before = {**after, 'flops_per_sec': given, 'flops_per_sec_max': given}
    r = benchmark.benchmark(tiny_config(), batch=2, mode='forward', warmup=0, steps=1, peak=before)
    assert r['peak_readings'] == [before, after]
    assert r['peak'] == (after if given < 1e12 else before)
    assert r['mfu'] == pytest.approx(r['achieved_flops_per_sec'] / max(given, 1e12))


def test_remat_counts_model_work_for_mfu(peak):
    r = benchmark.benchmark(tiny_config(**{'model.remat': True}), batch=2, mode='train', warmup=0,
                            steps=2, peak=peak)
    _, macs, _, patch_macs = analytic_vit()
    assert r['macs_per_step'] == 2 * (3 * macs - patch_macs)  # the recomputed forward is not work
    assert r['executed_macs_per_step'] > r['macs_per_step']
    assert r['fast_paths']['remat'] is True


def test_cli_json_lines(capsys):
    from vtx.commands import benchmark as command
    threads = len(os.sched_getaffinity(0))  # pinning to all keeps the test process as it was
    command.main(['--config', os.path.join(REPO, 'configs', 'demo.py'), '--steps', '2', '--json',
                  '--batch', '1', '--peak_size', '256', '--threads', str(threads)]
                 + [f'--config.{k}={v}' for k, v in TINY.items()])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r['mode'] for r in lines] == ['forward', 'train']
    for r in lines:   # the run's reading, then one after each mode's steps
        assert r['peak_readings'][0] == r['rates']['peak'] and len(r['peak_readings']) == 2
    assert lines[0]['host']['threads'] == lines[0]['rates']['threads'] == threads
    assert lines[0]['host']['cpu_dispatch'] in ('sync', 'async')  # this suite runs on the CPU
    assert 'CPU dispatch' in benchmark.format_rates(lines[0]['rates'])
    assert 'dispatch' not in benchmark.format_rates({**lines[0]['rates'], 'cpu_dispatch': None})
    from vtx import xla_flags
    options = xla_flags.forward_compiler_options()
    assert lines[0]['host']['forward_compiler_options'] == options
    assert ('forward programs compiled with xla_cpu_use_onednn=True' in
            benchmark.format_rates(lines[0]['rates'])) == bool(options)
    torch_peak = lines[0]['rates']['torch_peak']
    assert torch_peak is None or (torch_peak['threads'] == threads and torch_peak['size'] == 256)
    assert all(r['clips_per_sec'] > 0 and r['overrides']['model.num_layers'] == 2 for r in lines)


# Fast paths that change how a result is computed (not what): every official parity case whose
# model takes the field must still pass with it switched on. MViT's shifted_sum pooling is the
# default, so tests/test_parity.py checks it, and tests/test_kernels.py ties it to the convolution.
FAST_PATHS = {'fused_qkv': True, 'scan_layers': True, 'attention_implementation': 'jax'}


def _parity_cases():
    from tests.test_parity import CASES, _case_dirs
    return [os.path.join(CASES, d) for d in _case_dirs()]


@pytest.mark.parametrize('field', sorted(FAST_PATHS))
def test_fast_paths_keep_official_parity(field):
    import dataclasses
    from unittest import mock

    from vtx.convert import families
    from convert.verify import verify_case
    from vtx.models import model_class

    checked = []
    for case in _parity_cases():
        with open(os.path.join(case, 'manifest.json')) as f:
            module = families.converter(json.load(f)['family'])
        original = module.model_config_from_manifest

        def with_fast_path(manifest, original=original):
            config = dict(original(manifest))
            names = {f.name for f in dataclasses.fields(model_class(config['name']))}
            return {**config, field: FAST_PATHS[field]} if field in names else config

        with mock.patch.object(module, 'model_config_from_manifest', with_fast_path):
            config = with_fast_path(json.load(open(os.path.join(case, 'manifest.json'))))
            if field not in config:
                continue
            result = verify_case(case, log=None)
        assert result['passed'], result
        checked.append(os.path.basename(case))
    assert checked, f'no parity case has a model with field {field!r}'


def test_threads_flag_pins_and_records(monkeypatch):
    from vtx import xla_flags
    kept = []
    monkeypatch.setattr(xla_flags, 'backends_started', lambda: False)
    monkeypatch.setattr(xla_flags.os, 'sched_setaffinity', lambda pid, cpus: kept.append(cpus))
    available = sorted(os.sched_getaffinity(0))
    assert xla_flags.pin_threads(1) == available[:1] and kept == [available[:1]]
    for bad in (0, len(available) + 1):
        with pytest.raises(VtxError, match=f'--threads {bad}: this process may use 1 to'):
            xla_flags.pin_threads(bad)


def test_threads_flag_refused_after_jax_started(peak):
    from vtx import xla_flags
    available = len(os.sched_getaffinity(0))
    if available == 1:
        pytest.skip('one CPU: any pin equals the current one')
    with pytest.raises(VtxError, match='already started its backends'):
        xla_flags.pin_threads(1)


def test_default_xla_flags_leave_the_users(monkeypatch):
    from vtx import xla_flags
    monkeypatch.setattr(xla_flags, 'backends_started', lambda: False)
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_fast_math=false')
    added = xla_flags.apply_defaults({'xla_cpu_enable_fast_math': 'true', 'xla_cpu_max_isa': 'AVX2'})
    assert added == ['--xla_cpu_max_isa=AVX2']
    assert os.environ['XLA_FLAGS'] == '--xla_cpu_enable_fast_math=false --xla_cpu_max_isa=AVX2'


def test_malloc_environment_decides_from_glibc_thp_and_the_users_tunables():
    from vtx import xla_flags
    ask = lambda env, glibc=(2, 36), mode='madvise': xla_flags.malloc_environment(env, glibc, mode)
    keep = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736'
    assert ask({'A': '1'}) == {'A': '1', 'GLIBC_TUNABLES': keep + ':glibc.malloc.hugetlb=1'}
    assert ask({}, glibc=(2, 34))['GLIBC_TUNABLES'] == keep            # no huge-page tunable yet
    assert ask({}, mode='always')['GLIBC_TUNABLES'] == keep
    assert ask({}, glibc=(2, 25)) is None
    # Any GLIBC_TUNABLES, even empty, is the user's choice and left as it is.
    assert ask({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}) is None
    assert ask({'GLIBC_TUNABLES': ''}) is None
    assert xla_flags.keeps_memory({'GLIBC_TUNABLES': keep})
    assert not xla_flags.keeps_memory({'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=65536'})
    assert not xla_flags.keeps_memory({})


def test_commands_restart_once_with_the_malloc_tunables(tmp_path):
    """A command restarts itself with the tunables where they apply (this host decides), keeping
    its interpreter options and arguments, does not restart again, and then dispatches CPU
    programs synchronously exactly when the main thread keeps its memory."""
    import subprocess
    import sys
    from vtx import xla_flags
    env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    expected = (xla_flags.malloc_environment(env) or {}).get('GLIBC_TUNABLES', '')
    log = tmp_path / 'starts'
    code = ('import os, sys; from vtx import xla_flags\n'
            f'open({str(log)!r}, "a").write("start\\n")\n'
            'xla_flags.configure_host_memory()\n'
            'print(os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], sys.flags.optimize,\n'
            '      xla_flags.cpu_dispatch())')
    run = lambda env: subprocess.run(
        [sys.executable, '-O', '-c', code, 'an', 'argument'], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=120, check=True).stdout.split('\n')[0]
    dispatch = 'sync' if xla_flags.keeps_memory({'GLIBC_TUNABLES': expected}) else 'async'
    assert run(env) == f"{expected} ['an', 'argument'] 1 {dispatch}"
    assert log.read_text().count('start') == (2 if expected else 1)
    assert run({**env, 'GLIBC_TUNABLES': ''}) == " ['an', 'argument'] 1 async"


def test_compilation_cache_folder_is_per_machine_and_can_be_turned_off(monkeypatch, tmp_path):
    from vtx import xla_flags
    monkeypatch.setenv('VTX_CACHE_DIR', str(tmp_path / 'vtx'))
    monkeypatch.delenv(xla_flags.COMPILATION_CACHE_ENV, raising=False)
    machine = xla_flags.machine_id()
    assert xla_flags.compilation_cache_dir() == str(tmp_path / 'vtx' / 'xla' / machine)
    monkeypatch.setenv(xla_flags.COMPILATION_CACHE_ENV, str(tmp_path / 'mine'))
    assert xla_flags.compilation_cache_dir() == str(tmp_path / 'mine' / machine)
    for off in ('', 'off', '0'):
        monkeypatch.setenv(xla_flags.COMPILATION_CACHE_ENV, off)
        assert xla_flags.compilation_cache_dir() is None


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    """enable_compilation_cache, as vtx-train and vtx-predict call it: the first process writes
    its compiled program, the next one loads it (a cache hit) instead of compiling; a cache the
    user set through JAX is left alone."""
    import subprocess
    import sys
    code = ('import jax, jax.numpy as jnp\n'
            'from jax import monitoring\n'
            'from vtx import xla_flags\n'
            'hits = []\n'
            'monitoring.register_event_listener(lambda event, **kw: hits.append(event)'
            ' if event == "/jax/compilation_cache/cache_hits" else None)\n'
            'folder = xla_flags.enable_compilation_cache()\n'
            'jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n'
            'print(folder, len(hits))')
    env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
    env.update({'VTX_COMPILATION_CACHE': str(tmp_path / 'cache'),
                'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'})   # cache even this small program
    run = lambda env: subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, check=True,
                                     capture_output=True, text=True, timeout=120).stdout.split()
    folder, hits = run(env)
    assert folder.startswith(str(tmp_path / 'cache')) and hits == '0'
    assert any(name.endswith('-cache') for name in os.listdir(folder))
    again, hits = run(env)
    assert again == folder and int(hits) >= 1   # the product, and jnp.ones's own little program
    env['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path / 'users')
    assert run(env) == [str(tmp_path / 'users'), '0']


def test_cpu_vs_official_pools_the_rounds_as_the_baseline():
    """scripts/cpu_vs_official.py reads the baseline's table and, as the baseline pooled its two
    rounds, reports one row over every round's step times, beside each round's."""
    from scripts import cpu_vs_official
    path = os.path.join(SHARED, 'perf', 'official_cpu_baseline.md')
    official = cpu_vs_official.official_times(path)
    torch_then = cpu_vs_official.baseline_torch_peak(path)
    assert {(m, 'full', mode) for m in cpu_vs_official.MODELS for mode in ('eval', 'train')} \
        <= set(official)
    assert all(median >= minimum > 0 for median, minimum in official.values()) and torch_then > 0
    ref = official[('mvit', 'full', 'eval')]
    rounds = [{'model': 'mvit', 'config': 'c', 'size': 'full', 'mode': 'forward',
               'overrides': {}, 'host': {}, 'round': i + 1, 'compile_s': 4.0,
               'peak_memory_bytes_xla': 1,
               **cpu_vs_official.comparison_row(times, ref, torch_then, xla, torch, 5e9)}
              for i, (times, xla, torch) in enumerate([([1.0, 3.0, 2.0], 200.0, 150.0),
                                                       ([0.5, 0.9, 2.5], 100.0, None)])]
    assert rounds[0]['vtx_median_s'] == 2.0 and rounds[0]['mfu'] == pytest.approx(1e10 / 2 / 2e11)
    assert rounds[0]['speedup_at_equal_matmul'] == pytest.approx(ref[0] * torch_then / 150 / 2)
    pooled = cpu_vs_official.pooled_row(rounds, ref, torch_then)
    assert pooled['round'] == 'pooled' and pooled['round_medians_s'] == [2.0, 0.9]
    assert pooled['vtx_median_s'] == 1.5 and pooled['vtx_min_s'] == 0.5   # median of all six
    assert pooled['speedup'] == pytest.approx(ref[0] / 1.5)
    assert pooled['xla_matmul_gflops'] == 150.0 and pooled['torch_matmul_gflops'] is None
    assert pooled['speedup_at_equal_matmul'] is None   # a round without torch's rate
    assert '| pooled |' in cpu_vs_official.markdown_row(pooled)


def test_forward_compiler_options_only_on_avx512_and_never_over_the_users_flags(monkeypatch):
    from vtx import xla_flags
    # The compiler's acceptance is probed for real only where the CPU has AVX-512 (below).
    monkeypatch.setattr(xla_flags, '_compiler_takes', lambda options: True)
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_fast_math=false')
    monkeypatch.setattr(xla_flags, 'cpu_flags', lambda: {'avx2', 'avx512f'})
    assert xla_flags.forward_compiler_options() == xla_flags.FORWARD_CPU_OPTIONS
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_onednn=false')
    assert xla_flags.forward_compiler_options() == {}
    monkeypatch.setenv('XLA_FLAGS', '')
    monkeypatch.setattr(xla_flags, 'cpu_flags', lambda: {'avx2', 'fma'})
    assert xla_flags.forward_compiler_options() == {}
    monkeypatch.setattr(xla_flags, '_compiler_takes', lambda options: False)
    monkeypatch.setattr(xla_flags, 'cpu_flags', lambda: {'avx512f'})
    assert xla_flags.forward_compiler_options() == {}
    monkeypatch.undo()
    if 'avx512f' in xla_flags.cpu_flags():   # this jaxlib takes the options it is pinned with
        assert xla_flags._compiler_takes(tuple(xla_flags.FORWARD_CPU_OPTIONS.items()))
        assert not xla_flags._compiler_takes((('xla_cpu_no_such_option', True),))


def test_forward_options_script_runs_both_forms_on_the_same_inputs(monkeypatch):
    """scripts/forward_options.py compiles the forward with vtx's options and without, on
    parameters whose all-zero arrays (the demo TokShift's classifier) are drawn at random, and
    times both. Where vtx does not use the options (no AVX-512), XLA's oneDNN is not risked here:
    the script then compares two option-free forms."""
    from scripts import forward_options
    from vtx import xla_flags
    if not xla_flags.forward_compiler_options():
        monkeypatch.setattr(xla_flags, 'FORWARD_CPU_OPTIONS', {})
    row = forward_options.compare('demo', rounds=2, steps=1)
    assert row['max_logit'] > 0   # the zero-initialised classifier was drawn
    assert row['max_logit_difference'] <= 1e-5 * row['max_logit']
    assert all(row[f'{form}_s_min'] > 0 for form in forward_options.FORMS)
    assert row['xla_gflops'][0] > 0 and '| demo | 2 × 1 |' in forward_options.markdown_row(row)

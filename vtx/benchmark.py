"""Speed benchmark: clips/s, step time, achieved FLOP/s and MFU of a config's forward or train step.

`vtx-benchmark --config NAME|FILE [--batch N] [--mode forward|train] [--json] [--warmup 1]
 [--steps 7] [--threads N] [--config.model.dtype=bfloat16 ...]` (`vtx.commands.benchmark`).

`--threads N` pins the process to N CPUs before JAX starts, which sizes XLA:CPU's thread pools
(`vtx.xla_flags.pin_threads`). Every result records the host and, from the CLI, XLA's matmul
rate and (on CPU, where torch is installed) torch's 2048^2 float32 one, measured in the same
process on the same threads, so that a CPU figure can be set against the official PyTorch code's.

The timed functions are the ones that train and serve: `train_step` and `forward` of
`vtx.steps.build` (the state and the batch sharded over every device as in training). Each step
is synchronised (`block_until_ready`). Compilation is timed apart, then `--warmup` untimed steps
run, then `--steps` timed ones.

Beside the wall times it records the process's CPU time and page faults per timed step
(`getrusage`): `user_s_per_step` (compute, all threads), `system_s_per_step` (the kernel's, mostly
mapping and zeroing the memory a step's temporaries take anew) and `minor_faults_per_step`. On
CPU a step's wall time includes that kernel time (docs/performance.md, "Kernel time in
STTS-MViT's train step"), so a high `system_s_per_step` says where a slow step's time went.

MFU = 2 x MACs per step / median step time / peak, where MACs are those of the step's traced
program (`vtx.report.count_macs`; the train step includes its backward; with remat the recomputed
forward is left out, as MFU counts the model's work, not the hardware's) and the peak is measured
in the same run: a large square matmul in the model's compute dtype on the same devices, read
before the model (once per run from the CLI) and again after its timed steps; MFU divides by the
faster reading (`peak`; both in `peak_readings`), as one taken while a shared host is slow would
flatter the model.
Fast paths are config fields, so each is benchmarked by an override, e.g.
`--config.model.dtype=bfloat16` (fp32 master params), `--config.model.remat=True`,
`--config.model.attention_implementation=jax|cudnn` (global attention; cuDNN flash on GPU),
`--config.model.fused_qkv=True` (ViT/TokShift, XViT), `--config.model.scan_layers=True` (those
and MViT),
`--config.model.pool_implementation=shifted_sum` (MViT pooling without grouped convolutions).
"""
import importlib.util
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vtx import report, xla_flags
from vtx.steps import Steps, input_shape  # not `steps`: benchmark() has a `steps` count
from vtx.errors import VtxError
from vtx.models import IMPLEMENTATION_FIELDS, resolve_dtype

def compute_dtype(config) -> str:
    return resolve_dtype(config.model.get('dtype', 'float32'))


def timed(fn, repeats: int) -> list[float]:
    """The wall seconds of each of `repeats` calls of `fn`, each waited for (`block_until_ready`)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(dtype: str, size: int | None = None, warmup: int = 2, repeats: int = 10) -> dict:
    """FLOP/s of a [n*D, n] @ [n, n] matmul in `dtype` (a name, e.g. 'bfloat16') sharded over the
    D devices (median of `repeats`)."""
    devices = jax.devices()
    size = size or (2048 if jax.default_backend() == 'cpu' else 8192)
    mesh = jax.sharding.Mesh(np.array(devices), ('data',))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data', None))
    a = jax.device_put(jnp.ones((size * len(devices), size), dtype), rows)
    b = jax.device_put(jnp.ones((size, size), dtype), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    matmul = jax.jit(jnp.matmul, out_shardings=rows)
    return _matmul_rate(lambda: matmul(a, b), size, len(devices), warmup, repeats,
                        dtype=jnp.dtype(dtype).name, devices=len(devices))


def _matmul_rate(matmul, size: int, count: int, warmup: int, repeats: int, **fields) -> dict:
    """FLOP/s of `count` [size, size] @ [size, size] products a call of `matmul`: the median and
    the best of `repeats` calls after `warmup` untimed ones."""
    timed(matmul, warmup)
    times = timed(matmul, repeats)
    flops = 2 * size ** 3 * count
    return {'size': size, **fields, 'flops_per_sec': flops / statistics.median(times),
            'flops_per_sec_max': flops / min(times)}


def torch_matmul_peak(size: int = 2048, warmup: int = 2, repeats: int = 10) -> dict | None:
    """FLOP/s of a [size, size] @ [size, size] float32 `torch.matmul` on as many threads as this
    process may use (what the official code runs on), median of `repeats`; None without torch."""
    if importlib.util.find_spec('torch') is None:
        return None
    import torch
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    a, b = torch.ones(size, size), torch.ones(size, size)
    return _matmul_rate(lambda: torch.matmul(a, b), size, 1, warmup, repeats, dtype='float32',
                        threads=threads)


def host_rates(dtype: str = 'float32', size: int | None = None) -> dict:
    """This process's compute resources with XLA's matmul rate in `dtype` and, on CPU, torch's
    float32 one, measured now on the same threads."""
    on_cpu = jax.default_backend() == 'cpu'
    return {**xla_flags.host(), 'peak': matmul_peak(dtype, size),
            'torch_peak': torch_matmul_peak(size or 2048) if on_cpu else None}


def format_rates(rates: dict) -> str:
    torch_peak = rates['torch_peak']
    return (f"{rates['cpu_model']}, {rates['threads']} of {rates['cpus_online']} CPUs; "
            f"{rates['peak']['size']}^2 {rates['peak']['dtype']} matmul: XLA "
            f"{rates['peak']['flops_per_sec'] / 1e9:.0f} GFLOP/s"
            + (f", torch {torch_peak['flops_per_sec'] / 1e9:.0f} GFLOP/s ({torch_peak['threads']}"
               ' threads)' if torch_peak else '')
            + (f"; XLA_FLAGS={rates['xla_flags']!r}" if rates['xla_flags'] else '')
            + (f"; GLIBC_TUNABLES={rates['glibc_tunables']!r}" if rates['glibc_tunables'] else '')
            + (f"; THP {rates['thp_mode']}" if rates['thp_mode'] else '')
            + (f"; CPU dispatch {rates['cpu_dispatch']}" if rates['cpu_dispatch'] else '')
            + ('; forward programs compiled with '
               + ' '.join(f'{k}={v}' for k, v in rates['forward_compiler_options'].items())
               if rates.get('forward_compiler_options') else '')
            + (f"; native window attention ({rates['native_window_attention']})"
               if rates.get('native_window_attention') else ''))


def random_batch(built: Steps, batch: int):
    """Random clips and labels, `batch` of each, for `built`'s config, placed as its steps take
    them (`built.batch_sharding`)."""
    rng = np.random.default_rng(0)
    config = built.config
    local = {'image': rng.uniform(-1, 1, input_shape(config, batch)).astype(np.float32),
             'label': rng.integers(0, config.model.num_classes, (batch,)).astype(np.int32)}
    return jax.device_put(local, built.batch_sharding)


def device_peak_memory() -> int | None:
    """Peak bytes in use on the first device since start, where the backend reports it (GPU/TPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get('peak_bytes_in_use')


def benchmark(config, batch: int = 1, mode: str = 'train', warmup: int = 1, steps: int = 7,
              peak: dict | None = None) -> dict:
    """Times `mode` ('forward' or 'train') of `config` on a random batch of `batch` clips."""
    report.checked_modes([mode])
    built = report.build_steps(config)
    config, data_devices = built.config, built.mesh.shape['data']
    if batch % data_devices:
        raise VtxError(f"--batch {batch} must be a multiple of the mesh's data axis "
                       f"({data_devices} devices)")
    state = built.init_state()
    data = random_batch(built, batch)
    fn, args = report.step_call(built, mode, state, data)
    compiled, costs = report.step_costs(fn, args, state.params, mode)
    compile_s = costs['lower_s'] + costs['xla_compile_s']  # what a training run waits for

    if mode == 'train':
        def step():
            nonlocal state
            state, metrics = compiled(state, data)  # the state was donated: carry the new one
            return metrics
    else:
        def step():
            return compiled(*args)

    timed(step, warmup)
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = timed(step, steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    median = statistics.median(times)
    dtype = compute_dtype(config)
    # A shared host's matmul rate swings between readings (2048^2 float32 on 2 cores of an AMD
    # EPYC: 276-479 GFLOP/s within one run), and a reading taken in a slow moment would put MFU
    # above what the machine can do (102% once). So the rate is read again after the steps, and
    # MFU divides by the faster reading.
    readings = [*([peak] if peak else []), matmul_peak(dtype, peak and peak['size'])]
    peak = max(readings, key=lambda reading: reading['flops_per_sec'])
    useful_macs = report.model_macs(config, batch, mode)
    achieved = 2 * useful_macs / median
    return {
        'model': config.model.name, 'mode': mode, 'batch': batch, 'dtype': dtype,
        'backend': jax.default_backend(), 'devices': jax.device_count(), 'host': xla_flags.host(),
        'device_kind': jax.devices()[0].device_kind,
        'input_shape_per_view': list(input_shape(config, 1)),
        'fast_paths': {k: config.model[k] for k in IMPLEMENTATION_FIELDS
                       if k in config.model and k != 'dtype'},
        'compile_s': compile_s, 'lower_s': costs['lower_s'], 'xla_compile_s': costs['xla_compile_s'],
        'warmup_steps': warmup, 'steps': steps,
        'step_s_median': median, 'step_s_min': min(times), 'step_s_max': max(times),
        'step_s_all': times, 'clips_per_sec': batch / median,
        'user_s_per_step': (after.ru_utime - before.ru_utime) / steps,
        'system_s_per_step': (after.ru_stime - before.ru_stime) / steps,
        'minor_faults_per_step': (after.ru_minflt - before.ru_minflt) / steps,
        'macs_per_step': useful_macs, 'executed_macs_per_step': costs['macs'],
        'xla_flops_per_step': costs['xla_flops'],
        'achieved_flops_per_sec': achieved,
        'achieved_xla_flops_per_sec': costs['xla_flops'] / median,
        'peak': peak, 'peak_readings': readings, 'mfu': achieved / peak['flops_per_sec'],
        'peak_memory_bytes_xla': costs['peak_memory_bytes'],
        'peak_memory_bytes_device': device_peak_memory(),
    }


def format_result(r: dict) -> str:
    mem = r['peak_memory_bytes_device'] or r['peak_memory_bytes_xla']
    return (f"{r['model']} {r['mode']} batch {r['batch']} {r['dtype']} on {r['devices']}x "
            f"{r['device_kind']} {r['fast_paths']}\n"
            f"  compile {r['compile_s']:.1f} s (trace+lower {r['lower_s']:.1f}, XLA "
            f"{r['xla_compile_s']:.1f}); step {r['step_s_median'] * 1e3:.1f} ms median "
            f"(min {r['step_s_min'] * 1e3:.1f}, max {r['step_s_max'] * 1e3:.1f}, n={r['steps']}); "
            f"{r['clips_per_sec']:.2f} clips/s; CPU time a step {r['user_s_per_step']:.2f} s user, "
            f"{r['system_s_per_step']:.2f} s kernel, {r['minor_faults_per_step']:.0f} page faults\n"
            f"  {r['achieved_flops_per_sec'] / 1e9:.1f} GFLOP/s (2 x MACs; XLA count "
            f"{r['achieved_xla_flops_per_sec'] / 1e9:.1f}); peak {r['peak']['flops_per_sec'] / 1e9:.1f}"
            f" GFLOP/s ({r['peak']['size']}^2 {r['peak']['dtype']} matmul); MFU {100 * r['mfu']:.1f}%"
            f"\n  peak memory {mem / 2**20:.1f} MiB"
            + (' (device)' if r['peak_memory_bytes_device'] else ' (XLA memory analysis)')
            + (f"\n  host: {format_rates(r['rates'])}" if 'rates' in r else ''))


if __name__ == '__main__':   # `python -m vtx.benchmark` is the vtx-benchmark command
    from vtx.commands import benchmark as command
    command.run()

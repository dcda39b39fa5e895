"""vtx against the official PyTorch code on this machine, measured as the official baseline was.

    PYTHONPATH=. python scripts/cpu_vs_official.py [--baseline ../shared/perf/official_cpu_baseline.md]
        [--sizes full,small] [--models swin,tps,tokshift,xvit,mvit,stts] [--json]

The baseline's method: float32, batch 1, random inputs and weights, 1 untimed warm-up step, then
3 timed steps (full-size configs) or 7 (small: 8 frames of 112x112); eval is the forward, train
is forward + cross-entropy + backward + SGD with momentum 0.9 with dropout/drop-path active.
Each model runs both modes back to back. The official medians (min) are read from the baseline's
results table, matched by its model and config columns; speed-up = official median / vtx median.

Both sides get the same compute resources: `--threads` (default 2, as the baseline's
`torch.set_num_threads(2)`) pins this process to that many CPUs before JAX starts, which sizes
XLA:CPU's thread pools, and torch runs on as many. The shared machine's speed drifts (its matmul
rate has measured 45-480 GFLOP/s), so before each model the script measures XLA's and torch's
2048^2 float32 matmul on those threads and prints them on the model's rows; the baseline's own
torch.matmul figure is printed once next to them: their ratio says how much faster the machine
is now than when the official code was timed. `speed-up at equal matmul` divides that out: the
official time scaled by (torch's matmul then / torch's matmul now) over vtx's, an estimate of the
speed-up had both run on this machine now (exact for matmul-bound models, the ViT family).
"""
import argparse
import json
import os
import re
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from scripts.fast_paths import BASELINE_STEP, size_overrides  # noqa: E402
from vtx import benchmark, report, xla_flags  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.errors import VtxError  # noqa: E402

# short name -> (config, vtx fast paths used, how the baseline's table names the model)
MODELS = {
    'swin': ('swin_tiny_patch244_window877_kinetics400_1k', {}, 'Video Swin-T'),
    'tps': ('tps_swin_tiny_2D_patch244_k400', {}, 'TPS Swin-T'),
    'tokshift': ('tokshift_b16_224_8f', {}, 'TokShift ViT-B/16'),
    'xvit': ('xvit_k600', {}, 'XViT-B16'),
    'mvit': ('mvit_b_16x4_k400', {'model.pool_implementation': 'shifted_sum'}, 'MViT-B 16x4'),
    'stts': ('stts_mvit_t0_0p6_s4_0p9', {'model.pool_implementation': 'shifted_sum'},
             'STTS MViT-T0_0.6-S4_0.9'),
}
STEPS = {'full': 3, 'small': 7}
MODE_NAMES = {'forward': 'eval', 'train': 'train'}


def official_times(path: str) -> dict:
    """{(model prefix, 'paper (full)'|'small', 'eval'|'train'): (median s, min s)} from the table."""
    out = {}
    if not path or not os.path.isfile(path):
        return out
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) < 7 or not re.fullmatch(r'[\d.]+', cells[5] or 'x'):
            continue
        model, size, mode, minimum, median = cells[0], cells[1], cells[3], cells[5], cells[6]
        for short, (_, _, name) in MODELS.items():
            if model.startswith(name):
                out[(short, 'full' if size.startswith('paper') else 'small', mode)] = (
                    float(median), float(minimum))
    return out


def baseline_torch_peak(path: str):
    """Median of the baseline's reference-peak table (GFLOP/s of its 2048^2 torch.matmul)."""
    values = []
    if path and os.path.isfile(path):
        for line in open(path):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if len(cells) == 5 and cells[0] in ('1', '2'):  # | round | when | median | min | max |
                values.append(float(cells[2]))
    return statistics.median(values) if values else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--baseline', default=os.path.join(REPO, '..', 'shared', 'perf',
                                                           'official_cpu_baseline.md'))
    parser.add_argument('--sizes', default='full,small')
    parser.add_argument('--models', default=','.join(MODELS))
    parser.add_argument('--threads', type=int, default=2,
                        help='CPUs for XLA:CPU and torch (the baseline ran torch on 2 threads)')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    try:
        xla_flags.pin_threads(args.threads)
    except VtxError as e:
        print(f'vtx: error: {e}', file=sys.stderr)
        sys.exit(2)
    host = xla_flags.host()
    print(f"{host['cpu_model']}: {host['threads']} of {host['cpus_online']} CPUs for XLA:CPU and "
          f"torch; XLA_FLAGS={host['xla_flags']!r}; GLIBC_TUNABLES={host['glibc_tunables']!r}; "
          f"THP {host['thp_mode']}", flush=True)
    official = official_times(args.baseline)
    torch_then = baseline_torch_peak(args.baseline)
    if torch_then:
        print(f'torch.matmul 2048^2 when the baseline ran: {torch_then:.0f} GFLOP/s', flush=True)
    if not args.json:
        print('| model | size | mode | official median (min) s | vtx median (min) s | speed-up | '
              'speed-up at equal matmul | vtx GMACs/step | vtx MFU | vtx XLA peak | '
              'XLA / torch matmul GFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|---|')
    for size in args.sizes.split(','):
        for short in args.models.split(','):
            config_name, fast, _ = MODELS[short]
            if short == 'tps' and size == 'small':
                continue  # TPS runs only 16 frame tokens: no small row (nor in the baseline)
            overrides = {**BASELINE_STEP, **size_overrides(config_name, size), **fast}
            config = vtx_config.load(config_name, overrides)
            rates = benchmark.host_rates()
            xla_rate = rates['peak']['flops_per_sec'] / 1e9
            torch_rate = rates['torch_peak'] and rates['torch_peak']['flops_per_sec'] / 1e9
            for mode in report.MODES:
                r = benchmark.benchmark(config, 1, mode, 1, STEPS[size], rates['peak'])
                ref = official.get((short, size, MODE_NAMES[mode]))
                row = {'model': short, 'config': config_name, 'size': size, 'mode': mode,
                       'overrides': fast, 'vtx_median_s': r['step_s_median'],
                       'vtx_min_s': r['step_s_min'], 'official_median_s': ref and ref[0],
                       'official_min_s': ref and ref[1],
                       'speedup': ref and ref[0] / r['step_s_median'],
                       'speedup_at_equal_matmul': (ref and torch_then and torch_rate and
                                                   ref[0] * torch_then / torch_rate
                                                   / r['step_s_median']),
                       'gmacs_per_step': r['macs_per_step'] / 1e9, 'mfu': r['mfu'],
                       'peak_memory_bytes_xla': r['peak_memory_bytes_xla'], 'host': r['host'],
                       'xla_matmul_gflops': xla_rate, 'torch_matmul_gflops': torch_rate,
                       'compile_s': r['compile_s']}
                if args.json:
                    print(json.dumps(row), flush=True)
                    continue
                print(f"| {config_name}{' ' + str(fast) if fast else ''} | {size} | "
                      f"{MODE_NAMES[mode]} | "
                      + (f'{ref[0]:.3f} ({ref[1]:.3f}) | ' if ref else '– | ')
                      + f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}) | "
                      + (f"{row['speedup']:.2f} | " if ref else '– | ')
                      + (f"{row['speedup_at_equal_matmul']:.2f} | "
                         if row['speedup_at_equal_matmul'] else '– | ')
                      + f"{row['gmacs_per_step']:.2f} | {100 * r['mfu']:.0f}% | "
                      f"{r['peak_memory_bytes_xla'] / 2**30:.1f} GiB | {xla_rate:.0f} / "
                      + (f'{torch_rate:.0f} |' if torch_rate else '– |'), flush=True)


if __name__ == '__main__':
    xla_flags.restart_with_huge_pages()   # as vtx's commands do
    main()

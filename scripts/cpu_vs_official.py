"""vtx against the official PyTorch code on this machine, measured as the official baseline was.

    PYTHONPATH=. python scripts/cpu_vs_official.py [--baseline ../shared/perf/official_cpu_baseline.md]
        [--sizes full,small] [--models swin,tps,tokshift,xvit,mvit,stts] [--rounds 2] [--json]

The baseline's method: float32, batch 1, random inputs and weights, 1 untimed warm-up step, then
3 timed steps (full-size configs) or 7 (small: 8 frames of 112x112); eval is the forward, train
is forward + cross-entropy + backward + SGD with momentum 0.9 with dropout/drop-path active.
Each model runs both modes back to back. The baseline ran its whole set twice and pooled the two
rounds' timings; so does this script (`--rounds`, default 2, in one process): each round's rows,
then one 'pooled' row per model, size and mode with the median and min over every round's steps.
The official medians (min) are read from the baseline's results table, matched by its model and
config columns; speed-up = official median / vtx median.

Both sides get the same compute resources: `--threads` (default 2, as the baseline's
`torch.set_num_threads(2)`) pins this process to that many CPUs before JAX starts, which sizes
XLA:CPU's thread pools, and torch runs on as many. The shared machine's speed drifts (its matmul
rate has measured 45-480 GFLOP/s), so the script measures XLA's and torch's 2048^2 float32
matmul on those threads before each model and again after each mode's steps, and prints the
faster reading of each on the mode's row (MFU and the estimate below use it); the baseline's own
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
from vtx import benchmark, cli, report, xla_flags  # noqa: E402
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


def comparison_row(times, official, torch_then, xla_rate, torch_rate, macs_per_step):
    """The derived columns of one model, size and mode from vtx's step times (s) and the matmul
    rates (GFLOP/s) measured with them; `official` is the baseline's (median s, min s) or None."""
    median = statistics.median(times)
    return {'vtx_median_s': median, 'vtx_min_s': min(times), 'vtx_times_s': list(times),
            'official_median_s': official and official[0],
            'official_min_s': official and official[1],
            'speedup': official and official[0] / median,
            'speedup_at_equal_matmul': (official and torch_then and torch_rate
                                        and official[0] * torch_then / torch_rate / median),
            'gmacs_per_step': macs_per_step / 1e9,
            'mfu': 2 * macs_per_step / median / (xla_rate * 1e9),
            'xla_matmul_gflops': xla_rate, 'torch_matmul_gflops': torch_rate}


def pooled_row(rows, official, torch_then):
    """One row from the rounds' rows of a model, size and mode: median and min over all their
    step times, as the baseline pooled its two rounds (n = 2 x 3 for the full-size models); the
    matmul rates are the rounds' medians, each round's median is kept."""
    rate = lambda key: (statistics.median(r[key] for r in rows)
                        if all(r[key] for r in rows) else None)
    return {**{k: rows[0][k] for k in ('model', 'config', 'size', 'mode', 'overrides', 'host')},
            'round': 'pooled',
            **comparison_row([t for r in rows for t in r['vtx_times_s']], official, torch_then,
                             rate('xla_matmul_gflops'), rate('torch_matmul_gflops'),
                             rows[0]['gmacs_per_step'] * 1e9),
            'round_medians_s': [r['vtx_median_s'] for r in rows],
            'peak_memory_bytes_xla': rows[0]['peak_memory_bytes_xla'],
            'compile_s': [r['compile_s'] for r in rows]}


def markdown_row(row) -> str:
    official = row['official_median_s']
    return (f"| {row['config']}{' ' + str(row['overrides']) if row['overrides'] else ''} | "
            f"{row['size']} | {MODE_NAMES[row['mode']]} | {row['round']} | "
            + (f"{official:.3f} ({row['official_min_s']:.3f}) | " if official else '– | ')
            + f"{row['vtx_median_s']:.3f} ({row['vtx_min_s']:.3f}) | "
            + (f"{row['speedup']:.2f} | " if official else '– | ')
            + (f"{row['speedup_at_equal_matmul']:.2f} | "
               if row['speedup_at_equal_matmul'] else '– | ')
            + f"{row['gmacs_per_step']:.2f} | {100 * row['mfu']:.0f}% | "
            f"{row['peak_memory_bytes_xla'] / 2**30:.1f} GiB | {row['xla_matmul_gflops']:.0f} / "
            + (f"{row['torch_matmul_gflops']:.0f} |" if row['torch_matmul_gflops'] else '– |'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--baseline', default=os.path.join(REPO, '..', 'shared', 'perf',
                                                           'official_cpu_baseline.md'))
    parser.add_argument('--sizes', default='full,small')
    parser.add_argument('--models', default=','.join(MODELS))
    parser.add_argument('--threads', type=int, default=2,
                        help='CPUs for XLA:CPU and torch (the baseline ran torch on 2 threads)')
    parser.add_argument('--rounds', type=int, default=2,
                        help='times the whole set runs; the timings of a model, size and mode are '
                             'then pooled, as the baseline pooled its 2 rounds')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f'--rounds {args.rounds}: expected 1 or more')
    try:
        xla_flags.pin_threads(args.threads)
    except VtxError as e:
        print(f'vtx: error: {e}', file=sys.stderr)
        sys.exit(2)
    host = xla_flags.host()
    print(f"{host['cpu_model']}: {host['threads']} of {host['cpus_online']} CPUs for XLA:CPU and "
          f"torch; XLA_FLAGS={host['xla_flags']!r}; GLIBC_TUNABLES={host['glibc_tunables']!r}; "
          f"THP {host['thp_mode']}; CPU dispatch {host['cpu_dispatch']}; forward programs' "
          f"compile options {host['forward_compiler_options'] or 'none'}; native window "
          f"attention {host['native_window_attention'] or 'off'}", flush=True)
    official = official_times(args.baseline)
    torch_then = baseline_torch_peak(args.baseline)
    if torch_then:
        print(f'torch.matmul 2048^2 when the baseline ran: {torch_then:.0f} GFLOP/s', flush=True)
    emit = ((lambda row: print(json.dumps(row), flush=True)) if args.json else
            (lambda row: print(markdown_row(row), flush=True)))
    if not args.json:
        print('| model | size | mode | round | official median (min) s | vtx median (min) s | '
              'speed-up | speed-up at equal matmul | vtx GMACs/step | vtx MFU | vtx XLA peak | '
              'XLA / torch matmul GFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|')
    rounds = {}   # (size, model, mode) -> that model's row of each round
    for round_ in range(1, args.rounds + 1):
        for size in args.sizes.split(','):
            for short in args.models.split(','):
                config_name, fast, _ = MODELS[short]
                if short == 'tps' and size == 'small':
                    continue  # TPS runs only 16 frame tokens: no small row (nor in the baseline)
                overrides = {**BASELINE_STEP, **size_overrides(config_name, size), **fast}
                config = vtx_config.load(config_name, overrides)
                rates = benchmark.host_rates()
                for mode in report.MODES:
                    r = benchmark.benchmark(config, 1, mode, 1, STEPS[size], rates['peak'])
                    # each rate read before the model and after this mode's steps, the faster
                    # one used (`vtx.benchmark`: a reading in a slow moment flatters vtx)
                    xla_rate = r['peak']['flops_per_sec'] / 1e9
                    torch_after = rates['torch_peak'] and benchmark.torch_matmul_peak()
                    torch_rate = rates['torch_peak'] and max(
                        rates['torch_peak']['flops_per_sec'], torch_after['flops_per_sec']) / 1e9
                    row = {'model': short, 'config': config_name, 'size': size, 'mode': mode,
                           'overrides': fast, 'round': round_,
                           **comparison_row(r['step_s_all'],
                                            official.get((short, size, MODE_NAMES[mode])),
                                            torch_then, xla_rate, torch_rate,
                                            r['macs_per_step']),
                           'peak_memory_bytes_xla': r['peak_memory_bytes_xla'],
                           'host': r['host'], 'compile_s': r['compile_s']}
                    rounds.setdefault((size, short, mode), []).append(row)
                    emit(row)
    if args.rounds > 1:
        for (size, short, mode), rows in rounds.items():
            emit(pooled_row(rows, official.get((short, size, MODE_NAMES[mode])), torch_then))


if __name__ == '__main__':
    xla_flags.configure_host_memory()   # as vtx's commands do
    main()

"""vtx against the official PyTorch code on this machine, measured as the official baseline was.

    PYTHONPATH=. python scripts/cpu_vs_official.py [--baseline ../shared/perf/official_cpu_baseline.md]
        [--sizes full,small] [--models swin,tps,tokshift,xvit,mvit,stts] [--json]

The baseline's method: float32, batch 1, random inputs and weights, 1 untimed warm-up step, then
3 timed steps (full-size configs) or 7 (small: 8 frames of 112x112); eval is the forward, train
is forward + cross-entropy + backward + SGD with momentum 0.9 with dropout/drop-path active.
Each model runs both modes back to back. The official medians (min) are read from the baseline's
results table, matched by its model and config columns; speed-up = official median / vtx median.

The shared machine's speed drifts between sessions (its matmul peak has measured 150-480 GFLOP/s),
so where torch is installed the script also times the baseline's own reference, a 2048^2 float32
`torch.matmul` on 2 threads, before and after, next to the baseline's figure for it: their ratio
says how much faster the machine is now than when the official code was timed.
"""
import argparse
import json
import os
import re
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from scripts.fast_paths import BASELINE_STEP, size_overrides  # noqa: E402
from vtx import benchmark, report  # noqa: E402
from vtx import config as vtx_config  # noqa: E402

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


def torch_matmul_peak():
    """GFLOP/s of the baseline's reference: 2048^2 float32 torch.matmul, 2 threads, median of 10
    after 2 warm-ups; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    a, b = torch.ones(2048, 2048), torch.ones(2048, 2048)
    times = []
    for i in range(12):
        start = time.perf_counter()
        torch.matmul(a, b)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--baseline', default=os.path.join(REPO, '..', 'shared', 'perf',
                                                           'official_cpu_baseline.md'))
    parser.add_argument('--sizes', default='full,small')
    parser.add_argument('--models', default=','.join(MODELS))
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    official = official_times(args.baseline)
    torch_before, torch_then = torch_matmul_peak(), baseline_torch_peak(args.baseline)
    if torch_before and torch_then:
        print(f'torch.matmul 2048^2 now {torch_before:.0f} GFLOP/s; when the baseline ran '
              f'{torch_then:.0f} GFLOP/s (ratio {torch_before / torch_then:.2f})', flush=True)
    peak = benchmark.matmul_peak('float32')
    print(f"matmul peak {peak['flops_per_sec'] / 1e9:.0f} GFLOP/s (2048^2 float32)", flush=True)
    if not args.json:
        print('| model | size | mode | official median (min) s | vtx median (min) s | speed-up | '
              'vtx GMACs/step | vtx MFU | vtx XLA peak |\n|---|---|---|---|---|---|---|---|---|')
    for size in args.sizes.split(','):
        for short in args.models.split(','):
            config_name, fast, _ = MODELS[short]
            if short == 'tps' and size == 'small':
                continue  # TPS runs only 16 frame tokens: no small row (nor in the baseline)
            overrides = {**BASELINE_STEP, **size_overrides(config_name, size), **fast}
            config = vtx_config.load(config_name, overrides)
            for mode in report.MODES:
                r = benchmark.benchmark(config, 1, mode, 1, STEPS[size], peak)
                ref = official.get((short, size, MODE_NAMES[mode]))
                row = {'model': short, 'config': config_name, 'size': size, 'mode': mode,
                       'overrides': fast, 'vtx_median_s': r['step_s_median'],
                       'vtx_min_s': r['step_s_min'], 'official_median_s': ref and ref[0],
                       'official_min_s': ref and ref[1],
                       'speedup': ref and ref[0] / r['step_s_median'],
                       'gmacs_per_step': r['macs_per_step'] / 1e9, 'mfu': r['mfu'],
                       'peak_memory_bytes_xla': r['peak_memory_bytes_xla']}
                if args.json:
                    print(json.dumps(row), flush=True)
                    continue
                print(f"| {config_name}{' ' + str(fast) if fast else ''} | {size} | "
                      f"{MODE_NAMES[mode]} | "
                      + (f'{ref[0]:.3f} ({ref[1]:.3f}) | ' if ref else '– | ')
                      + f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}) | "
                      + (f"{row['speedup']:.2f} | " if ref else '– | ')
                      + f"{row['gmacs_per_step']:.2f} | {100 * r['mfu']:.0f}% | "
                      f"{r['peak_memory_bytes_xla'] / 2**30:.1f} GiB |", flush=True)
    peak_after = benchmark.matmul_peak('float32')
    print(f"matmul peak after: {peak_after['flops_per_sec'] / 1e9:.0f} GFLOP/s", flush=True)
    torch_after = torch_matmul_peak()
    if torch_after:
        print(f'torch.matmul 2048^2 after: {torch_after:.0f} GFLOP/s', flush=True)


if __name__ == '__main__':
    main()

"""Before/after of every fast path: interleaved A/B runs of `vtx.benchmark` in one process.

    PYTHONPATH=. python scripts/fast_paths.py [--size small|full] [--rounds 2] [--steps 7]
        [--only fused_qkv,scan_layers] [--models tokshift,xvit] [--json]

Each row times a config with one fast path at its reference setting (`IMPLEMENTATION_FIELDS`)
and switched on, alternating reference and fast path for `--rounds` rounds so that a change in
the machine's load hits both; a side's step time is the median over all its timed steps. Both
modes (forward, train step) are timed. `small` is 8 frames of 112x112 (the size the official
CPU baseline uses for its small configs), `full` the config's own resolution.
"""
import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vtx import benchmark, cli, report  # noqa: E402
from vtx import xla_flags  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.models import IMPLEMENTATION_FIELDS  # noqa: E402

# (short name, config file, fast path field, its value) for the families that take the field.
CASES = [
    ('tokshift', 'tokshift_b16_224_8f', 'fused_qkv', True),
    ('tokshift', 'tokshift_b16_224_8f', 'scan_layers', True),
    ('tokshift', 'tokshift_b16_224_8f', 'attention_implementation', 'jax'),
    ('tokshift', 'tokshift_b16_224_8f', 'remat', True),
    ('tokshift', 'tokshift_b16_224_8f', 'dtype', 'bfloat16'),
    ('xvit', 'xvit_k600', 'fused_qkv', True),
    ('xvit', 'xvit_k600', 'scan_layers', True),
    ('xvit', 'xvit_k600', 'attention_implementation', 'jax'),
    ('swin', 'swin_tiny_patch244_window877_kinetics400_1k', 'remat', True),
    ('swin', 'swin_tiny_patch244_window877_kinetics400_1k', 'dtype', 'bfloat16'),
    ('mvit', 'mvit_b_16x4_k400', 'pool_implementation', 'shifted_sum'),
]
# The official CPU baseline's train step: cross-entropy, SGD with momentum 0.9, nothing else.
BASELINE_STEP = {'optimizer.name': 'sgd', 'optimizer.momentum': 0.9, 'optimizer.weight_decay': 0.0,
                 'optimizer.grad_clip_norm': 0.0, 'data.mixup_alpha': 0.0, 'data.cutmix_alpha': 0.0}


def size_overrides(config_name: str, size: str) -> dict:
    if size == 'full':
        return {}
    config = vtx_config.load(config_name)
    out = {'data.num_frames': 8, 'data.crop_size': 112}
    # Models that are built for one input size say so (Swin-family models take any size).
    out.update({f'model.{k}': v for k, v in (('num_frames', 8), ('image_size', 112))
                if k in config.model})
    return out


def compare(config_name, field, value, size, rounds, steps, peaks):
    base = {**BASELINE_STEP, **size_overrides(config_name, size)}
    path = os.path.join(REPO, 'configs', config_name + '.py')
    reference = IMPLEMENTATION_FIELDS[field]
    sides = {'reference': {**base, f'model.{field}': reference},
             'fast': {**base, f'model.{field}': value}}
    rows = []
    for mode in report.MODES:
        runs = {side: [] for side in sides}
        for _ in range(rounds):
            for side, overrides in sides.items():
                config = vtx_config.load(path, overrides)
                dtype = benchmark.compute_dtype(config)
                if dtype not in peaks:
                    peaks[dtype] = benchmark.matmul_peak(dtype)
                runs[side].append(benchmark.benchmark(config, 1, mode, 1, steps, peaks[dtype]))
        # one MFU denominator for both sides: the fastest matmul reading of the mode's runs
        peak = max(r['peak']['flops_per_sec'] for results in runs.values() for r in results)
        summary = {}
        for side, results in runs.items():
            times = [t for r in results for t in r['step_s_all']]
            median = statistics.median(times)
            summary[side] = {
                'step_s_median': median, 'step_s_min': min(times),
                'compile_s': statistics.median(r['compile_s'] for r in results),
                'xla_compile_s': statistics.median(r['xla_compile_s'] for r in results),
                'mfu': 2 * results[0]['macs_per_step'] / median / peak,
                'peak_memory_bytes_xla': results[0]['peak_memory_bytes_xla']}
        rows.append({'config': config_name, 'size': size, 'mode': mode, 'field': field,
                     'reference_value': reference, 'value': value, **summary,
                     'speedup': summary['reference']['step_s_median'] / summary['fast']['step_s_median']})
    return rows


def markdown(rows) -> str:
    out = ['| config | mode | fast path | step s ref → fast (median; min) | speed-up | MFU ref → fast '
           '| XLA compile s ref → fast | XLA peak MiB ref → fast |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        a, b = r['reference'], r['fast']
        out.append(
            f"| {r['config']} ({r['size']}) | {r['mode']} | `{r['field']}={r['value']}` | "
            f"{a['step_s_median']:.3f} → {b['step_s_median']:.3f} ({a['step_s_min']:.3f} → "
            f"{b['step_s_min']:.3f}) | {r['speedup']:.2f}× | {100 * a['mfu']:.0f}% → "
            f"{100 * b['mfu']:.0f}% | {a['xla_compile_s']:.1f} → {b['xla_compile_s']:.1f} | "
            f"{a['peak_memory_bytes_xla'] / 2**20:.0f} → {b['peak_memory_bytes_xla'] / 2**20:.0f} |")
    return '\n'.join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--size', choices=('small', 'full'), default='small')
    parser.add_argument('--rounds', type=cli.number(minimum=1), default=2)
    parser.add_argument('--steps', type=cli.number(minimum=1), default=7)
    parser.add_argument('--only', default='', help='comma-separated fast path fields')
    parser.add_argument('--models', default='', help='comma-separated: ' + ','.join(
        sorted({c[0] for c in CASES})))
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    only, models = set(filter(None, args.only.split(','))), set(filter(None, args.models.split(',')))
    rows, peaks = [], {}
    for short, config_name, field, value in CASES:
        if (only and field not in only) or (models and short not in models):
            continue
        for row in compare(config_name, field, value, args.size, args.rounds, args.steps, peaks):
            print(json.dumps(row) if args.json else
                  markdown([row]).splitlines()[-1], flush=True)
            rows.append(row)
    if not args.json:
        print('\n' + markdown(rows))
        print('\nmatmul peak GFLOP/s: ' + ', '.join(
            f"{k} {v['flops_per_sec'] / 1e9:.0f}" for k, v in peaks.items()))


if __name__ == '__main__':
    xla_flags.configure_host_memory()   # as vtx's commands do
    main()

"""Cost scaling checks: XViT and TPS grow linearly with frames; STTS falls with its keep ratios.

    PYTHONPATH=. python scripts/scaling.py [--json] [--full ../shared/parity/full]

Costs are forward MACs per view counted on the traced program (`vtx.report.model_macs`; nothing
is materialised or compiled). For XViT and TPS a least-squares line MACs = a + b x frames is fitted
and its largest relative residual reported: linear cost means a residual near zero. XViT's
space-time mixing attends within each frame (keys/values shifted from neighbours), so
no T^2 term is expected beyond its small temporal head; TPS attends within 1x7x7 windows.

TPS's official model only runs 16 frame tokens (its position-bias index is built for 16), so
for this check only, TPS is built with the frame-token count set to the clip's (the bias table
grows with it; it holds no MACs). STTS: every zoo config's count next to the official code's and
the paper's, and a sweep of the temporal keep ratio of MViT-T0_x-S4_0.9.
"""
import argparse
import json
import os
import sys
from unittest import mock

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from scripts.render_model_table import full_size_entry, official_gmacs, published_gflops  # noqa: E402
from vtx import cli, families, report  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.models import tps  # noqa: E402

FRAMES = {'xvit': (8, 16, 24, 32, 48), 'tps': (16, 24, 32, 48, 64)}
CONFIGS = {'xvit': 'xvit_k400', 'tps': 'tps_swin_tiny_2D_patch244_k400'}
TIME_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def _config(name, overrides=None):
    return vtx_config.load(name, overrides)


def forward_gmacs(config) -> float:
    return report.model_macs(config, 1, 'forward') / 1e9


def frames_sweep(family: str) -> dict:
    points = []
    for t in FRAMES[family]:
        config = _config(CONFIGS[family], {'data.num_frames': t})
        if family == 'tps':
            config.model.num_frames = t
            tokens = -(-t // config.model.patch_size[0])
            with mock.patch.object(tps, 'FRAME_TOKENS', tokens):
                points.append((t, forward_gmacs(config)))
        else:
            points.append((t, forward_gmacs(config)))
    frames, gmacs = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(frames, gmacs, 1)
    fitted = intercept + slope * frames
    return {'config': CONFIGS[family], 'frames': frames.astype(int).tolist(), 'gmacs': gmacs.tolist(),
            'slope_gmacs_per_frame': float(slope), 'intercept_gmacs': float(intercept),
            'max_relative_residual': float(np.max(np.abs(gmacs - fitted) / gmacs))}


def stts_table(full_dir: str) -> dict:
    rows = []
    for zoo in families.zoo_entries('mvit', 'stts_video_swin'):
        name = zoo.config
        config = _config(name)
        entry = full_size_entry(name, full_dir)
        rows.append({'config': name, 'zoo': zoo.official_model,
                     'time_left_ratio': config.model.get('time_left_ratio'),
                     'space_left_ratio': config.model.get('space_left_ratio'),
                     'gmacs': forward_gmacs(config), 'official_gmacs': official_gmacs(entry),
                     'published_gflops': published_gflops(entry)})
    sweep = []
    for ratio in TIME_RATIOS:
        config = _config('stts_mvit_t0_0p9_s4_0p9', {'model.time_left_ratio': ratio})
        sweep.append({'time_left_ratio': ratio, 'gmacs': forward_gmacs(config)})
    return {'zoo': rows, 'mvit_time_ratio_sweep': sweep}


def _fmt(value, spec='.2f'):
    return '–' if value is None else format(value, spec)


def format_text(result: dict) -> str:
    lines = []
    for family in ('xvit', 'tps'):
        r = result[family]
        lines += [f"{family} ({r['config']}): GMACs/view = {r['intercept_gmacs']:.2f} + "
                  f"{r['slope_gmacs_per_frame']:.3f} x frames; largest relative residual "
                  f"{r['max_relative_residual']:.2e}",
                  '| frames | ' + ' | '.join(map(str, r['frames'])) + ' |',
                  '|---' * (len(r['frames']) + 1) + '|',
                  '| GMACs | ' + ' | '.join(f'{g:.2f}' for g in r['gmacs']) + ' |', '']
    lines += ['STTS zoo (forward GMACs per view)', '',
              '| config | zoo entry | time keep | space keep | vtx GMACs | official GMACs | paper GFLOPs |',
              '|---|---|---|---|---|---|---|']
    for r in result['stts']['zoo']:
        lines.append(f"| {r['config']} | {r['zoo']} | {_fmt(r['time_left_ratio'], '.3f')} | "
                     f"{_fmt(r['space_left_ratio'], '.3f')} | {r['gmacs']:.2f} | "
                     f"{_fmt(r['official_gmacs'])} | {_fmt(r['published_gflops'], '.1f')} |")
    lines += ['', 'STTS MViT-T0_x-S4_0.9: temporal keep ratio sweep', '',
              '| time keep | ' + ' | '.join(str(s['time_left_ratio'])
                                            for s in result['stts']['mvit_time_ratio_sweep']) + ' |',
              '|---' * (len(TIME_RATIOS) + 1) + '|',
              '| GMACs | ' + ' | '.join(f"{s['gmacs']:.2f}"
                                        for s in result['stts']['mvit_time_ratio_sweep']) + ' |']
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--full', default=os.environ.get(
        'VTX_PARITY_FULL', os.path.join(REPO, '..', 'shared', 'parity', 'full')))
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    result = {'xvit': frames_sweep('xvit'), 'tps': frames_sweep('tps'), 'stts': stts_table(args.full)}
    print(json.dumps(result, indent=1) if args.json else format_text(result))


if __name__ == '__main__':
    main()

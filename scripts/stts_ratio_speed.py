"""Eval speed of one STTS model at the keep ratios set at inference (`--config.model.*_left_ratio`),
with the host and XLA's (and torch's) matmul rate measured in the same run.

    python scripts/stts_ratio_speed.py [--config stts_mvit_t0_0p6_s4_0p9] [--repeats 3] \
        [--ratios 1.0/1.0,0.9/0.9,0.8/0.9,0.6/0.9,0.5/0.7,0.4/0.6]

Each ratio pair (time/space; Video Swin STTS has no spatial selector and takes the time ratio
only) is one compiled eval forward on one view of the config's clip (the same parameters serve
every ratio: the ratios only set how many tokens the selectors keep). Prints a markdown table:
XLA GMACs per view, median seconds per view, speed-up over the first pair.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from scripts.stts_gmacs import compiled_forward, seconds_per_view, xla_gmacs  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.benchmark import format_rates, host_rates  # noqa: E402
from vtx import cli, xla_flags  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--config', default='stts_mvit_t0_0p6_s4_0p9')
    parser.add_argument('--ratios', default='1.0/1.0,0.9/0.9,0.8/0.9,0.6/0.9,0.5/0.7,0.4/0.6',
                        help='comma-separated time/space keep ratios')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    print(f'before: {format_rates(host_rates())}', flush=True)
    print(f'\n{args.config}, one view, batch 1\n', flush=True)
    print('| time_left_ratio | space_left_ratio | XLA GMACs | s / view | speed-up |')
    print('|---|---|---|---|---|', flush=True)
    first = None
    for pair in args.ratios.split(','):
        time_ratio, space_ratio = (float(r) for r in pair.split('/'))
        config = vtx_config.get(args.config)
        config.model.time_left_ratio = time_ratio
        if 'space_left_ratio' in config.model:
            config.model.space_left_ratio = space_ratio
        model, video, compiled = compiled_forward(config)
        seconds = seconds_per_view(model, video, compiled, args.repeats)
        first = first or seconds
        space = f'{space_ratio:g}' if 'space_left_ratio' in config.model else '-'
        print(f'| {time_ratio:g} | {space} | {xla_gmacs(compiled):.1f} | {seconds:.2f} | '
              f'{first / seconds:.2f}x |', flush=True)
    print(f'\nafter: {format_rates(host_rates())}')


if __name__ == '__main__':
    xla_flags.configure_host_memory()   # as vtx's commands do
    main()

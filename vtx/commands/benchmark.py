"""Command line: clips/s, step time, achieved FLOP/s and MFU of a config's forward or train step,
with XLA's and torch's matmul rates measured in the same process.

    vtx-benchmark --config NAME|FILE [--batch N] [--mode forward|train] [--json] [--warmup 1]
        [--steps 7] [--threads N] [--peak_size N] [--config.model.dtype=bfloat16 ...]

(also `python -m vtx.benchmark`). What is timed and how MFU is counted: `vtx.benchmark`.
"""
import argparse
import json

from vtx import cli, xla_flags
from vtx import config as vtx_config
from vtx.errors import VtxError


def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-benchmark', description=cli.summary(__doc__))
    parser.add_argument('--config', required=True, help='a zoo config name or a config file')
    parser.add_argument('--batch', type=cli.number(minimum=1), default=1)
    parser.add_argument('--mode', action='append',
                        help='forward or train (repeatable; default: both)')
    parser.add_argument('--warmup', type=cli.number(minimum=0), default=1,
                        help='untimed steps after compiling')
    parser.add_argument('--steps', type=cli.number(minimum=1), default=7, help='timed steps')
    parser.add_argument('--peak_size', type=cli.number(minimum=1), default=None,
                        help='side of the peak-FLOP/s matmul (default 2048 on CPU, 8192 otherwise)')
    parser.add_argument('--threads', type=cli.number(minimum=1), default=None,
                        help="CPUs this process (XLA:CPU's and torch's thread pools) may use "
                             '(default: all it is allowed)')
    parser.add_argument('--json', action='store_true', help='print JSON lines instead of text')
    args, overrides = cli.parse_arguments(parser, argv)
    try:
        if args.threads is not None:
            xla_flags.pin_threads(args.threads)   # before JAX starts its thread pools
        xla_flags.dispatch_for_host_memory()
        from vtx import benchmark, report   # JAX: only once the command line has parsed
        modes = report.checked_modes(args.mode or report.MODES)
        config = vtx_config.load(args.config, overrides)
        rates = benchmark.host_rates(benchmark.compute_dtype(config), args.peak_size)
        for mode in modes:
            result = benchmark.benchmark(config, args.batch, mode, args.warmup, args.steps,
                                         rates['peak'])
            result['rates'] = rates
            result['config'] = args.config
            result['overrides'] = overrides
            print(json.dumps(result) if args.json else benchmark.format_result(result), flush=True)
    except VtxError as e:
        cli.fail(e, 'vtx-benchmark')


def run():
    """The `vtx-benchmark` command."""
    cli.run_restarted(main)


if __name__ == '__main__':
    run()

"""Command line: parameters, MACs and XLA FLOPs per view (forward and train step) and peak memory
of a config, from abstract shapes (nothing is materialised).

    vtx-report --config NAME|FILE [--batch N] [--mode forward|train] [--json] [--config.a.b=v ...]

(also `python -m vtx.report`). What each number counts: `vtx.report`.
"""
import argparse
import json

from vtx import cli, xla_flags
from vtx import config as vtx_config
from vtx.errors import VtxError


def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-report', description=cli.summary(__doc__))
    parser.add_argument('--config', required=True, help='a zoo config name or a config file')
    parser.add_argument('--batch', type=cli.number(minimum=1), default=1,
                        help='batch size for the memory analysis')
    parser.add_argument('--mode', action='append', help='forward or train (repeatable; default: '
                        'both)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    args, overrides = cli.parse_arguments(parser, argv)
    xla_flags.dispatch_for_host_memory()
    from vtx import report   # JAX: only once the command line has parsed
    try:
        result = report.analyse(vtx_config.load(args.config, overrides), args.batch,
                                args.mode or report.MODES)
    except VtxError as e:
        cli.fail(e, 'vtx-report')
    result['config'] = args.config
    print(json.dumps(result, indent=1) if args.json else report.format_report(result))


def run():
    """The `vtx-report` command."""
    cli.run_restarted(main)


if __name__ == '__main__':
    run()

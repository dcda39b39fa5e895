"""vtx's compile options for forward-only programs against XLA:CPU's defaults, in one process.

    PYTHONPATH=. python scripts/forward_options.py [--configs NAME,NAME] [--threads 2]
        [--rounds 6] [--steps 5] [--json]

On a CPU with AVX-512, vtx compiles the programs that run a model forward only (evaluation,
prediction, the benchmark's forward) with oneDNN's matmuls (`vtx.xla_flags.FORWARD_CPU_OPTIONS`,
chosen by `forward_compiler_options`; docs/performance.md, "oneDNN for the forward programs").
This script checks that choice on the host at hand. For each config, the forward program at
batch 1 is compiled twice, with those options and with none, and run on the same parameters and
clip: the largest difference of the two forms' logits is printed beside the largest logit (the
parameters that are all zeros at initialisation, such as TokShift's classifier, are drawn at
random first, so that the logits say something). Then the two run in turn, `--rounds` rounds of
`--steps` steps, the order reversed every other round so that a change in the host's load hits
both, and each form's median and minimum are printed with XLA's and torch's 2048^2 float32
matmul rates read before and after the steps.

Both forms are compiled whatever `forward_compiler_options` decides on this host, so the script
also measures them where vtx leaves the options off (a CPU without AVX-512, or XLA_FLAGS naming
them). There it may fail: XLA's oneDNN dot fusions (another fusion type than vtx's) stopped the
process with SIGILL on an AVX2 host.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vtx import benchmark, cli, report, xla_flags  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.errors import VtxError  # noqa: E402

# The six models of scripts/cpu_vs_official.py, as their zoo configs.
DEFAULT_CONFIGS = ('swin_tiny_patch244_window877_kinetics400_1k', 'tps_swin_tiny_2D_patch244_k400',
                   'tokshift_b16_224_8f', 'xvit_k600', 'mvit_b_16x4_k400',
                   'stts_mvit_t0_0p6_s4_0p9')
FORMS = ('xla_defaults', 'vtx_options')


def nonzero_params(params, seed: int = 0):
    """`params` with every all-zero array replaced by normal(0, 0.02) draws."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: p if bool(jnp.any(p)) else jnp.asarray(
            rng.normal(0.0, 0.02, p.shape), p.dtype), params)


def compare(config_name: str, rounds: int, steps: int, overrides=None) -> dict:
    """One config's row: both forms' step times, their logits' largest difference, the rates."""
    config = vtx_config.load(config_name, overrides or {})
    built = report.build_steps(config)
    params = nonzero_params(built.init_state().params)
    clips = benchmark.random_batch(built, 1)['image']
    forward = built.forward.__wrapped__   # the function vtx's forward jit compiles
    compiled, compile_s = {}, {}
    for form, options in zip(FORMS, (None, xla_flags.FORWARD_CPU_OPTIONS)):
        start = time.perf_counter()
        compiled[form] = jax.jit(forward, compiler_options=options).lower(params, clips).compile()
        compile_s[form] = time.perf_counter() - start
    logits = {form: jax.block_until_ready(compiled[form](params, clips)) for form in FORMS}
    difference = float(jnp.max(jnp.abs(logits['vtx_options'] - logits['xla_defaults'])))
    before = benchmark.host_rates()
    times = {form: [] for form in FORMS}
    for round_ in range(rounds):
        for form in (FORMS if round_ % 2 == 0 else FORMS[::-1]):
            times[form] += benchmark.timed(lambda: compiled[form](params, clips), steps)
    after = benchmark.host_rates()
    gflops = lambda rates, key: (rates[key]['flops_per_sec'] / 1e9 if rates[key] else None)
    medians = {form: statistics.median(times[form]) for form in FORMS}
    return {'config': config_name, 'rounds': rounds, 'steps': steps,
            **{f'{form}_s_median': medians[form] for form in FORMS},
            **{f'{form}_s_min': min(times[form]) for form in FORMS},
            **{f'{form}_compile_s': compile_s[form] for form in FORMS},
            'speedup': medians['xla_defaults'] / medians['vtx_options'],
            'max_logit_difference': difference,
            'max_logit': float(jnp.max(jnp.abs(logits['xla_defaults']))),
            'xla_gflops': [gflops(before, 'peak'), gflops(after, 'peak')],
            'torch_gflops': [gflops(before, 'torch_peak'), gflops(after, 'torch_peak')]}


def markdown_row(row) -> str:
    rates = lambda pair: ' / '.join('-' if r is None else f'{r:.0f}' for r in pair)
    return (f"| {row['config']} | {row['rounds']} × {row['steps']} | "
            f"{row['xla_defaults_s_median']:.3f} ({row['xla_defaults_s_min']:.3f}) | "
            f"{row['vtx_options_s_median']:.3f} ({row['vtx_options_s_min']:.3f}) | "
            f"{row['speedup']:.2f}× | {row['max_logit_difference']:.1e} of "
            f"{row['max_logit']:.1e} | {rates(row['xla_gflops'])} | "
            f"{rates(row['torch_gflops'])} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--configs', default=','.join(DEFAULT_CONFIGS),
                        help='comma-separated zoo config names or files')
    parser.add_argument('--threads', type=cli.number(minimum=1), default=2,
                        help='CPUs for XLA:CPU and torch (the official baseline ran on 2)')
    parser.add_argument('--rounds', type=cli.number(minimum=1), default=6)
    parser.add_argument('--steps', type=cli.number(minimum=1), default=5)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    try:
        xla_flags.pin_threads(args.threads)
    except VtxError as e:
        cli.fail(e, 'forward_options.py')
    host = xla_flags.host()
    print(f"{host['cpu_model']}: {host['threads']} of {host['cpus_online']} CPUs; "
          f"XLA_FLAGS={host['xla_flags']!r}; compared: {xla_flags.FORWARD_CPU_OPTIONS}; vtx "
          f"uses them here: {'yes' if host['forward_compiler_options'] else 'no'}", flush=True)
    if not args.json:
        print('| config | rounds × steps | XLA defaults median (min) s | vtx options median (min) '
              's | speed-up | largest logit difference | XLA GFLOP/s before / after | torch '
              'GFLOP/s before / after |\n|---|---|---|---|---|---|---|---|', flush=True)
    for name in filter(None, args.configs.split(',')):
        row = compare(name, args.rounds, args.steps)
        print(json.dumps(row) if args.json else markdown_row(row), flush=True)


if __name__ == '__main__':
    xla_flags.configure_host_memory()   # as vtx's commands do
    main()

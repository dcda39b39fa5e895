"""The device check: official parity at highest matmul precision and train-step speed, MFU and
memory of each family at full size, in one command that downloads nothing.

    # 1. On a host with torch (the official checkpoints are .pth): the parity cases as npz.
    python scripts/accelerator_check.py --export_cases build/device_cases
    # 2. On the accelerator (jax, flax, optax, orbax, einops, numpy, ml_collections; no TF, torch):
    python scripts/accelerator_check.py --cases build/device_cases --out accelerator_check
    # The same on CPU in seconds (tests/test_accelerator_check.py):
    python scripts/accelerator_check.py --smoke --cases DIR --out DIR

Writes OUT/accelerator_check.json (everything) and OUT/accelerator_check.md (the tables), after
each measurement, so a run cut short by its time limit still leaves what it measured;
`--budget_s` stops starting new measurements after that many seconds.

Parity: each exported case (converted params, input and official logits) runs under
`jax.default_matmul_precision('highest')`; its max abs error against the official logits is
reported with the case's tolerance. Speed: `vtx.benchmark.benchmark` of the train step (the
function that trains) in bfloat16 at `--batch` clips per device, MFU against the bfloat16 matmul
peak measured at the start of the run, with the fast paths on (`FAST_PATHS`) and off (every
field at its reference, `vtx.models.IMPLEMENTATION_FIELDS`); then float32 against bfloat16 for
two families, and Swin-B with and without remat (memory).
"""
import argparse
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from convert.verify import DEFAULT_TOLERANCE, _errors, to_model_layout  # noqa: E402
from vtx import benchmark, cli  # noqa: E402
from vtx import config as vtx_config  # noqa: E402
from vtx.errors import VtxError  # noqa: E402
from vtx.models import IMPLEMENTATION_FIELDS, build_model  # noqa: E402

FAMILIES = ('swin_tiny_patch244_window877_kinetics400_1k', 'swin_base_patch244_window877_kinetics400_1k',
            'tps_swin_tiny_2D_patch244_k400', 'tokshift_b16_224_8f', 'xvit_k600', 'mvit_b_16x4_k400',
            'stts_mvit_t0_0p6_s4_0p9')
# The fast paths switched on together (each where the family has the field): cuDNN attention
# where it applies, one fused qkv matmul, scanned layers, MViT pooling without grouped convs.
FAST_PATHS = {'attention_implementation': 'auto', 'fused_qkv': True, 'scan_layers': True,
              'pool_implementation': 'shifted_sum'}
FP32_COMPARED = ('tokshift_b16_224_8f', 'swin_tiny_patch244_window877_kinetics400_1k')
REMAT_COMPARED = 'swin_base_patch244_window877_kinetics400_1k'
# --smoke: the demo's TokShift shrunk to a few layers of 2 frames of 16x16 (seconds on CPU).
SMOKE_FAMILIES = ('demo',)
SMOKE_SIZE = {'model.hidden_size': 32, 'model.mlp_dim': 64, 'model.num_layers': 1,
              'model.num_frames': 2, 'model.image_size': 16, 'data.num_frames': 2,
              'data.crop_size': 16}


def export_cases(cases_dir: str, out_dir: str, names=None) -> list[str]:
    """Converts each official parity case (needs torch) into OUT/case/{params.npz, input.npy,
    logits.npy, case.json}: what the device needs, readable with numpy alone."""
    import jax.numpy as jnp
    from vtx.convert import engine, families
    exported = []
    for name in sorted(names or os.listdir(cases_dir)):
        case_dir = os.path.join(cases_dir, name)
        if not os.path.isfile(os.path.join(case_dir, 'manifest.json')):
            continue
        with open(os.path.join(case_dir, 'manifest.json')) as f:
            manifest = json.load(f)
        model_config = dict(families.converter(manifest['family']).model_config_from_manifest(manifest))
        video = to_model_layout(np.load(os.path.join(case_dir, manifest['input']['file'])),
                                manifest['input']['layout'])
        abstract = engine.abstract_params_of(build_model(model_config),
                                             jnp.zeros(video.shape, jnp.float32), train=False)
        params = families.convert_checkpoint(
            manifest['family'], os.path.join(case_dir, manifest['checkpoint']['file']),
            model_config, abstract, log=None)
        target = os.path.join(out_dir, name)
        os.makedirs(target, exist_ok=True)
        np.savez(os.path.join(target, 'params.npz'),
                 **{k: np.asarray(v) for k, v in engine.flatten_params(params).items()})
        np.save(os.path.join(target, 'input.npy'), video)
        shutil.copyfile(os.path.join(case_dir, manifest.get('outputs', {}).get('logits', 'logits.npy')),
                        os.path.join(target, 'logits.npy'))
        with open(os.path.join(target, 'case.json'), 'w') as f:
            json.dump({'model': model_config, 'family': manifest['family'],
                       'tolerance': {**DEFAULT_TOLERANCE, **manifest.get('tolerance', {})}}, f)
        exported.append(name)
    return exported


def run_case(case_dir: str) -> dict:
    """Max error of one exported case against the official logits, at highest precision."""
    from flax import traverse_util
    with open(os.path.join(case_dir, 'case.json')) as f:
        case = json.load(f)
    with np.load(os.path.join(case_dir, 'params.npz')) as stored:
        params = traverse_util.unflatten_dict(dict(stored), sep='/')
    model = build_model({**case['model'], 'dtype': 'float32'})
    with jax.default_matmul_precision('highest'):
        logits = np.asarray(jax.jit(lambda p, v: model.apply({'params': p}, v, train=False))(
            params, np.load(os.path.join(case_dir, 'input.npy'))))
    tol = case['tolerance']
    abs_err, rel_err, passed = _errors(logits, np.load(os.path.join(case_dir, 'logits.npy')),
                                       tol['atol'], tol['rtol'])
    return {'case': os.path.basename(case_dir), 'family': case['family'], 'max_abs_err': abs_err,
            'max_rel_err': rel_err, 'atol': tol['atol'], 'rtol': tol['rtol'], 'passed': passed}


def parity_row(case_dir: str) -> dict:
    """`run_case`, or a failed row naming the error: the device gets one run, so a case that
    cannot run (a jax or flax release that breaks it, say) must not keep the others from running."""
    try:
        return run_case(case_dir)
    except Exception as e:
        try:
            with open(os.path.join(case_dir, 'case.json')) as f:
                family = json.load(f)['family']
        except (OSError, ValueError, KeyError):
            family = '?'
        return {'case': os.path.basename(case_dir), 'family': family, 'passed': False,
                'error': f'{type(e).__name__}: {e}'.splitlines()[0]}


def applicable(name: str, overrides: dict) -> dict:
    """The `overrides` whose field the config of `name` has (a fast path a family lacks is off)."""
    config = vtx_config.get(name)
    return {k: v for k, v in overrides.items() if k.split('.')[1] in config[k.split('.')[0]]}


def speed_runs(smoke: bool) -> list[tuple[str, str, dict]]:
    """(config name, what the run measures, its overrides), in the order they run."""
    size = SMOKE_SIZE if smoke else {}
    names = SMOKE_FAMILIES if smoke else FAMILIES
    fast = {f'model.{k}': v for k, v in FAST_PATHS.items()}
    reference = {f'model.{k}': v for k, v in IMPLEMENTATION_FIELDS.items() if k != 'dtype'}
    runs = []
    for name in names:
        runs.append((name, 'bf16 fast paths on', {**size, **fast, 'model.dtype': 'bfloat16'}))
        if any(field in vtx_config.get(name).model for field in FAST_PATHS):  # else the same run
            runs.append((name, 'bf16 fast paths off',
                         {**size, **reference, 'model.dtype': 'bfloat16'}))
    if smoke:  # the other runs differ only in their overrides
        return runs
    for name in FP32_COMPARED:
        runs.append((name, 'fp32 fast paths on', {**fast, 'model.dtype': 'float32'}))
    runs.append((REMAT_COMPARED, 'bf16 fast paths on + remat',
                 {**fast, 'model.dtype': 'bfloat16', 'model.remat': True}))
    return runs


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device']} x{result['devices']}, jax {result['jax']}; bf16 matmul "
             f"peak {result['peak']['flops_per_sec'] / 1e12:.1f} TFLOP/s "
             f"({result['peak']['size']}^2) before the runs; each run's MFU divides by the faster "
             "of it and a reading after that run's steps.", '',
             '| parity case | family | max abs err | atol | passed |', '|---|---|---|---|---|']
    lines += [f"| {r['case']} | {r['family']} | error: {r['error'][:80]} | | NO |" if 'error' in r
              else f"| {r['case']} | {r['family']} | {r['max_abs_err']:.2e} | {r['atol']:.0e} | "
              f"{'yes' if r['passed'] else 'NO'} |" for r in result['parity']]
    # The device's counter is the process's peak so far (the runtime offers no reset), so it
    # bounds a run from above; XLA's figure is the run's own compiled program.
    lines += ['', '| config | run | clips/device | step ms | clips/s | MFU | peak GiB (XLA) | '
              'device peak so far GiB | compile s |', '|---|---|---|---|---|---|---|---|---|']
    for r in result['speed']:
        if 'error' in r:
            lines.append(f"| {r['config']} | {r['run']} | | error: {r['error'][:80]} | | | | | |")
            continue
        device = r['peak_memory_bytes_device']
        lines.append(
            f"| {r['config']} | {r['run']} | {r['batch'] // r['devices']} | "
            f"{r['step_s_median'] * 1e3:.1f} | {r['clips_per_sec']:.1f} | {100 * r['mfu']:.1f}% | "
            f"{(r['peak_memory_bytes_xla'] or 0) / 2 ** 30:.2f} | "
            f"{'' if device is None else f'{device / 2 ** 30:.2f}'} | {r['compile_s']:.0f} |")
    return '\n'.join(lines) + '\n'


def write(result: dict, out: str):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'accelerator_check.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, 'accelerator_check.md'), 'w') as f:
        f.write(markdown(result))


def check(cases: str, out: str, smoke: bool, batch: int, steps: int, budget_s: float) -> dict:
    start = time.perf_counter()
    result = {'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
              'backend': jax.default_backend(), 'jax': jax.__version__, 'smoke': smoke,
              'xla_flags': os.environ.get('XLA_FLAGS', ''),
              'peak': benchmark.matmul_peak('bfloat16', 64 if smoke else None),
              'parity': [], 'speed': []}
    for name in sorted(os.listdir(cases)):
        if os.path.isfile(os.path.join(cases, name, 'case.json')):
            result['parity'].append(parity_row(os.path.join(cases, name)))
    write(result, out)
    for name, run, overrides in speed_runs(smoke):
        if time.perf_counter() - start > budget_s:
            result['speed'].append({'config': name, 'run': run, 'error': 'skipped: --budget_s spent'})
            continue
        overrides = applicable(name, overrides)
        config = vtx_config.load(name, overrides)
        try:
            measured = benchmark.benchmark(config, batch * jax.device_count(), 'train', 1, steps,
                                           result['peak'])
        except Exception as e:  # an out-of-memory run is a result, not the end of the check
            measured = {'error': f'{type(e).__name__}: {e}'.splitlines()[0]}
        result['speed'].append({'config': name, 'run': run, 'overrides': overrides, **measured})
        write(result, out)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--cases', default=os.environ.get('VTX_DEVICE_CASES', 'build/device_cases'),
                        help='exported parity cases (see --export_cases)')
    parser.add_argument('--export_cases', metavar='OUT',
                        help='convert the official cases of --official_cases into OUT and stop')
    parser.add_argument('--official_cases',
                        default=os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))
    parser.add_argument('--only_cases', default='', help='comma-separated case names to export')
    parser.add_argument('--out', default='accelerator_check')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes (CPU, seconds)')
    parser.add_argument('--batch', type=cli.number(minimum=1), default=8,
                        help='clips per device per train step')
    parser.add_argument('--steps', type=cli.number(minimum=1), default=5,
                        help='timed steps per run')
    parser.add_argument('--budget_s', type=float, default=360.0,
                        help='start no new speed run after this many seconds')
    args = parser.parse_args(argv)
    try:
        if args.export_cases:
            names = [n for n in args.only_cases.split(',') if n] or None
            done = export_cases(args.official_cases, args.export_cases, names)
            print(f'exported {len(done)} cases to {args.export_cases}')
            return
        if not os.path.isdir(args.cases):
            raise VtxError(f'--cases {args.cases}: no such folder; make it with --export_cases '
                           'on a host with torch')
        result = check(args.cases, args.out, args.smoke, args.batch, args.steps, args.budget_s)
    except VtxError as e:
        print(f'vtx: error: {e}', file=sys.stderr)
        sys.exit(2)
    print(markdown(result))
    if not all(r['passed'] for r in result['parity']):
        sys.exit(1)


if __name__ == '__main__':
    main()

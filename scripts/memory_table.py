"""Per-device memory of each zoo config's train step, from XLA's memory analysis, as a markdown
table: does it fit on a 16/24/40/80 GB accelerator?

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python scripts/memory_table.py [--configs a,b] [--per_device_batch 8] [--devices 8]
        [--with_remat] [--json]
    python scripts/memory_table.py --render ROWS.jsonl   # the table of saved --json rows

Each row compiles `vtx.steps.build`'s train step (bfloat16 compute, the accelerators' default;
float32 parameters and AdamW state) for abstract inputs on `--devices` host devices, with
`--per_device_batch` clips per device (8 is the Video Swin, TPS and XViT papers' per-GPU batch)
and one micro-batch, with parameters replicated and FSDP-sharded (and with remat, `--with_remat`). The
figure is arguments + outputs + temporaries - donated aliases of the compiled SPMD program of one
device. It is XLA:CPU's buffer assignment: GPU and TPU compilers fuse differently, so read it as
an estimate (the device check, scripts/accelerator_check.py, measures the real peak).
"""
import argparse
import copy
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from vtx import config as vtx_config  # noqa: E402
from vtx import cli, report  # noqa: E402
from vtx.errors import VtxError  # noqa: E402
from vtx.kernels import backend  # noqa: E402

# One config per family at the size its paper trains (the zoo's full-size representatives).
ZOO = ('swin_tiny_patch244_window877_kinetics400_1k', 'swin_base_patch244_window877_kinetics400_1k',
       'tps_swin_tiny_2D_patch244_k400', 'tokshift_b16_224_8f', 'xvit_k600', 'mvit_b_16x4_k400',
       'stts_mvit_t0_0p6_s4_0p9')
ACCELERATOR_GB = (16, 24, 40, 80)
# A config fits where it needs at most this share of the card: the runtime, cuDNN/cuBLAS
# workspaces and fragmentation take the rest, and the figure is an estimate.
USABLE_SHARE = 0.9
# (remat, param_sharding). Remat is left out unless asked for: XLA:CPU's buffer assignment does
# not show what it saves (on CPU a remat train step measures as large as the plain one, or
# larger), so only a device's own compiler, in the device check, can say.
VARIANTS = ((False, 'replicated'), (False, 'fsdp'))
REMAT_VARIANTS = ((True, 'replicated'), (True, 'fsdp'))


def train_step_bytes(config, per_device_batch: int, devices) -> int:
    """Per-device bytes of one train step of `config` over `devices` (see the module docstring)."""
    built = report.build_steps(config, devices)
    batch = per_device_batch * built.mesh.shape['data']
    fn, args = report.step_call(built, 'train', built.abstract_state,
                                report._abstract_batch(built.config, batch))
    # The table estimates accelerators, where attention never runs in CPU-sized chunks: trace every
    # kernel in its accelerator form, or large attention (Swin's, 236 MB of scores a clip) would
    # look smaller.
    with backend.accelerator_forms():
        return report.peak_memory_bytes(fn.lower(*args).compile())


def rows_for(name: str, config, per_device_batch: int, devices, variants=VARIANTS) -> list[dict]:
    rows = []
    for remat, placement in variants:
        variant = copy.deepcopy(config)
        variant.model.dtype = 'bfloat16'
        variant.mesh.param_sharding = placement
        if 'remat' in variant.model:
            variant.model.remat = remat
        elif remat:
            continue  # the family has no remat switch
        start = time.perf_counter()
        used = train_step_bytes(variant, per_device_batch, devices)
        rows.append({'config': name, 'per_device_batch': per_device_batch, 'devices': len(devices),
                     'remat': remat, 'param_sharding': placement, 'bytes_per_device': used,
                     'compile_s': time.perf_counter() - start})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [f'| config | clips/device | remat | params | GiB/device | fits on (GB, using {USABLE_SHARE:.0%}) |',
             '|---|---|---|---|---|---|']
    for r in rows:
        gib = r['bytes_per_device'] / 2 ** 30
        fits = ', '.join(str(g) for g in ACCELERATOR_GB
                         if r['bytes_per_device'] <= USABLE_SHARE * g * 1e9) or 'none'
        lines.append(f"| {r['config']} | {r['per_device_batch']} | {'yes' if r['remat'] else 'no'} "
                     f"| {r['param_sharding']} over {r['devices']} | {gib:.1f} | {fits} |")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--configs', default=','.join(ZOO), help='comma-separated zoo names')
    parser.add_argument('--per_device_batch', type=cli.number(minimum=1), default=8)
    parser.add_argument('--devices', type=cli.number(minimum=1), default=8,
                        help='devices of the mesh (host devices)')
    parser.add_argument('--with_remat', action='store_true',
                        help='also compile with model.remat=True (see REMAT_VARIANTS)')
    parser.add_argument('--json', action='store_true', help='also print one JSON line per row')
    parser.add_argument('--render', metavar='JSONL',
                        help='print the table of rows saved from --json output, compiling nothing')
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print(markdown([json.loads(line) for line in f if line.startswith('{')]))
        return
    if jax.device_count() < args.devices:
        print(f'vtx: error: --devices {args.devices} but jax sees {jax.device_count()}; set '
              f'XLA_FLAGS=--xla_force_host_platform_device_count={args.devices}', file=sys.stderr)
        sys.exit(2)
    rows = []
    try:
        for name in args.configs.split(','):
            found = rows_for(name, vtx_config.get(name), args.per_device_batch,
                             jax.devices()[:args.devices],
                             VARIANTS + (REMAT_VARIANTS if args.with_remat else ()))
            for row in found:
                if args.json:
                    print(json.dumps(row), flush=True)
            rows += found
    except VtxError as e:
        print(f'vtx: error: {e}', file=sys.stderr)
        sys.exit(2)
    print(markdown(rows))


if __name__ == '__main__':
    main()

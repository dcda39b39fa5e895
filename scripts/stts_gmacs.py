"""XLA-counted GMACs per view of the STTS zoo configs (and plain MViT-B), next to the measured
and published numbers in `parity/full/*.json`, and (with --time) the measured eval time per view
and the speed-up over the unpruned backbone on this machine.

    python scripts/stts_gmacs.py [--full ../shared/parity/full] [--time] [--readme README.md] [config ...]

--readme rewrites the README region between `<!-- stts-table:start -->` and `<!-- stts-table:end -->`.

MACs = `cost_analysis()['flops'] / 2` of the compiled eval forward on one view (the config's clip
length and crop). XLA counts every floating-point op (softmax, norms, GELU, adds), so its figure
sits a little above the official counter, which counts matmuls and convs only.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vtx import cli, families  # noqa: E402
from vtx.models import build_model  # noqa: E402
from vtx import config as vtx_config  # noqa: E402

STTS_FAMILIES = ('mvit', 'stts_video_swin')


def compiled_forward(config):
    model = build_model(config.model)
    d = config.data
    video = jax.ShapeDtypeStruct((1, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32)
    params = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video)['params']
    compiled = jax.jit(lambda p, v: model.apply({'params': p}, v)).lower(params, video).compile()
    return model, video, compiled


def xla_gmacs(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost['flops'] / 2 / 1e9


def seconds_per_view(model, video, compiled, repeats: int) -> float:
    """Median wall time of the compiled eval forward on one view (after one warm-up call)."""
    x = jnp.asarray(jax.random.normal(jax.random.PRNGKey(1), video.shape))
    params = jax.jit(lambda v: model.init(jax.random.PRNGKey(0), v)['params'])(x)
    jax.block_until_ready(compiled(params, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    stts_zoo = [e.config for e in families.zoo_entries(*STTS_FAMILIES)]
    parser.add_argument('configs', nargs='*', default=stts_zoo, help='config modules (configs/)')
    parser.add_argument('--full', default=os.path.join(REPO, '..', 'shared', 'parity', 'full'),
                        help='folder of the parity/full/*.json entries')
    parser.add_argument('--time', action='store_true', help='also time the eval forward')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--readme', help='write the table into this README')
    args = parser.parse_args(argv)
    backbone_seconds = {}
    lines = ['| config | XLA GMACs | official GMACs | published GFLOPs | s / view | speed-up vs backbone |',
             '|---|---|---|---|---|---|']
    for name in args.configs:
        if name not in stts_zoo:
            parser.error(f'{name!r} is not an STTS zoo config; choose from {sorted(stts_zoo)}')
        family, zoo = families.find_in_zoo(name)
        config = vtx_config.get(name)
        model, video, compiled = compiled_forward(config)
        ours = xla_gmacs(compiled)
        with open(os.path.join(args.full, zoo.official_model + '.json')) as f:
            entry = json.load(f)
        measured = entry['flops_measured']['gmacs']
        published = (entry.get('published') or {}).get('gflops')
        seconds, speedup = '-', '-'
        if args.time:
            t = seconds_per_view(model, video, compiled, args.repeats)
            backbone = family.unpruned_backbone
            if backbone != name and backbone not in backbone_seconds:
                base = vtx_config.get(backbone)
                backbone_seconds[backbone] = seconds_per_view(*compiled_forward(base), args.repeats)
            seconds = f'{t:.2f}'
            speedup = (f'{backbone_seconds[backbone] / t:.2f}x' if backbone != name
                       else '1.00x (backbone)')
        lines.append(f"| {name} | {ours:.1f} | {measured:.1f} | "
                     f"{published if published is not None else '-'} | {seconds} | {speedup} |")
        print(lines[-1], flush=True)
    if args.readme:
        from scripts.render_model_table import replace_region
        table = '\n'.join(lines)
        with open(args.readme) as f:
            text = f.read()
        text = replace_region(text, table, args.readme, '<!-- stts-table:start -->',
                              '<!-- stts-table:end -->')
        with open(args.readme, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()

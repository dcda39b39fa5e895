"""XLA-counted GMACs per view of the STTS zoo configs (and plain MViT-B), next to the measured
and published numbers in `parity/full/*.json`.

    python scripts/stts_gmacs.py [--full ../shared/parity/full] [config_module ...]

MACs = `cost_analysis()['flops'] / 2` of the compiled eval forward on one view (the config's clip
length and crop). XLA counts every floating-point op (softmax, norms, GELU, adds), so its figure
sits a little above the official counter, which counts matmuls and convs only.
"""
import argparse
import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vtx.models import build_model  # noqa: E402

# config module -> parity/full entry
ZOO = {
    'mvit_b_16x4_k400': 'MViT-B_16x4_plain_no_selection',
    'stts_mvit_t0_0p9_s4_0p9': 'MViT-T0_0.9-S4_0.9',
    'stts_mvit_t0_0p8_s4_0p9': 'MViT-T0_0.8-S4_0.9',
    'stts_mvit_t0_0p6_s4_0p9': 'MViT-T0_0.6-S4_0.9',
    'stts_mvit_t0_0p5_s4_0p7': 'MViT-T0_0.5-S4_0.7',
    'stts_mvit_t0_0p4_s4_0p6': 'MViT-T0_0.4-S4_0.6',
    'stts_videoswin_t0_0p9': 'VideoSwin-T0_0.9',
    'stts_videoswin_t0_0p8': 'VideoSwin-T0_0.8',
    'stts_videoswin_t0_0p6': 'VideoSwin-T0_0.6',
    'stts_videoswin_t0_0p5': 'VideoSwin-T0_0.5',
    'stts_videoswin_t0_0p4': 'VideoSwin-T0_0.4',
}


def xla_gmacs(config) -> float:
    model = build_model(config.model)
    d = config.data
    video = jax.ShapeDtypeStruct((1, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32)
    params = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video)['params']
    compiled = jax.jit(lambda p, v: model.apply({'params': p}, v)).lower(params, video).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost['flops'] / 2 / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*', default=list(ZOO), help='config modules (configs/)')
    parser.add_argument('--full', default=os.path.join(REPO, '..', 'shared', 'parity', 'full'),
                        help='folder of the parity/full/*.json entries')
    args = parser.parse_args(argv)
    print(f'{"config":28s} {"XLA GMACs":>10s} {"measured":>9s} {"ratio":>6s} {"README":>7s}')
    for name in args.configs:
        if name not in ZOO:
            parser.error(f'{name!r} is not an STTS zoo config; choose from {sorted(ZOO)}')
        config = importlib.import_module(f'configs.{name}').get_config()
        ours = xla_gmacs(config)
        with open(os.path.join(args.full, ZOO[name] + '.json')) as f:
            entry = json.load(f)
        measured = entry['flops_measured']['gmacs']
        published = (entry.get('published') or {}).get('gflops')
        print(f'{name:28s} {ours:10.2f} {measured:9.2f} {ours / measured:6.3f} '
              f'{published if published is not None else "-":>7}', flush=True)


if __name__ == '__main__':
    main()

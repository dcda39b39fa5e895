"""The pictures of docs/explain.md and the README, made with the documented commands:

    python scripts/explain_pictures.py --tokshift WORKDIR --baseline WORKDIR [--out docs/images]

WORKDIRs: the demo's TokShift and video-ViT baseline runs (`python scripts/demo_report.py`, or
`vtx-train --config demo` with and without `--config.model.temporal=none`). It writes
  - demo_curves.png: `vtx-plot TokShift=... video-ViT=...`;
  - demo_right.png: `vtx-predict --explain` of the trained TokShift on a demo video (a square
    moving right; lossless FFV1 so the model sees the generated pixels), attention rollout;
  - stts_random_weights.png: `vtx-predict --explain` of a tiny STTS-MViT with RANDOM weights on the
    same video, with the keep ratios set at inference: it shows what the selection overlay draws,
    not what a trained selector keeps.
"""
import argparse
import fractions
import os
import subprocess
import sys
import tempfile

import av
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vtx import cli  # noqa: E402
from vtx.data import synthetic  # noqa: E402

# A tiny STTS-MViT on the demo's 8 frames enlarged to 64x64: 4 patch frames, a 16x16 token grid
# pooled to 8x8 by block 1; block 0 selects frames, block 2 one window per kept frame.
STTS_TINY = ("""from vtx import config


def get_config():
    c = config.get('stts_mvit_t0_0p6_s4_0p9')
    c.model.update(dict(num_classes=4, num_frames=8, image_size=64, embed_dim=16, depth=4,
                        dim_mul=((1, 2.0),), head_mul=((1, 2.0),), pool_q_stride=((1, 1, 2, 2),),
                        pool_kv_stride_adaptive=(1, 4, 4), time_pruning_loc=0, space_pruning_loc=2))
    c.data.update(dict(num_classes=4, num_frames=8, stride=1, min_resize=64, crop_size=64,
                       eval_num_clips=1, eval_num_crops=1, shard_short_side=0))
    return c
""")


def write_video(path: str, frames: np.ndarray, fps: int = 10) -> str:
    """uint8 [T, H, W, 3] -> a lossless FFV1 video (PyAV)."""
    with av.open(path, 'w') as container:
        stream = container.add_stream('ffv1', rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'bgr0'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode(None))
    return path


def run(*args):
    print('+', ' '.join(args), flush=True)
    subprocess.run([sys.executable, '-m', *args], cwd=REPO, check=True)


def random_tiny_stts(config_file: str, folder: str) -> None:
    """A params checkpoint of the tiny STTS-MViT with random (initial) weights."""
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from vtx import checkpoint
    from vtx import config as vtx_config
    from vtx.models import build_model
    config = vtx_config.load(config_file)
    model = build_model(config.model)
    video = jnp.zeros((1, 8, 64, 64, 3))
    params = meta.unbox(jax.jit(lambda v: model.init(jax.random.PRNGKey(0), v))(video)['params'])
    checkpoint.save_params(folder, params, config.model.to_dict())


def main(argv=None):
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--tokshift', required=True, help="the demo TokShift's workdir")
    parser.add_argument('--baseline', required=True, help="the demo video-ViT baseline's workdir")
    parser.add_argument('--out', default=os.path.join(REPO, 'docs', 'images'))
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    run('vtx.plot', f'TokShift={args.tokshift}', f'video-ViT baseline={args.baseline}',
        f'--out={os.path.join(out, "demo_curves.png")}')
    with tempfile.TemporaryDirectory() as tmp:
        labels = os.path.join(tmp, 'labels.txt')
        with open(labels, 'w') as f:
            f.write('\n'.join(synthetic.CLASSES) + '\n')
        frames = synthetic.make_video(synthetic.MotionSpec(), synthetic.CLASSES.index('right'),
                                      np.random.default_rng(7))
        video = write_video(os.path.join(tmp, 'demo_right.mkv'), frames)
        run('vtx.predict', '--config=demo', f'--checkpoint={args.tokshift}',
            f'--labels={labels}', f'--explain={out}', video)
        config_file = os.path.join(tmp, 'stts_random_weights.py')
        with open(config_file, 'w') as f:
            f.write(STTS_TINY)
        random_tiny_stts(config_file, os.path.join(tmp, 'stts_params'))
        stts_video = os.path.join(tmp, 'stts_random_weights.mkv')
        os.link(video, stts_video)
        run('vtx.predict', f'--config={config_file}', f'--checkpoint={tmp}/stts_params',
            '--config.model.time_left_ratio=0.5', '--config.model.space_left_ratio=0.4',
            f'--explain={out}', stts_video)


if __name__ == '__main__':
    main()

"""Throughput of the train input pipeline: clips/s and frames/s, in total and per CPU core.

Runs on the motion demo shards (32x32 frames) and on generated shards with a 256 short side
(Kinetics-like JPEGs, decoded and cropped to 224), or on your own shards with --shards.

    PYTHONPATH=. python scripts/benchmark_input.py [--batches 20] [--shards 'glob' --num_classes K]
"""
import argparse
import os
import tempfile
import time

import numpy as np


def _write_large_shards(folder: str, num_videos: int, num_frames: int):
    """Smooth moving content at 256x340 (JPEG sizes like real video frames, unlike noise)."""
    import tensorflow as tf

    from vtx.data import dmvr

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:256, 0:340]
    path = os.path.join(folder, 'large-00000-of-00001')
    with tf.io.TFRecordWriter(path) as writer:
        for v in range(num_videos):
            colours = rng.uniform(0, 255, (3, 3))
            jpegs = []
            for t in range(num_frames):
                phase = (xs + 3 * t) / 40.0 + ys / 60.0
                frame = np.stack([c[0] + c[1] * np.sin(phase + c[2]) for c in colours], -1)
                frame[100:160, (5 * t) % 280:(5 * t) % 280 + 60] = 255
                frame += rng.normal(0, 4, frame.shape)
                jpegs.append(tf.io.encode_jpeg(np.clip(frame, 0, 255).astype(np.uint8),
                                               quality=90).numpy())
            writer.write(dmvr.make_sequence_example(jpegs, v % 10, str(v % 10), f'v{v}', 0,
                                                    0).SerializeToString())
    return path


def measure(data_config, batch_size: int, num_batches: int, warmup: int = 3):
    from vtx.data import pipeline

    batches = pipeline.train_batches(data_config, global_batch_size=batch_size, seed=0)
    for _ in range(warmup):  # tf.data autotuning and the first decodes
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(batches)
    seconds = time.perf_counter() - start
    clips = batch_size * num_batches / seconds
    return clips, clips * batch['image'].shape[1]


def main(argv=None):
    from vtx import cli
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--batch_size', type=int, default=8)
    parser.add_argument('--shards', default='', help='measure these shards instead')
    parser.add_argument('--num_classes', type=int, default=400)
    parser.add_argument('--num_frames', type=int, default=16)
    parser.add_argument('--stride', type=int, default=2)
    args = parser.parse_args(argv)

    from vtx import config as vtx_config
    from vtx.data import synthetic

    cores = len(os.sched_getaffinity(0))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = vtx_config.defaults().data
        demo.synthetic, demo.num_classes = 'motion', 4
        demo.train_shards = os.path.join(tmp, 'train-*-of-*')
        demo.eval_shards = os.path.join(tmp, 'eval-*-of-*')
        demo.synthetic_num_train, demo.synthetic_num_eval = 256, 4
        demo.num_frames, demo.stride = 8, 2
        demo.min_resize, demo.crop_size, demo.train_scale_range = 32, 32, (32, 32)
        demo.random_flip = False
        synthetic.ensure(demo)
        runs.append(('motion demo, 8x32x32', demo))

        large = vtx_config.defaults().data
        large.num_classes = args.num_classes if args.shards else 10
        large.train_shards = args.shards or _write_large_shards(tmp, 24, 2 * args.num_frames)
        large.num_frames, large.stride = args.num_frames, args.stride
        large.min_resize, large.crop_size, large.train_scale_range = 256, 224, (256, 320)
        runs.append((f'{"your shards" if args.shards else "256-short-side JPEGs"}, '
                     f'{args.num_frames}x224x224', large))

        print(f'{cores} CPU cores, batch {args.batch_size}, {args.batches} batches timed')
        for name, config in runs:
            clips, frames = measure(config, args.batch_size, args.batches)
            print(f'{name}: {clips:8.1f} clips/s {frames:9.1f} frames/s | per core '
                  f'{clips / cores:7.1f} clips/s {frames / cores:8.1f} frames/s')


if __name__ == '__main__':
    main()

"""Throughput of the exact test protocols (decode + views, no model): videos/s on one core.

Makes one Kinetics-like video (10 s at 30 fps, 340x256, h264 by PyAV), its XViT-style `.h5`
(one Pillow JPEG per frame, quality 95) and a TokShift frame folder, then times each zoo
protocol at full size in this process (one worker = one core; `config.data.eval_workers` runs
one such worker per core). Prints the host's XLA and torch matmul rates measured in the same run.

    PYTHONPATH=. python scripts/protocol_throughput.py [--repeats 3]
"""
import argparse
import io
import os
import platform
import tempfile
import time

import numpy as np

ZOO = {'mmaction': 'swin_tiny_patch244_window877_kinetics400_1k', 'slowfast_xvit': 'xvit_k400',
       'slowfast_stts': 'mvit_b_16x4_k400', 'tokshift': 'tokshift_b16_224_8f'}


def write_inputs(folder: str, num_frames: int = 300, size=(340, 256)):
    import av
    import h5py
    from PIL import Image

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    frames = []
    for t in range(num_frames):
        phase = (xs + 3 * t) / 40.0 + ys / 60.0
        frame = np.stack([120 + 100 * np.sin(phase + c) for c in range(3)], -1)
        frame[100:160, (5 * t) % 280:(5 * t) % 280 + 60] = 255
        frames.append(np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8))
    video = os.path.join(folder, 'video.mp4')
    with av.open(video, 'w') as container:
        stream = container.add_stream('libx264', rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], 'yuv420p'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode(None))
    jpegs = []
    os.makedirs(os.path.join(folder, 'frames'))
    for i, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, 'JPEG', quality=95)
        jpegs.append(buffer.getvalue())
        with open(os.path.join(folder, 'frames', f'img_{i + 1:05d}.jpg'), 'wb') as f:
            f.write(buffer.getvalue())
    h5 = os.path.join(folder, 'video.h5')
    with h5py.File(h5, 'w') as f:
        data = f.create_dataset('video', (len(jpegs),), dtype=h5py.vlen_dtype(np.uint8))
        for i, jpeg in enumerate(jpegs):
            data[i] = np.frombuffer(jpeg, np.uint8)
    return {'mmaction': video, 'slowfast_stts': video, 'slowfast_xvit': h5,
            'tokshift': os.path.join(folder, 'frames')}


def main(argv=None):
    from vtx import cli
    parser = argparse.ArgumentParser(description=cli.summary(__doc__))
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    from vtx import benchmark, config
    from vtx.data import protocols, video_sources

    print(f'host: {platform.node()} {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} cores')
    torch_peak = benchmark.torch_matmul_peak() or {'flops_per_sec': 0.0}
    print(f"XLA matmul peak {benchmark.matmul_peak('float32')['flops_per_sec'] / 1e9:.0f} GFLOP/s"
          f", torch.matmul 2048^2 {torch_peak['flops_per_sec'] / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as folder:
        inputs = write_inputs(folder)
        for name, zoo in ZOO.items():
            s = protocols.settings(config.load(zoo).data)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                video = video_sources.open_video(inputs[name], name)
                _, views = protocols.video_views(video, s)
                times.append(time.perf_counter() - start)
            best = min(times)
            print(f'{name:14s} ({zoo}, {s.num_views} views {tuple(views.shape[1:])}): '
                  f'{best:.2f} s/video -> {1 / best:.2f} videos/s per core')


if __name__ == '__main__':
    main()

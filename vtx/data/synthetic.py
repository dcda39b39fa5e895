"""The built-in 'motion' demo dataset: the class is the direction a square moves, and nothing else.

Each video shows a small target square moving left, right, up or down at a constant speed on a
torus (it wraps around the frame edges), in a random colour on a random background with pixel
noise; optional distractor squares of other sizes jitter with no consistent direction. Start
positions are uniform on the torus, so every single frame has the same content distribution for
all four classes: a per-frame model stays at chance and only a model that compares frames can
learn the task.

The defaults (16x16 frames, a 2 px target moving 1 px per frame) suit a patch-4 ViT: a target
narrower than a patch, moving by less than half a patch, changes each patch's content
differently for +1 and -1 px, which is what lets a small model read the direction early in
training. (A target as wide as a patch, or a step of half a patch, looks the same either way.)

Suggested data settings: num_classes=4, min_resize=crop_size=frame size, train_scale_range=(size,
size), random_flip=False (a left-right flip turns 'left' into 'right').

    vtx-demo-data --out /tmp/motion                       # train-0000i-of-00004, eval-...
Videos are a function of (seed, split, index) only, so any sharding gives the same data.
"""
import argparse
import dataclasses
import glob
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vtx import cli
from vtx.errors import VtxError

CLASSES = ('left', 'right', 'up', 'down')
_DIRECTIONS = {'left': (0, -1), 'right': (0, 1), 'up': (-1, 0), 'down': (1, 0)}  # (dy, dx)
_SPLITS = {'train': 0, 'eval': 1}


@dataclasses.dataclass
class MotionSpec:
    frame_size: int = 16
    num_frames: int = 16          # stored frames per video
    target_size: int = 2
    speed: tuple = (1, 1)         # px per frame, drawn per video from [low, high]
    num_distractors: tuple = (0, 0)
    distractor_sizes: tuple = (3, 5)  # never the target's size
    jitter: int = 2               # distractors move up to this many px per axis per frame
    noise: float = 6.0            # std of Gaussian pixel noise (levels)
    jpeg_quality: int = 95        # with full-resolution chroma: the target is 2 px wide

    def check(self, name=lambda field: field) -> 'MotionSpec':
        """Itself, or VtxError naming the first setting (as `name(field)` calls it: a flag, a
        config key) with which the videos would not show one target moving in its direction."""

        def low_high(pair, low):
            return len(pair) == 2 and low <= pair[0] <= pair[1]
        rules = (
            ('frame_size', self.frame_size >= 1, 'at least 1'),
            ('num_frames', self.num_frames >= 2, 'at least 2 frames, for motion to show'),
            ('target_size', 1 <= self.target_size <= self.frame_size,
             f'1 to the frame size ({self.frame_size})'),
            ('target_size', max(self.num_distractors, default=0) == 0
             or self.target_size not in self.distractor_sizes,
             f'a size other than the distractors\' {self.distractor_sizes}'),
            ('speed', low_high(self.speed, 1),
             '(LOW, HIGH) with 1 <= LOW <= HIGH: a target that stands still shows no direction'),
            ('num_distractors', low_high(self.num_distractors, 0),
             '(LOW, HIGH) with 0 <= LOW <= HIGH'),
            ('jitter', self.jitter >= 0, 'at least 0'),
            ('noise', self.noise >= 0, 'at least 0'))
        for field, holds, expected in rules:
            if not holds:
                raise VtxError(f'{name(field)}={getattr(self, field)!r}: expected {expected}')
        return self


def make_video(spec: MotionSpec, label: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, S, S, 3] showing the target moving in direction CLASSES[label]."""
    size, t = spec.frame_size, spec.num_frames
    background = rng.uniform(0, 120, 3)
    video = np.broadcast_to(background, (t, size, size, 3)).copy()
    squares = []
    for _ in range(rng.integers(spec.num_distractors[0], spec.num_distractors[1] + 1)):
        steps = rng.integers(-spec.jitter, spec.jitter + 1, (t, 2))
        steps[0] = rng.integers(0, size, 2)  # the start; later rows are the jitter
        squares.append((int(rng.choice(spec.distractor_sizes)), np.cumsum(steps, axis=0),
                        rng.uniform(60, 255, 3)))
    speed = rng.integers(spec.speed[0], spec.speed[1] + 1)
    direction = np.array(_DIRECTIONS[CLASSES[label]])
    path = rng.integers(0, size, 2) + np.arange(t)[:, None] * speed * direction
    squares.append((spec.target_size, path, rng.uniform(60, 255, 3)))  # drawn last, on top
    span = np.arange(size)
    for side, positions, colour in squares:
        for frame, (y, x) in zip(video, positions):
            rows, cols = (y + span[:side]) % size, (x + span[:side]) % size  # toroidal wrap
            frame[np.ix_(rows, cols)] = colour
    video += rng.normal(0, spec.noise, video.shape)
    return np.clip(np.round(video), 0, 255).astype(np.uint8)


def _video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLITS[split], index])


def write_split(out_dir: str, prefix: str, split: str, num_videos: int, num_shards: int,
                spec: MotionSpec, seed: int = 0) -> list:
    """Writes `prefix-0000i-of-0000n` shards (video v -> shard v % n, as DMVR); returns paths."""
    from vtx.data.tf_on_host import tf

    from vtx.data import dmvr

    os.makedirs(out_dir, exist_ok=True)
    num_shards = max(1, min(num_shards, num_videos))
    paths = [os.path.join(out_dir, f'{prefix}-{i:05d}-of-{num_shards:05d}')
             for i in range(num_shards)]

    def write_shard(shard):
        # Written under a hidden name and renamed when complete, so that an interrupted run
        # never leaves files that match the shard glob.
        partial = os.path.join(out_dir, '.incomplete-' + os.path.basename(paths[shard]))
        with tf.io.TFRecordWriter(partial) as writer:
            for index in range(shard, num_videos, num_shards):
                rng = _video_rng(seed, split, index)
                label = int(rng.integers(len(CLASSES)))
                video = make_video(spec, label, rng)
                jpegs = [tf.io.encode_jpeg(frame, quality=spec.jpeg_quality,
                                           chroma_downsampling=False).numpy()
                         for frame in video]
                end_us = int(1e6 * spec.num_frames / 10)  # nominally 10 fps, like DMVR's shards
                example = dmvr.make_sequence_example(jpegs, label, CLASSES[label],
                                                     f'motion/{split}/{index:06d}', 0, end_us)
                writer.write(example.SerializeToString())
        os.replace(partial, paths[shard])

    with ThreadPoolExecutor(max_workers=min(num_shards, os.cpu_count() or 1)) as pool:
        list(pool.map(write_shard, range(num_shards)))  # list() re-raises worker errors
    return paths


# MotionSpec's fields that a config sets, and their keys in config.data.
_CONFIG_KEYS = {'frame_size': 'synthetic_frame_size', 'num_frames': 'synthetic_num_stored_frames',
                'target_size': 'synthetic_target_size', 'speed': 'synthetic_speed',
                'num_distractors': 'synthetic_num_distractors', 'jitter': 'synthetic_jitter',
                'noise': 'synthetic_noise'}


def _spec_from_config(data_config) -> MotionSpec:
    defaults, settings = MotionSpec(), {}
    for field, key in _CONFIG_KEYS.items():
        default = getattr(defaults, field)
        value = data_config.get(key, default)
        try:
            settings[field] = type(default)(value)
        except (TypeError, ValueError):
            raise VtxError(f'config.data.{key}={value!r}: expected a {type(default).__name__} '
                           f'such as {default!r}') from None
    return MotionSpec(**settings).check(lambda field: f'config.data.{_CONFIG_KEYS[field]}')


def _split_target(pattern: str, field: str, split: str):
    """A shard glob -> (folder, shard-name prefix), e.g. '/d/train-*-of-*' -> ('/d', 'train')."""
    if not pattern or ',' in pattern:
        raise VtxError(f"{field}={pattern!r}: the synthetic dataset needs one glob such as "
                       f"'/tmp/motion/{split}-*-of-*'")
    folder, name = os.path.split(pattern)
    prefix = re.split(r'[*?\[]', name, maxsplit=1)[0].rstrip('-_.') or split
    return folder or '.', prefix


def ensure(data_config) -> None:
    """Generates the 'motion' train and eval shards at `data.train_shards` / `data.eval_shards`
    when those globs match nothing; does nothing for globs that already match files."""
    from vtx.data.tf_on_host import tf

    if data_config.synthetic != 'motion':
        raise VtxError(f"config.data.synthetic={data_config.synthetic!r}: the only built-in "
                       "synthetic dataset is 'motion'")
    if data_config.num_classes != len(CLASSES):
        raise VtxError(f'config.data.num_classes={data_config.num_classes}: the motion dataset '
                       f'has {len(CLASSES)} classes {CLASSES}')
    spec = _spec_from_config(data_config)
    seed = int(data_config.get('synthetic_seed', 0))
    num_shards = int(data_config.get('synthetic_num_shards', 4))
    if num_shards < 1:
        raise VtxError(f'config.data.synthetic_num_shards={num_shards}: expected at least 1')
    for split, default_count in (('train', 2000), ('eval', 400)):
        field = f'{split}_shards'
        pattern = data_config[field]
        folder, prefix = _split_target(pattern, f'config.data.{field}', split)
        count = int(data_config.get(f'synthetic_num_{split}', default_count))
        if count < 1:
            raise VtxError(f'config.data.synthetic_num_{split}={count}: expected at least 1 video')
        # What the shards hold is recorded beside them, so changed settings are never mixed up
        # with shards made from other ones.
        made_with = json.dumps({'spec': dataclasses.asdict(spec), 'seed': seed, 'count': count},
                               sort_keys=True)
        record = os.path.join(folder, f'{prefix}.motion.json')
        # Present from the first shard written until the record is: a set that has it was
        # interrupted and is made again, never used half-made.
        generating = record + '.generating'
        if os.path.exists(generating):
            print(f'vtx: the synthetic {split} set in {folder} was interrupted while being '
                  'generated; generating it again', file=sys.stderr)
            for stale in glob.glob(os.path.join(glob.escape(folder), f'{glob.escape(prefix)}-*-of-*')):
                os.remove(stale)
        elif tf.io.gfile.glob(pattern):
            if not os.path.exists(record):
                raise VtxError(f'{pattern} matches shards that the synthetic generator did not '
                               f'finish ({record} is missing); delete them or set '
                               f'config.data.{field} to a new folder')
            if open(record).read() != made_with:
                raise VtxError(f'the shards {pattern} were generated with other synthetic settings '
                               f'({record}); delete them or set config.data.{field} to a new folder')
            continue
        os.makedirs(folder, exist_ok=True)
        with open(generating, 'w') as f:
            f.write(made_with)
        write_split(folder, prefix, split, count, num_shards, spec, seed)
        with open(record + '.tmp', 'w') as f:
            f.write(made_with)
        os.replace(record + '.tmp', record)
        os.remove(generating)
        if not tf.io.gfile.glob(pattern):
            raise VtxError(f"config.data.{field}={pattern!r} does not match the shards written "
                           f"as {folder}/{prefix}-0000i-of-0000n; use a glob like "
                           f"'{folder}/{prefix}-*-of-*'")


@cli.command
def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-demo-data',
                                     description=cli.summary(__doc__))
    defaults = MotionSpec()
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--num_train', type=cli.number(minimum=1), default=2000)
    parser.add_argument('--num_eval', type=cli.number(minimum=1), default=400)
    parser.add_argument('--num_shards', type=cli.number(minimum=1), default=4,
                        help='shards per split')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--frame_size', type=int, default=defaults.frame_size)
    parser.add_argument('--num_frames', type=int, default=defaults.num_frames)
    parser.add_argument('--target_size', type=int, default=defaults.target_size)
    parser.add_argument('--speed', type=int, nargs=2, default=defaults.speed,
                        metavar=('LOW', 'HIGH'), help='px per frame, per video from [LOW, HIGH]')
    parser.add_argument('--num_distractors', type=int, nargs=2, default=defaults.num_distractors,
                        metavar=('LOW', 'HIGH'))
    parser.add_argument('--jitter', type=int, default=defaults.jitter)
    parser.add_argument('--noise', type=float, default=defaults.noise)
    args = parser.parse_args(argv)
    try:
        spec = MotionSpec(frame_size=args.frame_size, num_frames=args.num_frames,
                          target_size=args.target_size, speed=tuple(args.speed),
                          num_distractors=tuple(args.num_distractors), jitter=args.jitter,
                          noise=args.noise).check(lambda field: f'--{field}')
    except VtxError as e:
        parser.error(str(e))
    for split, count in (('train', args.num_train), ('eval', args.num_eval)):
        paths = write_split(args.out, split, split, count, args.num_shards, spec, args.seed)
        print(f'{split}: {count} videos in {len(paths)} shards: {args.out}/{split}-*-of-*')


if __name__ == '__main__':
    main()

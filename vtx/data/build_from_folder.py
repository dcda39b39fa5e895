"""Shards from a folder of your own videos, one subfolder per class: ROOT/<class name>/<video>.

    vtx-shards-from-folder --root my_videos --output_dir my_shards [--val_fraction 0.2]

Writes `train-*-of-*` and `val-*-of-*` shards, `labels.txt` (the class names in index order: the
subfolder names, sorted) and `dataset.json`, which a run reads with
`--config.data.dataset=my_shards` (shards, class count and names, train-set size, how the frames
were stored). The split is made per class, so every class is in both parts, and is the same on
every run with the same --seed. A video that cannot be decoded is named and skipped.
"""
import argparse
import json
import os
import random
import sys
from typing import Dict, List, Tuple

from vtx import cli
from vtx.data import shards

DATASET_FILE = 'dataset.json'
LABELS_FILE = 'labels.txt'


def find_videos(root: str) -> Dict[str, List[str]]:
    """{class name: [video paths relative to root]} for every non-hidden file of each subfolder."""
    if not os.path.isdir(root):
        raise SystemExit(f'--root {root}: no such folder')
    classes = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if name.startswith('.') or not os.path.isdir(folder):
            continue
        videos = sorted(os.path.join(name, f) for f in os.listdir(folder)
                        if not f.startswith('.') and os.path.isfile(os.path.join(folder, f)))
        if videos:
            classes[name] = videos
    if len(classes) < 2:
        raise SystemExit(f'--root {root}: expected one subfolder of videos per class and at least '
                         f'two classes, found {len(classes)} ({", ".join(classes) or "none"})')
    return classes


def split(classes: Dict[str, List[str]], val_fraction: float,
          seed: int) -> Tuple[List[Tuple[str, int]], List[Tuple[str, int]]]:
    """(train, val) lists of (video, class index): per class, a seeded shuffle, the first
    round(n * val_fraction) videos (at least one where the class has two) to val."""
    rng = random.Random(seed)
    train, val = [], []
    for index, (name, videos) in enumerate(sorted(classes.items())):
        videos = list(videos)
        rng.shuffle(videos)
        n_val = round(len(videos) * val_fraction)
        if val_fraction > 0 and len(videos) > 1:
            n_val = min(max(n_val, 1), len(videos) - 1)
        val += [(v, index) for v in videos[:n_val]]
        train += [(v, index) for v in videos[n_val:]]
    return train, val


@cli.command
def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-shards-from-folder',
                                     description=cli.summary(__doc__))
    parser.add_argument('--root', required=True, help='one subfolder of videos per class')
    parser.add_argument('--val_fraction', type=float, default=0.2,
                        help='share of each class held out for evaluation (0: no val split)')
    parser.add_argument('--seed', type=int, default=0, help='of the train/val split')
    shards.add_common_flags(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        parser.error(f'--val_fraction {args.val_fraction}: expected a number in [0, 1)')
    classes = find_videos(args.root)
    names = sorted(classes)
    train, val = split(classes, args.val_fraction, args.seed)
    settings = shards.settings_from_flags(args)
    os.makedirs(args.output_dir, exist_ok=True)
    counts = {}
    for part, items in (('train', train), ('val', val)):
        if not items:
            continue
        rows = [shards.Row(source=os.path.join(args.root, video), label_index=label,
                           label_text=names[label], filename=video) for video, label in items]
        paths = shards.build(rows, args.output_dir, part, settings, args.num_shards,
                             args.workers, args.verify)
        from vtx.data import pipeline
        counts[part] = {'pattern': f'{part}-*-of-{len(paths):05d}',
                        'videos': sum(pipeline.count_records(p) for p in paths)}
    with open(os.path.join(args.output_dir, LABELS_FILE), 'w') as f:
        f.write(''.join(name + '\n' for name in names))
    dataset = {'format': 'vtx-folder-dataset-v1', 'root': os.path.abspath(args.root),
               'num_classes': len(names), 'labels': LABELS_FILE, **counts,
               'shard_short_side': settings.short_side, 'shard_fps': settings.fps or 0.0,
               'shard_qscale': settings.qscale}
    with open(os.path.join(args.output_dir, DATASET_FILE), 'w') as f:
        json.dump(dataset, f, indent=1)
    print(f'{len(names)} classes; train {counts.get("train", {}).get("videos", 0)} videos, val '
          f'{counts.get("val", {}).get("videos", 0)}. Train on it with '
          f'--config.data.dataset={args.output_dir}', file=sys.stderr)
    return dataset


if __name__ == '__main__':
    main()

"""Shards from a folder of videos and a DMVR-generator CSV.

The CSV has a header with `video_path` and optionally `label` (a class name), `start` and `end`
(seconds), the format of DMVR's `generate_from_file.py`. Labels are indexed by sorted name unless
`--label_map` fixes the map (use the same one for train and test); the map is saved next to the
shards as `<name>_label_map.json`.

    vtx-shards-from-csv --csv train.csv --video_root /videos --output_dir /shards
"""
import argparse
import csv
import json
import os

from vtx import cli
from vtx.data import shards


def read_rows(csv_path: str, video_root: str, label_map_file: str = ''):
    with shards.opened(csv_path, '--csv', newline='') as f:
        table = list(csv.DictReader(f))
    if not table or 'video_path' not in table[0]:
        raise SystemExit(f'{csv_path}: expected a header with video_path[,start,end,label]')
    names = [r['label'] for r in table if r.get('label')]
    mapping = shards.label_map_from_names(names, label_map_file) if names else {}
    rows = []
    for number, r in enumerate(table, 2):   # line 1 is the header
        label = r.get('label') or None
        try:
            start, end = (float(r[key]) if r.get(key) else None for key in ('start', 'end'))
        except ValueError:
            raise SystemExit(f'{csv_path}:{number}: start and end are seconds, got '
                             f'{r.get("start")!r} and {r.get("end")!r}') from None
        rows.append(shards.Row(
            source=os.path.join(video_root, r['video_path']) if video_root else r['video_path'],
            label_index=mapping[label] if label else None, label_text=label,
            start=start, end=end))
    return rows, mapping


@cli.command
def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-shards-from-csv',
                                     description=cli.summary(__doc__))
    parser.add_argument('--csv', required=True)
    parser.add_argument('--video_root', default='', help='prefix for the CSV video paths')
    parser.add_argument('--label_map', default='',
                        help='json {name: index} or one name per line (line i -> index i)')
    shards.add_common_flags(parser)
    args = parser.parse_args(argv)
    rows, mapping = read_rows(args.csv, args.video_root, args.label_map)
    name = args.name or os.path.splitext(os.path.basename(args.csv))[0]
    paths = shards.build(rows, args.output_dir, name, shards.settings_from_flags(args),
                         args.num_shards, args.workers, args.verify)
    if mapping:
        with open(os.path.join(args.output_dir, f'{name}_label_map.json'), 'w') as f:
            json.dump(mapping, f, indent=1)
    return paths


if __name__ == '__main__':
    main()

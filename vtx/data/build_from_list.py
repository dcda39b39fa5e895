r"""Shards from a SlowFast / XViT-style list: one `path label` line per video (integer label).

    vtx-shards-from-list --list val.csv --video_root /kinetics --output_dir /shards \
        --class_names classes.txt
"""
import argparse
import os

from vtx import cli
from vtx.data import shards


def read_rows(list_path: str, video_root: str, names=None, separator=None):
    rows = []
    with shards.opened(list_path, '--list') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().rsplit(separator, 1)
            if len(fields) != 2 or not fields[1].strip().lstrip('-').isdigit():
                raise SystemExit(f'{list_path}:{number}: expected "path label" with an integer '
                                 f'label, got {line.strip()!r}')
            path, label = fields[0].strip(), int(fields[1])
            text = shards.class_name(names, label, f'{list_path}:{number}') if names else str(label)
            rows.append(shards.Row(source=os.path.join(video_root, path), label_index=label,
                                   label_text=text,
                                   filename=path))
    return rows


@cli.command
def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-shards-from-list',
                                     description=cli.summary(__doc__))
    parser.add_argument('--list', required=True)
    parser.add_argument('--video_root', default='', help="SlowFast's PATH_PREFIX")
    parser.add_argument('--separator', default=None,
                        help="between path and label (SlowFast's PATH_LABEL_SEPARATOR; "
                        'default: any whitespace)')
    parser.add_argument('--class_names', default='', help='one name per line, in index order')
    shards.add_common_flags(parser)
    args = parser.parse_args(argv)
    rows = read_rows(args.list, args.video_root, shards.class_names(args.class_names),
                     args.separator)
    name = args.name or os.path.splitext(os.path.basename(args.list))[0]
    return shards.build(rows, args.output_dir, name, shards.settings_from_flags(args),
                        args.num_shards, args.workers, args.verify)


if __name__ == '__main__':
    main()

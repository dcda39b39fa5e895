"""Shards from extracted frame folders (`class/video/img_00001.jpg`) and a TSN/TSM-style list.

Each list line is `video_folder num_frames label` (TokShift's and TSM's format) or
`video_folder label`; the label is an integer index. Label names come from `--class_names` (one
per line, in index order) or else from the folder above each video (`class/video`).

    vtx-shards-from-frames --list train.txt --frames_root /frames --output_dir /shards
"""
import argparse
import os

from vtx import cli
from vtx.data import shards


def read_rows(list_path: str, frames_root: str, names=None):
    rows = []
    with shards.opened(list_path, '--list') as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if (len(fields) not in (2, 3) or not fields[-1].lstrip('-').isdigit()
                    or not all(n.isdigit() for n in fields[1:-1])):
                raise SystemExit(f'{list_path}:{number}: expected "folder [num_frames] label" '
                                 f'with integer num_frames and label, got {line.strip()!r}')
            folder, label = fields[0], int(fields[-1])
            text = (shards.class_name(names, label, f'{list_path}:{number}') if names else
                    os.path.basename(os.path.dirname(folder.rstrip('/'))))
            rows.append(shards.Row(
                source=os.path.join(frames_root, folder), label_index=label, label_text=text,
                filename=folder, max_frames=int(fields[1]) if len(fields) == 3 else None))
    return rows


@cli.command
def main(argv=None):
    parser = argparse.ArgumentParser(prog='vtx-shards-from-frames',
                                     description=cli.summary(__doc__))
    parser.add_argument('--list', required=True)
    parser.add_argument('--frames_root', default='')
    parser.add_argument('--class_names', default='')
    shards.add_common_flags(parser)
    args = parser.parse_args(argv)
    rows = read_rows(args.list, args.frames_root, shards.class_names(args.class_names))
    name = args.name or os.path.splitext(os.path.basename(args.list))[0]
    return shards.build(rows, args.output_dir, name, shards.settings_from_flags(args),
                        args.num_shards, args.workers, args.verify)


if __name__ == '__main__':
    main()

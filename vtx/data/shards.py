"""What every shard builder shares: rows, label maps, parallel encoding, writing, verification.

A builder turns its list format into `Row`s and calls `build`. Rows are encoded in worker
processes (PyAV only) and written by this process in row order, row r to shard r % num_shards
(DMVR's rule), as `<name>-0000k-of-0000n`. A video that cannot be decoded is reported by name and
skipped; the count is printed at the end.
"""
import argparse
import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

from vtx import cli
from vtx.data import video_io

VIDEO_KEY = 'video/encoded'  # context feature holding a whole video file (--keep_video)


@dataclasses.dataclass
class Row:
    source: str                       # video file or frame folder
    label_index: Optional[int] = None
    label_text: Optional[str] = None
    start: Optional[float] = None     # seconds
    end: Optional[float] = None
    filename: Optional[str] = None    # stored as video/filename (default: source)
    max_frames: Optional[int] = None  # frame folders: use only the first this many images


@dataclasses.dataclass
class EncodeSettings:
    short_side: int = 256
    fps: Optional[float] = None
    qscale: int = 2
    keep_video: bool = False  # store video files (and .h5 JPEGs) as they are, see add_common_flags


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--output_dir', required=True)
    parser.add_argument('--name', help='shard name prefix (default: the list file name)')
    parser.add_argument('--num_shards', type=int, default=-1,
                        help='default: int(sqrt(number of rows)), as DMVR')
    parser.add_argument('--short_side', type=cli.number(minimum=0), default=256,
                        help='0 keeps the frame size')
    parser.add_argument('--fps', type=cli.number(float, above=0), default=None,
                        help='resample to this rate '
                        '(default: keep the native rate)')
    parser.add_argument('--qscale', type=cli.number(minimum=0, maximum=31), default=2,
                        help='mjpeg quality, 2 (best) .. 31; 0: the encoder default')
    parser.add_argument('--keep_video', action='store_true',
                        help='store each video file unchanged (native rate and size, decoded at '
                        'eval time by the test protocol\'s own decoder) and an XViT .h5 file\'s '
                        'JPEG frames as they are: shards that serve the official test protocols '
                        'exactly (frame folders: use --short_side 0 to keep their JPEGs)')
    parser.add_argument('--workers', type=cli.number(minimum=1), default=os.cpu_count() or 1)
    parser.add_argument('--verify', action='store_true', help='re-read and decode every record')


def settings_from_flags(args) -> EncodeSettings:
    return EncodeSettings(short_side=args.short_side, fps=args.fps, qscale=args.qscale,
                          keep_video=args.keep_video)


@contextlib.contextmanager
def opened(path: str, flag: str, **kwargs):
    """`path` open for reading; a missing or unreadable file is one error line naming `flag`."""
    try:
        f = open(path, **kwargs)
    except OSError as e:
        raise SystemExit(f'{flag} {path}: {e.strerror}') from None
    with f:
        yield f


def class_name(names: Sequence[str], label: int, where: str) -> str:
    """names[label]; a label without a name is one error line naming `where` (file:line)."""
    if not 0 <= label < len(names):
        raise SystemExit(f'{where}: label {label}, but --class_names lists {len(names)} classes '
                         f'(0 to {len(names) - 1})')
    return names[label]


def label_map_from_names(names: Sequence[str], label_map_file: Optional[str]) -> Dict[str, int]:
    """A fixed map (json {name: index} or one name per line) or the sorted distinct names."""
    if label_map_file:
        with opened(label_map_file, '--label_map') as f:
            text = f.read()
        if label_map_file.endswith('.json'):
            try:
                mapping = {str(k): int(v) for k, v in json.loads(text).items()}
            except (ValueError, TypeError, AttributeError) as e:
                raise SystemExit(f'--label_map {label_map_file}: expected a JSON object '
                                 f'{{name: integer index}} ({e})') from None
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            mapping = {name: i for i, name in enumerate(lines)}
        unknown = sorted(set(names) - set(mapping))
        if unknown:
            raise SystemExit(f'{label_map_file}: no index for labels {unknown[:10]}')
        return mapping
    return {n: i for i, n in enumerate(sorted(set(names)))}


def class_names(path: Optional[str]) -> Optional[List[str]]:
    """One class name per line, in index order (optional)."""
    if not path:
        return None
    with opened(path, '--class_names') as f:
        return [line.strip() for line in f if line.strip()]


def _encode_row(row: Row, settings: EncodeSettings):
    """Worker: -> (serialized SequenceExample fields, None) or (None, error message)."""
    try:
        if settings.keep_video and not os.path.isdir(row.source):
            return video_io.stored_as_is(row.source, row.start, row.end), None
        if os.path.isdir(row.source):
            jpegs = video_io.frame_folder_jpegs(row.source, settings.short_side, settings.qscale,
                                                row.max_frames)
        else:
            frames = video_io.decode_video(row.source, row.start, row.end, settings.fps)
            jpegs = video_io.JpegEncoder(settings.qscale).encode(frames, settings.short_side)
    except video_io.DecodeError as e:
        return None, str(e)
    except Exception as e:  # any decoder failure skips this video, never the whole build
        return None, f'{row.source}: {type(e).__name__}: {e}'
    return jpegs, None


def build(rows: List[Row], output_dir: str, name: str, settings: EncodeSettings,
          num_shards: int = -1, workers: int = 1, verify: bool = False,
          label_names: Optional[Dict[int, str]] = None,
          encode: Callable = _encode_row) -> List[str]:
    """Writes the shards and returns their paths."""
    from tqdm import tqdm

    if not rows:
        raise SystemExit('no rows to write')
    if num_shards <= 0:
        num_shards = max(1, int(math.sqrt(len(rows))))
    num_shards = min(num_shards, len(rows))
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, f'{name}-{k:05d}-of-{num_shards:05d}')
             for k in range(num_shards)]
    # Workers start before TF is imported here, and spawn: neither inherits TF's threads.
    context = multiprocessing.get_context('spawn')
    work = functools.partial(encode, settings=settings)
    skipped = []
    with context.Pool(max(1, workers)) as pool:
        results = pool.imap(work, rows, chunksize=4)
        from vtx.data.tf_on_host import tf

        from vtx.data import dmvr

        writers = [tf.io.TFRecordWriter(p) for p in paths]
        try:
            for r, (row, (jpegs, error)) in enumerate(
                    tqdm(zip(rows, results), total=len(rows), desc=name, file=sys.stderr)):
                if error:
                    tqdm.write(f'skipped {row.source}: {error}', file=sys.stderr)
                    skipped.append(row.source)
                    continue
                text = row.label_text
                if text is None and label_names and row.label_index is not None:
                    text = label_names.get(row.label_index, '')
                whole_video = isinstance(jpegs, bytes)  # --keep_video of a video file
                example = dmvr.make_sequence_example(
                    [] if whole_video else jpegs, row.label_index, text,
                    row.filename or row.source, int(1e6 * (row.start or 0.0)),
                    int(1e6 * row.end) if row.end is not None else 0)
                if whole_video:
                    example.context.feature[VIDEO_KEY].bytes_list.value.append(jpegs)
                writers[r % num_shards].write(example.SerializeToString())
        finally:
            for w in writers:
                w.close()
    written = len(rows) - len(skipped)
    print(f'{name}: wrote {written} records to {num_shards} shards '
          f'{output_dir}/{name}-*-of-{num_shards:05d}; skipped {len(skipped)} unreadable videos')
    if verify:
        verify_shards(paths)
    return paths


def verify_shards(paths: Sequence[str]) -> int:
    """Re-reads every record: parses it and decodes every frame. Returns the number of bad ones
    (each reported with shard and record index)."""
    from vtx.data.tf_on_host import tf

    from vtx.data import dmvr

    bad = total = 0
    for path in paths:
        record = 0
        try:
            for record, serialized in enumerate(tf.data.TFRecordDataset(path)):
                total += 1
                try:
                    frames = dmvr.parse(serialized)['frames']
                    if tf.size(frames) == 0 and tf.train.SequenceExample.FromString(
                            serialized.numpy()).context.feature[VIDEO_KEY].bytes_list.value:
                        continue  # a whole video file (--keep_video): decoded at eval time
                    if tf.size(frames) == 0:
                        raise ValueError(dmvr.describe_record(serialized.numpy()))
                    dmvr.decode_frames(frames)
                except (tf.errors.OpError, ValueError) as e:
                    bad += 1
                    print(f'bad record {path}:{record}: {e}', file=sys.stderr)
        except tf.errors.OpError as e:
            bad += 1
            print(f'unreadable {path} after record {record}: {e.message}', file=sys.stderr)
    print(f'verified {total} records in {len(paths)} shards: {bad} bad')
    return bad

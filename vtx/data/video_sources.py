"""Videos as the official test loaders see them: a frame count and frames read by number.

Each source decodes with the library the official code used, because decoders disagree by a few
levels on the same stream (see `vtx.data.protocols`):
* `DecordVideo`: an encoded video file through decord 0.6.0 (mmaction's DecordInit/DecordDecode).
* `PyAVVideo`: an encoded video file through PyAV `to_rgb()` (SlowFast's decoder), every frame in
  decode order; for protocols whose official input is not a video file this is the nearest.
* `JpegVideo`: one JPEG per frame, decoded with Pillow (XViT's HDF5 files, TokShift's frame
  folders, and shards that keep those bytes).
`stts_clips` is STTS-MViT's PyAV segment decode, which reads each temporal clip separately.
`open_video` picks the source of a path the way the protocol's official loader reads it.
"""
import glob
import io
import os
from typing import List, Optional, Sequence

import numpy as np

from vtx.errors import VtxError

# The protocols whose official loader decodes video files with decord; the others use PyAV.
DECORD_PROTOCOLS = ('mmaction',)
FRAME_FILE_TEMPLATE = 'img_{:05d}.jpg'  # TokShift's extracted frames, 1-based


class VideoReadError(VtxError):
    pass


def _decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


class JpegVideo:
    """Frames stored as encoded images; `frames[i]` gives the bytes of frame i (a list, an h5
    dataset of uint8 arrays, or `FrameFiles`)."""

    def __init__(self, frames, num_frames: Optional[int] = None, name: str = ''):
        self.frames, self.name = frames, name
        self.num_frames = len(frames) if num_frames is None else int(num_frames)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([_decode_jpeg(bytes(self.frames[int(i)])) for i in indices])


class FrameFiles:
    """A folder of `img_00001.jpg`, ... as a sequence: item i is the bytes of file i + 1."""

    def __init__(self, folder: str):
        self.folder = folder

    def __len__(self):
        return len(glob.glob(os.path.join(glob.escape(self.folder), 'img_*.jpg')))

    def __getitem__(self, i: int) -> bytes:
        path = os.path.join(self.folder, FRAME_FILE_TEMPLATE.format(i + 1))
        try:
            with open(path, 'rb') as f:
                return f.read()
        except OSError as e:
            raise VideoReadError(f'{path}: {e.strerror}') from None


class DecordVideo:
    """mmaction's DecordInit: `VideoReader(BytesIO(bytes), num_threads=1)`; frames are decoder
    frame numbers, each read with `reader[i].asnumpy()`."""

    def __init__(self, data: bytes, name: str = ''):
        import decord
        self.data, self.name = data, name
        try:
            self.reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        except decord.DECORDError as e:
            raise VideoReadError(f'{name}: decord cannot open it ({str(e).splitlines()[0]})') \
                from None
        self.num_frames = len(self.reader)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.reader[int(i)].asnumpy() for i in indices])


class PyAVVideo:
    """Every frame of an encoded video through PyAV's `to_rgb()`, in decode order; decoded on
    first use (STTS's protocol decodes `data` itself, per clip)."""

    def __init__(self, data: bytes, name: str = ''):
        self.data, self.name, self._frames = data, name, None

    @property
    def frames(self) -> List[np.ndarray]:
        if self._frames is None:
            import av
            try:
                with av.open(io.BytesIO(self.data)) as container:
                    self._frames = [f.to_rgb().to_ndarray() for f in container.decode(video=0)]
            except (av.error.FFmpegError, IndexError) as e:
                raise VideoReadError(f'{self.name}: PyAV cannot decode it ({e})') from None
        return self._frames

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.frames[int(i)] for i in indices])


class ArrayVideo:
    """Frames already decoded, uint8 [N, H, W, 3]."""

    def __init__(self, frames: np.ndarray, name: str = ''):
        self.frames, self.name, self.num_frames = frames, name, len(frames)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self.frames[np.asarray(indices, np.int64)]


def encoded_video(data: bytes, protocol: str, name: str = ''):
    """An encoded video file's bytes through the decoder the protocol's official code used."""
    return (DecordVideo if protocol in DECORD_PROTOCOLS else PyAVVideo)(data, name)


def open_video(path: str, protocol: str, num_frames: Optional[int] = None):
    """A video file, a TokShift frame folder, or an XViT `.h5` file (its first dataset holds one
    JPEG per frame), read as the protocol's official loader reads it. `num_frames`: the frame
    count of the official list file, where it gives one (TokShift, XViT Kinetics)."""
    if os.path.isdir(path):
        return JpegVideo(FrameFiles(path), num_frames, path)
    if path.endswith('.h5'):
        import h5py
        try:
            h5 = h5py.File(path, 'r')
        except OSError as e:
            raise VideoReadError(f'{path}: not a readable HDF5 file ({e})') from None
        return JpegVideo(h5[next(iter(h5.keys()))], num_frames, path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise VideoReadError(f'{path}: {e.strerror}') from None
    return encoded_video(data, protocol, path)


# ----------------------------------------------------------------------------------------------
# STTS-MViT: SlowFast's PyAV decoder with USE_OFFSET_SAMPLING

def stts_clips(video, s):
    """(per-clip frame numbers, per-clip uint8 frames [T, H, W, 3]) by SlowFast's pyav_decode:
    per temporal clip, seek to the segment in raw pts, keep the frames from start_pts to end_pts
    and one more, then sample NUM_FRAMES inside that segment (`protocols.stts_segment_indices`)."""
    import av

    from vtx.data.protocols import offset_start_end, stts_segment_indices
    indices, clips = [], []
    with av.open(io.BytesIO(video.data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        n_header, duration = stream.frames, stream.duration
        clip_size = s.stride * s.num_frames / s.target_fps * fps
        for t in range(s.num_clips):
            if duration is None or not n_header:  # SlowFast then decodes the whole video
                container.seek(0)
                frames = list(container.decode(stream))
            else:
                start, end = offset_start_end(n_header, clip_size, t, s.num_clips)
                per_frame = duration / n_header
                start_pts, end_pts = int(start * per_frame), int(end * per_frame)
                container.seek(max(start_pts - 1024, 0), any_frame=False, backward=True,
                               stream=stream)
                frames = []
                for frame in container.decode(stream):
                    if frame.pts < start_pts:
                        continue
                    frames.append(frame)
                    if frame.pts > end_pts:
                        break
            if not frames:
                raise VideoReadError(f'{video.name}: PyAV decoded no frames for clip {t}')
            frames.sort(key=lambda f: f.pts)
            chosen = stts_segment_indices(len(frames), s, clip_size)
            clips.append(np.stack([frames[i].to_rgb().to_ndarray() for i in chosen]))
            # Frame numbers from the timestamps, for reports (SlowFast itself never counts).
            indices.append(np.asarray([round(float(frames[i].pts * stream.time_base) * fps)
                                       for i in chosen]))
    return indices, clips


def read_list_rows(path: str) -> List[tuple]:
    """Rows of an eval list `path,label[,num_frames]` (a header line is allowed): (absolute path,
    label, frame count or None). Paths are relative to the list's folder unless absolute."""
    import csv
    root = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline='') as f:
            lines = [r for r in csv.reader(f) if r and any(v.strip() for v in r)]
    except OSError as e:
        raise VtxError(f'config.data.eval_videos={path!r}: {e.strerror}') from None
    if lines and lines[0][0].strip() in ('path', 'video_path'):
        lines = lines[1:]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            label = int(line[1])
            count = int(line[2]) if len(line) > 2 and line[2].strip() else None
        except (IndexError, ValueError):
            raise VtxError(f'{path}: row {number} {",".join(line)!r}: expected path,label[,'
                           'num_frames] with an integer label') from None
        rows.append((os.path.join(root, line[0].strip()), label, count))
    if not rows:
        raise VtxError(f'{path}: no rows (expected path,label[,num_frames] per line)')
    return rows

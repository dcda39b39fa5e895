"""Video and frame-folder decoding for the shard builders (PyAV; no TF, so workers start fast).

A clip becomes a list of JPEG frames the way DMVR's generator makes them (trim, optional fps
resampling, short side scaled, ffmpeg's mjpeg encoder), with two deliberate differences: the
native frame rate is kept unless `fps` is given, and a trimmed clip does not start with
duplicated frames (DMVR's `trim` keeps the source timestamps, so its fps filter repeats the
first frame round(fps * start) times).
"""
import fractions
import glob
import math
import os
from typing import List, Optional

import av

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


class DecodeError(Exception):
    """A video or frame folder that cannot be turned into frames (reported and skipped)."""


def scaled_size(width: int, height: int, short_side: int):
    """(width, height) with the short side at `short_side` and the aspect kept (rounded);
    `short_side` 0 keeps the size."""
    if not short_side:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


class JpegEncoder:
    """ffmpeg's mjpeg encoder; `qscale` 2 (best) .. 31, or 0 for the encoder's default rate."""

    def __init__(self, qscale: int = 2):
        self.qscale = qscale

    def encode(self, frames: List[av.VideoFrame], short_side: int) -> List[bytes]:
        if not frames:
            return []
        width, height = scaled_size(frames[0].width, frames[0].height, short_side)
        codec = av.CodecContext.create('mjpeg', 'w')
        codec.width, codec.height = width, height
        codec.pix_fmt = 'yuvj420p'
        codec.time_base = fractions.Fraction(1, 25)
        if self.qscale:
            codec.qmin = codec.qmax = self.qscale
        jpegs = []
        for index, frame in enumerate(frames):
            frame = frame.reformat(width=width, height=height, format='yuvj420p',
                                   interpolation='BICUBIC')  # ffmpeg's default scaler
            frame.pts, frame.time_base = index, codec.time_base  # rising pts, also on repeats
            jpegs.extend(bytes(p) for p in codec.encode(frame))
        jpegs.extend(bytes(p) for p in codec.encode(None))
        if len(jpegs) != len(frames):
            raise DecodeError(f'the JPEG encoder gave {len(jpegs)} images for {len(frames)} frames')
        return jpegs


def frames_from_array(array) -> List[av.VideoFrame]:
    """uint8 RGB frames [T, H, W, 3] as the frames `decode_video` gives."""
    return [av.VideoFrame.from_ndarray(frame, format='rgb24') for frame in array]


def decode_video(path: str, start: Optional[float] = None, end: Optional[float] = None,
                 fps: Optional[float] = None) -> List[av.VideoFrame]:
    """Frames of [start, end) seconds; with `fps`, resampled to that rate (each output time
    takes the latest frame shown at that time, as ffmpeg's fps filter)."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError(f'{path}: no video stream')
            stream = container.streams.video[0]
            stream.thread_type = 'AUTO'
            timed = []
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else len(timed) / float(
                    stream.average_rate or 25)
                timed.append((t, frame))
    except av.error.FFmpegError as e:
        raise DecodeError(f'{path}: {e}') from None
    if not timed:
        raise DecodeError(f'{path}: no frames decoded')
    first = timed[0][0]
    start = first if start is None else first + start  # clip times count from the first frame
    frame_step = (timed[-1][0] - first) / max(len(timed) - 1, 1) or 1 / 25
    stop = timed[-1][0] + frame_step  # the end of the last frame
    if end is not None:
        stop = min(stop, first + end)
    if fps is None:
        frames = [f for t, f in timed if start - 1e-6 <= t < stop - 1e-6]
    else:
        # ffmpeg's fps filter: a frame at time t fills slot round(t * fps) and later empty slots
        # repeat it; the clip has round((stop - start) * fps) slots.
        frames, i = [], 0
        for k in range(int(math.floor((stop - start) * fps + 0.5))):
            while i + 1 < len(timed) and (timed[i + 1][0] - start) * fps < k + 0.5 - 1e-6:
                i += 1
            frames.append(timed[i][1])
    if not frames:
        raise DecodeError(f'{path}: no frames in [{start - first}, {stop - first}) s')
    return frames


def frame_folder_jpegs(folder: str, short_side: int, qscale: int,
                       max_frames: Optional[int] = None) -> List[bytes]:
    """A folder of images (sorted by name: img_00001.jpg, ...) as JPEG frames. JPEGs that are
    already at the target size are stored as they are, so no quality is lost re-encoding."""
    files = sorted(f for f in glob.glob(os.path.join(folder, '*'))
                   if f.lower().endswith(IMAGE_EXTENSIONS))[:max_frames or None]
    if not files:
        raise DecodeError(f'{folder}: no {"/".join(IMAGE_EXTENSIONS)} images')
    frames = []
    for file in files:
        try:
            with av.open(file) as container:
                frames.append(next(container.decode(video=0)))
        except (av.error.FFmpegError, StopIteration) as e:
            raise DecodeError(f'{file}: {e or "no image"}') from None
    size = (frames[0].width, frames[0].height)
    all_jpeg = all(f.lower().endswith(('.jpg', '.jpeg')) for f in files)
    if all_jpeg and all((f.width, f.height) == size for f in frames) and \
            scaled_size(*size, short_side) == size:
        jpegs = []
        for file in files:
            with open(file, 'rb') as f:
                jpegs.append(f.read())
        return jpegs
    return JpegEncoder(qscale).encode(frames, short_side)


def stored_as_is(path: str, start: Optional[float] = None, end: Optional[float] = None):
    """`--keep_video`: a video file's bytes, or the JPEG frames of an XViT `.h5` file (its first
    dataset, one JPEG per frame), unchanged, so eval decodes exactly what the official code read."""
    if start is not None or end is not None:
        raise DecodeError(f'{path}: --keep_video stores whole files, but the row trims it to '
                          f'[{start}, {end}) s')
    try:
        if path.endswith('.h5'):
            import h5py
            with h5py.File(path, 'r') as h5:
                return [bytes(frame) for frame in h5[next(iter(h5.keys()))]]
        with open(path, 'rb') as f:
            return f.read()
    except OSError as e:
        raise DecodeError(f'{path}: {e}') from None

"""The official test protocols: which frames, which pixels and which score each paper evaluated.

A protocol turns one video (anything with `num_frames` and `read(indices)`, see
`vtx.data.video_sources`) into the test views the official code feeds its model, and says how the
official code aggregates the per-view outputs. Everything here is numpy (plus Pillow for
TokShift's resize), so it runs in decode workers without TF or JAX. The rules are those of
`shared/specs/test_pipelines.md`, checked against the official pipelines' own outputs
(`tests/test_protocols.py`):

* 'mmaction' (Video Swin, TPS, STTS-VideoSwin): SampleFrames test offsets (wrapping modulo N for
  short videos) or the SSv2 one-frame-per-segment rule, short side to S with the long side rounded
  half up, OpenCV's INTER_LINEAR on uint8 (re-implemented bit for bit in `cv2_linear_resize`),
  ThreeCrop (left, right at 2*step, middle), normalise on the 0..255 scale; views crop-major; mean
  of softmax.
* 'slowfast_xvit' (XViT): SlowFast's Kinetics linspace clip from `delta * t / V` (clamped, never
  wrapping) or its SSv2 segment rule; normalise first, then short side to S (long side floored)
  with torch's bilinear on floats, uniform crops (left, centre at ceil, right); views clip-major;
  sum of logits.
* 'slowfast_stts' (MViT, STTS-MViT): the same spatial path after PyAV's segment decode with the
  offset rule and fps stretch (`vtx.data.video_sources.stts_clips`); sum of softmax.
* 'tokshift': dense clips from `int(k * framecnt / n)` clipped to `max_bound`, Pillow BICUBIC
  short-side resize (floored), crops centre, left, right; views clip-major; mean of logits.
* 'dmvr': DMVR's sampling and tf.image resizing on shards (`vtx.data.pipeline.eval_views`), the
  default for configs that reproduce no paper.
"""
import dataclasses
import math
from typing import List, Sequence, Tuple

import numpy as np

from vtx.errors import VtxError

DMVR = 'dmvr'
# name -> (what the views' outputs are, how they are combined over a video's views)
AGGREGATION = {
    'mmaction': ('probs', 'mean'),
    'slowfast_xvit': ('logits', 'sum'),
    'slowfast_stts': ('probs', 'sum'),
    'tokshift': ('logits', 'mean'),
}
NAMES = (DMVR,) + tuple(AGGREGATION)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The data-config fields a protocol reads, in the official code's terms."""
    protocol: str
    num_frames: int      # clip_len / NUM_FRAMES / T_SIZE
    stride: int          # frame_interval / SAMPLING_RATE / T_STEP
    uniform: bool        # SSv2-style one frame per segment (frame_uniform / Ssv2 dataset)
    num_clips: int       # num_clips / NUM_ENSEMBLE_VIEWS / VAL_SAMPLE_TIMES
    num_crops: int       # 3 (three crops) or 1 (centre)
    short_side: int      # Resize(-1, S) / test short side / VAL_SHORT_SIDE
    crop_size: int
    mean: Tuple[float, float, float]  # on the 0..1 scale
    std: Tuple[float, float, float]
    target_fps: float = 30.0  # SlowFast's TARGET_FPS (STTS only: XViT reads no fps)

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops


def protocol_name(data_config) -> str:
    name = data_config.get('test_protocol', DMVR)
    if name not in NAMES:
        raise VtxError(f'config.data.test_protocol={name!r}: expected one of {", ".join(NAMES)}')
    return name


def settings(data_config) -> Settings:
    """The protocol settings of a data config; a config whose view aggregation contradicts its
    protocol, or whose crops the official code could not make, is one error naming the fields."""
    name = protocol_name(data_config)
    if name == DMVR:
        raise VtxError("config.data.test_protocol='dmvr' reads shards (config.data.eval_shards) "
                       'in TF; reading config.data.eval_videos needs one of the official '
                       f'protocols: {", ".join(NAMES[1:])}')
    wanted = AGGREGATION[name][0]
    if data_config.eval_aggregation != wanted:
        raise VtxError(f'config.data.eval_aggregation={data_config.eval_aggregation!r} but the '
                       f'{name} test protocol averages {wanted!r}')
    crops = int(data_config.eval_num_crops)
    if crops not in (1, 3):
        raise VtxError(f'config.data.eval_num_crops={crops}: the {name} test protocol makes 1 or '
                       '3 crops')
    mean = np.broadcast_to(np.asarray(data_config.normalization_mean, np.float64), 3)
    std = np.broadcast_to(np.asarray(data_config.normalization_std, np.float64), 3)
    if data_config.zero_centering:  # x*2/255 - 1 - mean == x/255 - (1 + mean)/2, scaled by 2
        mean, std = (1 + mean) / 2, std / 2
    s = Settings(protocol=name, num_frames=int(data_config.num_frames),
                 stride=int(data_config.stride), uniform=data_config.sampling == 'uniform',
                 num_clips=int(data_config.eval_num_clips), num_crops=crops,
                 short_side=int(data_config.min_resize), crop_size=int(data_config.crop_size),
                 mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    if name == 'mmaction' and crops == 3 and s.short_side != s.crop_size:
        raise VtxError(f'config.data.min_resize={s.short_side} must equal config.data.crop_size='
                       f'{s.crop_size}: mmaction ThreeCrop needs one side at the crop size')
    return s


# ----------------------------------------------------------------------------------------------
# Frame indices: one int array per temporal clip, 0-based frame numbers of the video

def mmaction_indices(n: int, s: Settings) -> List[np.ndarray]:
    """SampleFrames(test_mode=True), start_index 0; or its frame_uniform (SSv2) rule."""
    if s.uniform:
        return [_segment_middles(n, s.num_frames)]
    span = s.num_frames * s.stride
    avg = (n - span + 1) / s.num_clips
    offsets = [int(avg * k + avg / 2) if n > span - 1 else 0 for k in range(s.num_clips)]
    return [(o + np.arange(s.num_frames) * s.stride) % n for o in offsets]


def _segment_bounds(n: int, num_segments: int):
    """TSN segments of the frames 0..n-1: rounded (np.round, half to even) start and end."""
    seg = (n - 1) / num_segments
    i = np.arange(num_segments)
    return np.round(seg * i).astype(np.int64), np.round(seg * (i + 1)).astype(np.int64)


def _segment_middles(n: int, num_segments: int) -> np.ndarray:
    start, end = _segment_bounds(n, num_segments)
    return (start + end) // 2


def torch_linspace_long(start: float, end: float, steps: int, last: int) -> np.ndarray:
    """`torch.linspace(start, end, steps)` in float32 (the first half counts up from start, the
    second half down from end, as torch's CPU kernel), clamped to [0, last], then `.long()`."""
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(max(steps - 1, 1))
    i = np.arange(steps)
    up = start32 + step * i.astype(np.float32)
    down = end32 - step * (steps - 1 - i).astype(np.float32)
    values = np.where(i < steps // 2, up, down).astype(np.float32)
    return np.clip(values, 0, last).astype(np.int64)


def xvit_indices(n: int, s: Settings) -> List[np.ndarray]:
    """XViT Kinetics (HDF5 branch, no fps file): clip t spans NUM_FRAMES * SAMPLING_RATE frames
    from delta * t / NUM_ENSEMBLE_VIEWS; SSv2: segment middle (t 0), start (t 1) or end (t 2)."""
    if s.uniform:
        if s.num_clips > 3:
            raise VtxError(f'config.data.eval_num_clips={s.num_clips}: XViT SSv2 has 3 temporal '
                           'views at most (segment middle, start, end)')
        start, end = _segment_bounds(n, s.num_frames)
        return [((start + end) // 2, start, end)[t] for t in range(s.num_clips)]
    span = s.num_frames * s.stride
    delta = max(n - span, 0)
    clips = []
    for t in range(s.num_clips):
        first = delta * t / s.num_clips
        clips.append(torch_linspace_long(first, first + span - 1, s.num_frames, n - 1))
    return clips


def tokshift_indices(n: int, s: Settings) -> List[np.ndarray]:
    """TokShift dense test clips (frame file k+1 holds frame k)."""
    max_bound = max(n - s.num_frames * s.stride + 1, 1)
    tick = n / s.num_clips
    clips = []
    for k in range(s.num_clips):
        start = 0 if max_bound == 1 else min(max(int(k * tick), 0), max_bound)
        clips.append((np.arange(s.num_frames) * s.stride + start) % n)
    return clips


def offset_start_end(video_size: float, clip_size: float, t: int, num_clips: int):
    """SlowFast's get_start_end_idx with use_offset=True (STTS)."""
    delta = max(video_size - clip_size, 0)
    start = math.floor(delta / 2) if num_clips == 1 else t * math.floor(delta / (num_clips - 1))
    return start, start + clip_size - 1


def stts_segment_indices(m: int, s: Settings, clip_size: float) -> np.ndarray:
    """STTS's second pass: NUM_FRAMES positions inside a decoded segment of `m` frames."""
    start, end = offset_start_end(m, clip_size, 0, 1)
    return torch_linspace_long(start, end, s.num_frames, m - 1)


def stts_indices(n: int, s: Settings) -> List[np.ndarray]:
    """STTS-MViT's rule on frames already decoded at TARGET_FPS with regular timestamps (shards
    of frames): the segment of each clip, plus the one frame past its end that SlowFast's PyAV
    decoder keeps, then the second pass inside it. A video file goes through
    `video_sources.stts_clips`, which follows the real timestamps."""
    clip_size = s.stride * s.num_frames
    clips = []
    for t in range(s.num_clips):
        start, end = offset_start_end(n, clip_size, t, s.num_clips)
        first, last = math.ceil(start), min(math.floor(end) + 1, n - 1)
        clips.append(first + stts_segment_indices(last - first + 1, s, clip_size))
    return clips


INDICES = {'mmaction': mmaction_indices, 'slowfast_xvit': xvit_indices,
           'slowfast_stts': stts_indices, 'tokshift': tokshift_indices}


def clip_indices(n: int, s: Settings) -> List[np.ndarray]:
    """The frames each temporal clip reads from a video of `n` frames."""
    if n <= 0:
        raise VtxError('a video with no frames has no test clips')
    return INDICES[s.protocol](n, s)


# ----------------------------------------------------------------------------------------------
# Resizers

_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 11-bit fixed-point weights


def _cv2_taps(src: int, dst: int, zero_weight_outside: bool):
    """OpenCV's INTER_LINEAR source index pairs and fixed-point weights along one axis. OpenCV
    moves the weight to the edge pixel outside the image only along x; along y it keeps the
    fractional weights and clamps the row numbers, so an edge row is a sum of two rounded parts."""
    scale = 1.0 / (dst / src)  # OpenCV keeps 1 / inv_scale in double
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = (f - i.astype(np.float32)).astype(np.float32)
    if zero_weight_outside:
        outside = (i < 0) | (i >= src - 1)
        f[outside] = 0
        i = np.clip(i, 0, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), w0, w1


def cv2_linear_resize(images: np.ndarray, width: int, height: int) -> np.ndarray:
    """`cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)` of each uint8 image
    [..., H, W, C], bit for bit: horizontal taps in exact integers, the vertical pass with
    OpenCV's shifted multiply-high rounding, and OpenCV's switch to area averaging for an exact
    2x reduction."""
    h, w = images.shape[-3:-1]
    if (w, h) == (width, height):
        return images.copy()
    x = images.astype(np.int32)  # the largest intermediate, 2048 * 32640, fits
    if w == 2 * width and h == 2 * height:
        total = (x[..., 0::2, 0::2, :] + x[..., 0::2, 1::2, :] + x[..., 1::2, 0::2, :] +
                 x[..., 1::2, 1::2, :])
        return ((total + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _cv2_taps(w, width, True)
    rows = (x[..., x0, :] * a0[:, None].astype(np.int32) +
            x[..., x1, :] * a1[:, None].astype(np.int32)) >> 4
    y0, y1, b0, b1 = _cv2_taps(h, height, False)
    top = (b0[:, None, None].astype(np.int32) * rows[..., y0, :, :]) >> 16
    bottom = (b1[:, None, None].astype(np.int32) * rows[..., y1, :, :]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def torch_bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """`torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` (no antialias) of
    float32 [..., H, W, C] in float32."""
    h, w = x.shape[-3:-1]

    def taps(src, dst):
        scale = np.float32(src / dst)
        f = np.maximum((np.arange(dst, dtype=np.float32) + np.float32(0.5)) * scale
                       - np.float32(0.5), np.float32(0))
        i0 = f.astype(np.int64)
        i1 = np.minimum(i0 + 1, src - 1)
        lam = (f - i0.astype(np.float32)).astype(np.float32)
        return i0, i1, np.float32(1) - lam, lam

    y0, y1, hy0, hy1 = taps(h, height)
    x0, x1, wx0, wx1 = taps(w, width)
    out = np.zeros(x.shape[:-3] + (height, width, x.shape[-1]), np.float32)
    # torch's CPU kernel: the four corner weights are products, summed in this order.
    for rows, hy in ((y0, hy0), (y1, hy1)):
        for cols, wx in ((x0, wx0), (x1, wx1)):
            out += (hy[:, None] * wx[None, :])[:, :, None] * x[..., rows, :, :][..., cols, :]
    return out


# ----------------------------------------------------------------------------------------------
# Spatial views: per-clip uint8 frames [T, H, W, 3] -> float32 views [V, T, c, c, 3]

def _normalise(x: np.ndarray, s: Settings) -> np.ndarray:
    """(x - mean) / std in float32 per channel, x on the 0..1 scale (SlowFast's
    tensor_normalize, torchvision's Normalize)."""
    return ((x - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)).astype(
        np.float32)


def mmaction_views(clips: Sequence[np.ndarray], s: Settings) -> np.ndarray:
    """Resize(-1, S) with cv2 on uint8, ThreeCrop or CenterCrop, Normalize; crop-major."""
    h, w = clips[0].shape[1:3]
    factor = s.short_side / min(h, w)
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    c = s.crop_size
    # Frame by frame: the working set then stays in cache (several times faster than batched).
    resized = np.stack([[cv2_linear_resize(f, new_w, new_h) for f in clip] for clip in clips])
    if s.num_crops == 3:
        if new_h == c:
            step = (new_w - c) // 2
            boxes = [(0, x) for x in (0, 2 * step, step)]
        else:
            step = (new_h - c) // 2
            boxes = [(y, 0) for y in (0, 2 * step, step)]
    else:
        boxes = [((new_h - c) // 2, (new_w - c) // 2)]
    # mmcv's imnormalize: (x - mean) * (1 / std) with mean and std on the 0..255 scale; per
    # pixel, so normalising before cropping (fewer pixels than three overlapping crops) is equal.
    mean = (np.asarray(s.mean) * 255).astype(np.float32)
    inv_std = (1 / (np.asarray(s.std) * 255)).astype(np.float32)
    normalised = (resized.astype(np.float32) - mean) * inv_std
    return np.stack([normalised[k, :, y:y + c, x:x + c]
                     for y, x in boxes for k in range(len(clips))])


def slowfast_views(clips: Sequence[np.ndarray], s: Settings) -> np.ndarray:
    """tensor_normalize, short side to S (floor) with bilinear floats, uniform crops; clip-major."""
    c = s.crop_size
    crops = (0, 1, 2) if s.num_crops == 3 else (1,)
    views = []
    for clip in clips:
        x = _normalise(np.asarray(clip, np.float32) / np.float32(255), s)
        h, w = x.shape[1:3]
        if min(h, w) != s.short_side:
            if w < h:
                h, w = int(math.floor(h / w * s.short_side)), s.short_side
            else:
                h, w = s.short_side, int(math.floor(w / h * s.short_side))
            x = torch_bilinear_resize(x, h, w)
        y0, x0 = math.ceil((h - c) / 2), math.ceil((w - c) / 2)
        for crop in crops:
            y, xx = y0, x0
            if h > w:
                y = {0: 0, 1: y0, 2: h - c}[crop]
            else:
                xx = {0: 0, 1: x0, 2: w - c}[crop]
            views.append(x[:, y:y + c, xx:xx + c])
    return np.stack(views)


def tokshift_views(clips: Sequence[np.ndarray], s: Settings) -> np.ndarray:
    """Pillow BICUBIC short side (floor), crops centre, left, right; ToTensor + Normalize."""
    from PIL import Image

    h, w = clips[0].shape[1:3]
    if w > h:
        size = (int(math.floor(w / h * s.short_side)), s.short_side)
    else:
        size = (s.short_side, int(math.floor(h / w * s.short_side)))
    p = s.crop_size
    new_w, new_h = size
    y = int((new_h - p) / 2) if new_h > p else 0
    centre = (int((new_w - p) / 2) if new_w > p else 0, y)
    boxes = [centre, (0, y), (new_w - p, y)][:s.num_crops]
    views = []
    for clip in clips:
        resized = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC))
                            for f in clip])
        views += [resized[:, yy:yy + p, xx:xx + p] for xx, yy in boxes]
    return _normalise(np.stack(views).astype(np.float32) / np.float32(255), s)


VIEWS = {'mmaction': mmaction_views, 'slowfast_xvit': slowfast_views,
         'slowfast_stts': slowfast_views, 'tokshift': tokshift_views}


def read_clips(video, indices: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Each distinct frame read once, in ascending order (as mmaction's DecordDecode), then the
    clips rebuilt in sampler order."""
    wanted = np.unique(np.concatenate(indices))
    frames = video.read(wanted)
    return [frames[np.searchsorted(wanted, clip)] for clip in indices]


def video_views(video, s: Settings):
    """(per-clip frame indices, float32 views [V, T, c, c, 3]) of one video under `s.protocol`.
    STTS's protocol decodes an encoded video (`video.data`) per clip with PyAV."""
    if s.protocol == 'slowfast_stts' and getattr(video, 'data', None) is not None:
        from vtx.data import video_sources
        indices, clips = video_sources.stts_clips(video, s)
    else:
        indices = clip_indices(video.num_frames, s)
        clips = read_clips(video, indices)
    return indices, VIEWS[s.protocol](clips, s)


def aggregate(logits: np.ndarray, protocol: str) -> np.ndarray:
    """Per-view logits [..., V, K] -> the official per-video score [..., K]."""
    kind, reduce = AGGREGATION[protocol]
    x = np.asarray(logits, np.float64)
    if kind == 'probs':
        x = np.exp(x - x.max(-1, keepdims=True))
        x = x / x.sum(-1, keepdims=True)
    return x.mean(-2) if reduce == 'mean' else x.sum(-2)

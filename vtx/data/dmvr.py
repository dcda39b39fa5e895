"""The DMVR video format and its processing chain, as pure TF functions.

A record is a serialized `tf.train.SequenceExample` holding one clip: one JPEG per frame under the
feature list `image/encoded` (older files put all frames in a single feature, either in the
feature list or in the context), the label under `clip/label/index` / `clip/label/text`.
The evaluation chain (centred or linspace sampling with wrap-around, default-dct JPEG decode,
bilinear `resize_smallest` with a truncating cast, central crop-or-pad, `/255` or `*(2/255)-1`,
then `-mean`, `/std`) reproduces DMVR's own reader bit for bit (see
shared/specs/dmvr_format.md). Training randomness is stateless: every random draw takes an
explicit `seed` ([2] int32/int64 tensor), so a clip's augmentation is a function of its seed.
"""
from typing import Optional, Sequence

from vtx.data.tf_on_host import tf

IMAGE_KEY = 'image/encoded'
LABEL_INDEX_KEY = 'clip/label/index'
LABEL_TEXT_KEY = 'clip/label/text'
FILENAME_KEY = 'video/filename'
START_KEY = 'clip/start/timestamp'
END_KEY = 'clip/end/timestamp'


# ----------------------------------------------------------------------------------------------
# Writer

def make_sequence_example(jpeg_frames: Sequence[bytes], label_index: Optional[int],
                          label_text: Optional[str], video_filename: str,
                          start_us: int, end_us: int) -> tf.train.SequenceExample:
    """One clip in the layout DMVR's generator writes (one JPEG per feature-list step)."""
    example = tf.train.SequenceExample()
    context = example.context.feature
    if label_index is not None:
        context[LABEL_INDEX_KEY].int64_list.value.append(int(label_index))
        context[LABEL_TEXT_KEY].bytes_list.value.append((label_text or '').encode('utf-8'))
    context[FILENAME_KEY].bytes_list.value.append(video_filename.encode('utf-8'))
    context[START_KEY].int64_list.value.append(int(start_us))
    context[END_KEY].int64_list.value.append(int(end_us))
    frames = example.feature_lists.feature_list[IMAGE_KEY]
    for jpeg in jpeg_frames:
        frames.feature.add().bytes_list.value.append(bytes(jpeg))
    return example


# ----------------------------------------------------------------------------------------------
# Parsing

def parse(serialized):
    """-> {'frames': string [T] (one JPEG each), 'label_indices': int64 [L], 'label_text': string
    [L'], 'filename': string [F]}. Both frame layouts give the same `frames` vector; a record with
    none of them gives an empty one (see `describe_record` for the error message)."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
            LABEL_TEXT_KEY: tf.io.VarLenFeature(tf.string),
            FILENAME_KEY: tf.io.VarLenFeature(tf.string),
            IMAGE_KEY: tf.io.VarLenFeature(tf.string),
        },
        sequence_features={IMAGE_KEY: tf.io.VarLenFeature(tf.string)})
    # Sparse values flatten row-major: T steps of one JPEG, or one step (or context) of T JPEGs.
    per_step = sequence[IMAGE_KEY].values
    in_context = context[IMAGE_KEY].values
    frames = tf.cond(tf.size(per_step) > 0, lambda: per_step, lambda: in_context)
    return {
        'frames': frames,
        'label_indices': context[LABEL_INDEX_KEY].values,
        'label_text': context[LABEL_TEXT_KEY].values,
        'filename': context[FILENAME_KEY].values,
    }


def describe_record(serialized: bytes) -> str:
    """Which layout and keys a record holds, for error messages (Python, not a TF op)."""
    example = tf.train.SequenceExample.FromString(serialized)
    context = {k: _feature_summary(v) for k, v in example.context.feature.items()}
    lists = {k: f'{len(v.feature)} steps' for k, v in example.feature_lists.feature_list.items()}
    return (f'context features {context or "{}"}, feature lists {lists or "{}"}; expected JPEG '
            f'frames under the feature list {IMAGE_KEY!r} (one per step, or all in one step) '
            f'or the context feature {IMAGE_KEY!r}')


def _feature_summary(feature) -> str:
    kind = feature.WhichOneof('kind')
    return f'{kind}[{len(getattr(feature, kind).value)}]' if kind else 'empty'


_NO_FRAMES = f'nothing under the feature list or context key {IMAGE_KEY!r}'


def record_problem(parsed, num_classes: int, jpeg: bool = True):
    """'' for a usable record, else the reason (string scalar tensor). Checked before decoding so
    that bad data is reported with its shard and record instead of failing deep in a TF op."""
    num_frames = tf.size(parsed['frames'])
    num_labels = tf.size(parsed['label_indices'])
    label = tf.cond(num_labels > 0, lambda: parsed['label_indices'][0],
                    lambda: tf.constant(-1, tf.int64))
    problems = [
        (num_frames == 0, tf.constant('no frames: ' + _NO_FRAMES)),
        (num_labels != 1, tf.strings.format(
            f'expected exactly one {LABEL_INDEX_KEY} value, found {{}}', num_labels)),
        (tf.logical_or(label < 0, label >= num_classes), tf.strings.format(
            f'label {{}} ({LABEL_INDEX_KEY}) is outside [0, {num_classes})', label)),
    ]
    if jpeg:
        not_jpeg = tf.strings.substr(parsed['frames'], 0, 2) != b'\xff\xd8'
        first_bad = tf.argmax(tf.cast(not_jpeg, tf.int32))
        problems.append((tf.reduce_any(not_jpeg), tf.strings.format(
            'frame {} is not a JPEG (no FF D8 start marker)', first_bad)))
    reason = tf.constant('')
    for bad, message in reversed(problems):  # the first problem in the list wins
        reason = tf.cond(bad, lambda m=message: m, lambda r=reason: r)
    return reason


# ----------------------------------------------------------------------------------------------
# Temporal sampling: indices into the T stored frames, always wrapping modulo T as DMVR does.

def _wrap(offsets, num_stored, num_frames: int, stride: int):
    """[K] start offsets -> [K*n] indices (o + k*s) mod T, clips concatenated along time."""
    steps = tf.range(num_frames, dtype=tf.int32) * stride
    return tf.reshape(tf.math.floormod(offsets[:, None] + steps[None, :], num_stored), [-1])


def centred_indices(num_stored, num_frames: int, stride: int):
    """DMVR test sampling with one clip: start at max(0, floor((T - n*s) / 2))."""
    offset = tf.maximum(0, (num_stored - num_frames * stride) // 2)
    return _wrap(offset[None], num_stored, num_frames, stride)


def linspace_indices(num_stored, num_frames: int, stride: int, num_clips: int):
    """DMVR test sampling with K > 1 clips: offsets int32(linspace(0, max(0, T - n*s), K))."""
    max_offset = tf.maximum(0, num_stored - num_frames * stride)
    offsets = tf.cast(tf.linspace(0.0, tf.cast(max_offset, tf.float32), num_clips), tf.int32)
    return _wrap(offsets, num_stored, num_frames, stride)


def test_indices(num_stored, num_frames: int, stride: int, num_clips: int):
    if num_clips == 1:
        return centred_indices(num_stored, num_frames, stride)
    return linspace_indices(num_stored, num_frames, stride, num_clips)


def random_indices(num_stored, num_frames: int, stride: int, seed):
    """DMVR train sampling: a start uniform in [0, max(T - (n-1)*s, 1))."""
    max_offset = tf.maximum(num_stored - (num_frames - 1) * stride, 1)
    offset = tf.random.stateless_uniform((), seed, 0, max_offset, dtype=tf.int32)
    return _wrap(offset[None], num_stored, num_frames, stride)


def segment_indices(num_stored, num_frames: int, num_clips: int = 1, seed=None):
    """TSN-style uniform sampling: the video is split into n equal segments and one frame is
    taken from each, at a random position in training (`seed` given), else at the segment's
    (k + (j + 1/2) / K)-th fraction for clip j of K. -> [K*n] indices."""
    length = tf.cast(num_stored, tf.float32) / num_frames
    starts = tf.range(num_frames, dtype=tf.float32) * length
    if seed is not None:
        positions = starts + tf.random.stateless_uniform([num_frames], seed) * length
    else:
        phase = (tf.range(num_clips, dtype=tf.float32) + 0.5) / num_clips
        positions = starts[None, :] + phase[:, None] * length
    return tf.reshape(tf.minimum(tf.cast(positions, tf.int32), num_stored - 1), [-1])


# ----------------------------------------------------------------------------------------------
# Decoding and spatial processing (uint8 frames [N, H, W, 3] until `normalize`)

def _decode_one(encoded, any_image_format: bool):
    if any_image_format:
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.io.decode_jpeg(encoded, channels=3)


def decode_frames(jpegs, any_image_format: bool = False):
    """JPEG strings [N] -> uint8 [N, H, W, 3] with TF's default dct_method, as DMVR (or any
    format tf.io.decode_image reads: TFDS videos may hold PNG frames)."""
    return tf.map_fn(lambda x: _decode_one(x, any_image_format), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def first_undecodable_frame(jpegs, any_image_format: bool = False):
    """(index, TF error) of the first frame that fails to decode, or None. Frames are decoded one
    by one, eagerly, so the error is the decoder's own reason, not a map_fn wrapper's."""
    for index, encoded in enumerate(jpegs):
        try:
            _decode_one(encoded, any_image_format)
        except (tf.errors.OpError, ValueError) as e:
            return index, e
    return None


def resize_smallest(frames, min_resize):
    """Short side -> `min_resize`, long side -> floor(long * m / short); bilinear without
    antialiasing and a truncating cast back to uint8, exactly as DMVR."""
    shape = tf.shape(frames)
    h, w = shape[1], shape[2]
    m = tf.cast(min_resize, tf.int32)
    out_h = tf.maximum(m, h * m // w)
    out_w = tf.maximum(m, w * m // h)

    def resize():
        return tf.cast(tf.image.resize(frames, tf.stack([out_h, out_w]), method='bilinear'),
                       tf.uint8)

    return tf.cond(tf.logical_and(tf.equal(out_h, h), tf.equal(out_w, w)), lambda: frames, resize)


def pad_to_at_least(frames, size: int):
    """Zero-pads (centred, as resize_with_crop_or_pad) each spatial side shorter than `size`."""
    shape = tf.shape(frames)
    return tf.image.resize_with_crop_or_pad(frames, tf.maximum(shape[1], size),
                                            tf.maximum(shape[2], size))


def spatial_views(frames, crop_size: int, num_crops: int = 1):
    """Test crops -> [num_crops, N, c, c, 3]. One crop is DMVR's central crop-or-pad; several
    are evenly spaced along the long side (ends included) and centred on the short side."""
    if num_crops == 1:
        return tf.image.resize_with_crop_or_pad(frames, crop_size, crop_size)[None]
    frames = pad_to_at_least(frames, crop_size)
    shape = tf.shape(frames)
    free_h, free_w = shape[1] - crop_size, shape[2] - crop_size
    along = tf.range(num_crops) * tf.maximum(free_h, free_w) // (num_crops - 1)
    tall = free_h > free_w
    ys = tf.where(tall, along, tf.fill([num_crops], free_h // 2))
    xs = tf.where(tall, tf.fill([num_crops], free_w // 2), along)
    return tf.stack([frames[:, ys[i]:ys[i] + crop_size, xs[i]:xs[i] + crop_size]
                     for i in range(num_crops)])


def random_crop(frames, crop_size: int, seed):
    """One c x c window at a random position for all frames (padding first if smaller)."""
    frames = pad_to_at_least(frames, crop_size)
    shape = tf.shape(frames)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    y = tf.random.stateless_uniform((), seeds[0], 0, shape[1] - crop_size + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform((), seeds[1], 0, shape[2] - crop_size + 1, dtype=tf.int32)
    return frames[:, y:y + crop_size, x:x + crop_size]


def random_resized_crop(frames, crop_size: int, seed, area_range=(0.08, 1.0),
                        aspect_ratio_range=(3 / 4, 4 / 3)):
    """Inception-style crop (random area fraction and aspect ratio), the same box for every
    frame, resized to c x c (bilinear, truncated to uint8 as `resize_smallest`)."""
    shape = tf.shape(frames)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape[1:], tf.zeros([1, 0, 4], tf.float32), seed=seed, area_range=area_range,
        aspect_ratio_range=aspect_ratio_range, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    box = frames[:, begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]]
    return tf.cast(tf.image.resize(box, (crop_size, crop_size), method='bilinear'), tf.uint8)


def random_flip(frames, seed):
    """Left-right flip of the whole clip with probability 1/2."""
    flip = tf.random.stateless_uniform((), seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(frames, axis=[-2]), lambda: frames)


def normalize(frames, zero_centering: bool = False, mean=0.0, std=1.0):
    """uint8 -> float32: `/255` (true division) or `*(2/255) - 1`, then `-mean`, then `/std`."""
    x = tf.cast(frames, tf.float32)
    x = x * (2.0 / 255.0) - 1.0 if zero_centering else x / 255.0
    x = x - tf.constant(mean, tf.float32)
    return x / tf.constant(std, tf.float32)

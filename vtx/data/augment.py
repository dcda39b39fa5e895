"""Clip-consistent training augmentations (TF, stateless): RandAugment and random erasing.

Every frame of a clip gets the same operations with the same parameters, so augmentation never
creates motion. RandAugment draws N operations uniformly from the 14 of the RandAugment paper
(Cubuk et al., 2020), each at magnitude M (of 10), with timm's "increasing" magnitude rules
(`rand-mM-nN-inc1`, as MViT's recipe): signed operations are negated with probability 1/2 and
geometric ones fill with grey (128). timm's per-operation magnitude noise (`mstd`) is not drawn.
"""
import math

from vtx.data.tf_on_host import tf

_MAX_LEVEL = 10.0
_FILL = 128


def _blend(a, b, factor):
    """a + factor * (b - a) in float, clipped back to uint8 (PIL's ImageEnhance rule)."""
    a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    return tf.cast(tf.clip_by_value(a + factor * (b - a), 0.0, 255.0), tf.uint8)


def _grey(frames):
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(frames))


def _affine(frames, transform):
    """Applies one projective transform ([8], output->input pixel map) to every frame."""
    n = tf.shape(frames)[0]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=frames, transforms=tf.tile(transform[None], [n, 1]),
        output_shape=tf.shape(frames)[1:3], fill_value=float(_FILL), interpolation='BILINEAR',
        fill_mode='CONSTANT')


def _rotate(frames, degrees):
    shape = tf.cast(tf.shape(frames), tf.float32)
    h, w = shape[1], shape[2]
    angle = degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Rotation about the image centre, written as the map from output to input coordinates.
    x0 = (w - 1) / 2 - cos * (w - 1) / 2 + sin * (h - 1) / 2
    y0 = (h - 1) / 2 - sin * (w - 1) / 2 - cos * (h - 1) / 2
    return _affine(frames, tf.stack([cos, -sin, x0, sin, cos, y0, 0.0, 0.0]))


def _shear_x(frames, k):
    return _affine(frames, tf.stack([1.0, k, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def _shear_y(frames, k):
    return _affine(frames, tf.stack([1.0, 0.0, 0.0, k, 1.0, 0.0, 0.0, 0.0]))


def _translate(frames, fraction, axis):
    size = tf.cast(tf.shape(frames)[2 - axis], tf.float32)
    dx, dy = (fraction * size, 0.0) if axis == 0 else (0.0, fraction * size)
    return _affine(frames, tf.stack([1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0]))


def _auto_contrast(frames):
    x = tf.cast(frames, tf.float32)
    low = tf.reduce_min(x, axis=[0, 1, 2])
    high = tf.reduce_max(x, axis=[0, 1, 2])
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    low = tf.where(high > low, low, 0.0)
    return tf.cast(tf.clip_by_value((x - low) * scale, 0.0, 255.0), tf.uint8)


def _equalize(frames):
    """Histogram equalisation per channel, with one histogram over the whole clip."""
    def channel(x):
        hist = tf.histogram_fixed_width(tf.cast(x, tf.int32), [0, 255], nbins=256)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
        step = (tf.reduce_sum(hist) - last) // 255
        lut = (tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1)
        lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
        return tf.cond(step > 0, lambda: tf.gather(lut, tf.cast(x, tf.int32)), lambda: x)
    return tf.stack([channel(frames[..., c]) for c in range(3)], axis=-1)


def _sharpness(frames, factor):
    x = tf.cast(frames, tf.float32)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'SAME')
    # PIL keeps the border pixels unfiltered.
    mask = tf.pad(tf.ones(tf.shape(x)[1:3] - 2), [[1, 1], [1, 1]])[None, :, :, None]
    smooth = mask * smooth + (1 - mask) * x
    return _blend(smooth, x, factor)


def _operations(level, sign):
    """(name, fn(frames)) pairs; `level` in [0, 1], `sign` +1/-1 for the signed ones."""
    enhance = 1.0 + sign * 0.9 * level  # timm: factor 1 +- 0.9 * M/10
    posterize_step = 2 ** (4 + int(4 * level))  # keeps the 4 - int(4 * level) top bits
    return [
        ('identity', lambda f: f),
        ('auto_contrast', _auto_contrast),
        ('equalize', _equalize),
        ('rotate', lambda f: _rotate(f, sign * 30.0 * level)),
        ('solarize', lambda f: tf.where(tf.cast(f, tf.int32) < int(256 - 256 * level), f,
                                        255 - f)),
        ('color', lambda f: _blend(_grey(f), f, enhance)),
        ('posterize', lambda f: tf.cast(
            tf.cast(f, tf.int32) // posterize_step * posterize_step, tf.uint8)),
        ('contrast', lambda f: _blend(tf.fill(tf.shape(f), tf.cast(tf.reduce_mean(
            tf.cast(tf.image.rgb_to_grayscale(f), tf.float32)), tf.uint8)), f, enhance)),
        ('brightness', lambda f: _blend(tf.zeros_like(f), f, enhance)),
        ('sharpness', lambda f: _sharpness(f, enhance)),
        ('shear_x', lambda f: _shear_x(f, sign * 0.3 * level)),
        ('shear_y', lambda f: _shear_y(f, sign * 0.3 * level)),
        ('translate_x', lambda f: _translate(f, sign * 0.45 * level, 0)),
        ('translate_y', lambda f: _translate(f, sign * 0.45 * level, 1)),
    ]


OPERATIONS = [name for name, _ in _operations(0.0, 1.0)]


def randaugment(frames, num_layers: int, magnitude: float, seed):
    """uint8 clip [N, H, W, 3] -> the same clip after `num_layers` random operations."""
    level = min(max(magnitude, 0.0), _MAX_LEVEL) / _MAX_LEVEL
    seeds = tf.random.experimental.stateless_split(seed, 2 * num_layers)
    for layer in range(num_layers):
        choice = tf.random.stateless_uniform((), seeds[2 * layer], 0, len(OPERATIONS), tf.int32)
        sign = tf.where(tf.random.stateless_uniform((), seeds[2 * layer + 1]) < 0.5, -1.0, 1.0)
        branches = [lambda fn=fn: tf.ensure_shape(fn(frames), frames.shape)
                    for _, fn in _operations(level, sign)]
        frames = tf.switch_case(choice, branches)
    return frames


def random_erasing(clip, probability: float, seed, area_range=(0.02, 1 / 3),
                   log_aspect_range=(math.log(0.3), math.log(1 / 0.3))):
    """With `probability`, replaces one rectangle (the same for every frame) of the normalised
    float clip [N, H, W, C] with standard normal noise (timm's 'pixel' mode)."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    shape = tf.shape(clip)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    area = h * w * tf.random.stateless_uniform((), seeds[0], *area_range)
    aspect = tf.exp(tf.random.stateless_uniform((), seeds[1], *log_aspect_range))
    eh = tf.cast(tf.minimum(tf.round(tf.sqrt(area * aspect)), h), tf.int32)
    ew = tf.cast(tf.minimum(tf.round(tf.sqrt(area / aspect)), w), tf.int32)
    y = tf.random.stateless_uniform((), seeds[2], 0, shape[1] - eh + 1, tf.int32)
    x = tf.random.stateless_uniform((), seeds[3], 0, shape[2] - ew + 1, tf.int32)
    rows = tf.logical_and(tf.range(shape[1]) >= y, tf.range(shape[1]) < y + eh)
    cols = tf.logical_and(tf.range(shape[2]) >= x, tf.range(shape[2]) < x + ew)
    box = tf.logical_and(rows[:, None], cols[None, :])[None, :, :, None]
    noise = tf.random.stateless_normal(tf.concat([[1], shape[1:]], 0), seeds[4])
    erase = tf.random.stateless_uniform((), seeds[4]) < probability
    return tf.where(tf.logical_and(box, erase), noise, clip)

"""Sampling, spatial views, clip-consistent augmentation and on-device mixing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import primitive_sites
from vtx import config as vtx_config
from vtx.data import augment, dmvr, mixing, pipeline


def _seed(i):
    return tf.constant([i, 7], tf.int64)


def test_dense_sampling_wraps_modulo_t():
    assert dmvr.centred_indices(5, 8, 2).numpy().tolist() == [0, 2, 4, 1, 3, 0, 2, 4]
    assert dmvr.centred_indices(30, 8, 2).numpy().tolist() == list(range(7, 23, 2))
    clips = dmvr.linspace_indices(30, 4, 2, 3).numpy().reshape(3, 4)
    assert clips[:, 0].tolist() == [0, 11, 22]  # linspace(0, 30 - 8, 3), truncated
    for i in range(20):
        start = int(dmvr.random_indices(10, 4, 2, _seed(i))[0])
        assert 0 <= start < 10 - 3 * 2


def test_uniform_segment_sampling():
    assert dmvr.segment_indices(20, 4).numpy().tolist() == [2, 7, 12, 17]
    assert dmvr.segment_indices(20, 4, 2).numpy().tolist() == [1, 6, 11, 16, 3, 8, 13, 18]
    assert dmvr.segment_indices(3, 4).numpy().tolist() == [0, 1, 1, 2]  # short videos repeat
    for i in range(10):
        idx = dmvr.segment_indices(20, 4, seed=_seed(i)).numpy()
        assert ((idx // 5) == np.arange(4)).all()


def test_three_crops_span_the_long_side():
    frames = tf.tile(tf.constant(np.arange(20, dtype=np.uint8))[None, None, :, None], [2, 12, 1, 3])
    views = dmvr.spatial_views(frames, 8, 3).numpy()  # [3, 2, 8, 8, 3]
    assert views[:, 0, 0, 0, 0].tolist() == [0, 6, 12]
    np.testing.assert_array_equal(views[1], dmvr.spatial_views(frames, 8, 1).numpy()[0])
    tall = tf.transpose(frames, [0, 2, 1, 3])
    assert dmvr.spatial_views(tall, 8, 3).numpy()[:, 0, :, 0, 0][:, 0].tolist() == [0, 6, 12]
    padded = dmvr.spatial_views(frames[:, :6, :6], 8, 3).numpy()  # smaller than the crop: pads
    assert padded.shape == (3, 2, 8, 8, 3) and (padded[:, :, 0] == 0).all()


def _clip(num_frames=3, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return tf.constant(np.stack([frame] * num_frames))


@pytest.mark.parametrize('level', [0.3, 0.9])
def test_every_randaugment_operation_is_consistent_across_frames(level):
    clip = _clip()
    for name, op in augment._operations(level, tf.constant(-1.0)):
        out = op(clip).numpy()
        assert out.shape == clip.shape and out.dtype == np.uint8, name
        assert all((f == out[0]).all() for f in out), name
        if name not in ('identity', 'auto_contrast'):  # random pixels already span 0..255
            assert (out != clip.numpy()).any(), name
    one = augment.randaugment(clip, 2, 9, _seed(3)).numpy()
    np.testing.assert_array_equal(one, augment.randaugment(clip, 2, 9, _seed(3)).numpy())


def test_random_erasing_uses_one_box_for_all_frames():
    clip = tf.zeros([4, 16, 16, 3])
    assert (augment.random_erasing(clip, 0.0, _seed(0)).numpy() == 0).all()
    erased = augment.random_erasing(clip, 1.0, _seed(1)).numpy() != 0
    assert erased.any() and (erased == erased[:1]).all()


def _train_config(**overrides):
    c = vtx_config.defaults().data
    c.num_classes, c.num_frames, c.crop_size, c.min_resize = 2, 3, 32, 24
    for k, v in overrides.items():
        c[k] = v
    return pipeline._Settings(c)


def test_train_clip_augmentations():
    clip = _clip()
    encoded = tf.stack([tf.io.encode_jpeg(f, quality=100) for f in clip])
    decoded = dmvr.normalize(dmvr.decode_frames(encoded)).numpy()
    plain = _train_config(train_scale_range=(24, 24), random_flip=False, crop_size=24)
    flipped = 0
    for i in range(6):
        out = pipeline.train_clip(encoded, plain, _seed(i)).numpy()
        # Short side 24 kept: the crop slides along the width only, and never flips.
        assert any(np.array_equal(out, decoded[:, :, x:x + 24]) for x in range(9))
        flips = _train_config(train_scale_range=(24, 24), crop_size=24)
        out = pipeline.train_clip(encoded, flips, _seed(i)).numpy()
        flipped += not any(np.array_equal(out, decoded[:, :, x:x + 24]) for x in range(9))
    assert 0 < flipped < 6
    heavy = _train_config(random_resized_crop=True, randaugment_layers=2, randaugment_magnitude=9,
                          random_erasing=0.5, sampling='uniform', crop_size=16)
    out = pipeline.train_clip(encoded, heavy, _seed(0)).numpy()
    assert out.shape == (3, 16, 16, 3) and np.isfinite(out).all()


def test_mixup_and_cutmix():
    images = jnp.stack([jnp.zeros((2, 8, 8, 3)), jnp.ones((2, 8, 8, 3))])
    labels = jnp.eye(2)
    rng = jax.random.PRNGKey(0)
    same = mixing.mixup_cutmix(rng, images, labels)
    assert same[0] is images and same[1] is labels
    mixed, soft = jax.jit(lambda r, x, y: mixing.mixup_cutmix(r, x, y, mixup_alpha=0.8))(
        rng, images, labels)
    lam = float(soft[0, 0])
    np.testing.assert_allclose(mixed[0], 1 - lam, atol=1e-6)  # lam * 0 + (1 - lam) * 1
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
    for seed in range(4):
        cut, soft = mixing.mixup_cutmix(jax.random.PRNGKey(seed), images, labels,
                                        cutmix_alpha=1.0)
        pasted = np.asarray(cut[0])  # ones pasted into clip 0
        assert set(np.unique(pasted)) <= {0.0, 1.0}
        assert (pasted == pasted[:1]).all()  # the same box on every frame
        np.testing.assert_allclose(float(soft[0, 0]), 1 - pasted.mean(), atol=1e-6)


def test_mixup_and_cutmix_draw_one_beta():
    """With both enabled, one Beta draw with the chosen kind's alpha: each jax.random.beta call
    site compiles its own rejection-sampling loops (1.6 s of XLA:CPU for two, 0.9 s for one)."""
    images, labels, key = jnp.zeros((2, 2, 8, 8, 3)), jnp.eye(2), jax.random.PRNGKey(0)
    mixed = jax.make_jaxpr(lambda r: mixing.mixup_cutmix(r, images, labels, mixup_alpha=0.8,
                                                         cutmix_alpha=1.0))(key)
    one_beta = jax.make_jaxpr(lambda r: jax.random.beta(r, 0.8, 0.8))(key)
    assert primitive_sites(mixed, 'random_gamma') == primitive_sites(one_beta, 'random_gamma')

"""Mixup and CutMix on device (jnp, jit-able), applied by the trainer to a whole batch.

As timm's batch mode: every clip is mixed with the clip at the mirrored batch position, with one
ratio lam ~ Beta(alpha, alpha) for the batch. CutMix pastes one box, the same on every frame of
the clip, and lam becomes the exact kept-area fraction of the clipped box. With both alphas
positive, CutMix is chosen with probability `switch_prob`.
"""
import jax
import jax.numpy as jnp


def _cutmix_mask(rng, lam, height: int, width: int):
    """[H, W] bool (True inside the pasted box) and the kept-area fraction."""
    ry, rx = jax.random.split(rng)
    cut = jnp.sqrt(1.0 - lam)
    box_h, box_w = jnp.floor(height * cut), jnp.floor(width * cut)
    cy = jax.random.randint(ry, (), 0, height)
    cx = jax.random.randint(rx, (), 0, width)
    y0 = jnp.clip(cy - box_h // 2, 0, height)
    y1 = jnp.clip(cy + box_h // 2, 0, height)
    x0 = jnp.clip(cx - box_w // 2, 0, width)
    x1 = jnp.clip(cx + box_w // 2, 0, width)
    ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return box, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mixup_cutmix(rng, images, labels_onehot, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5):
    """images [B, ..., H, W, C] (clips or images), labels_onehot [B, K] (float, possibly
    smoothed) -> mixed (images, labels). Returns the inputs unchanged when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels_onehot
    r_switch, r_lam, r_box = jax.random.split(rng, 3)
    height, width = images.shape[-3], images.shape[-2]
    partner = images[::-1]
    if cutmix_alpha <= 0 or mixup_alpha <= 0:
        use_cutmix = mixup_alpha <= 0
    else:
        use_cutmix = jax.random.uniform(r_switch) < switch_prob
    # One Beta draw with the chosen alpha, not one per branch: jax.random.beta is a rejection
    # sampler whose loops XLA compiles anew for every call site.
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
    lam = jax.random.beta(r_lam, alpha, alpha)

    def mixup(lam):
        return (lam * images + (1 - lam) * partner).astype(images.dtype), lam

    def cutmix(lam):
        box, lam = _cutmix_mask(r_box, lam, height, width)
        return jnp.where(box[:, :, None], partner, images), lam

    if isinstance(use_cutmix, bool):
        mixed, lam = (cutmix if use_cutmix else mixup)(lam)
    else:
        mixed, lam = jax.lax.cond(use_cutmix, cutmix, mixup, lam)
    lam = lam.astype(labels_onehot.dtype)
    return mixed, lam * labels_onehot + (1 - lam) * labels_onehot[::-1]

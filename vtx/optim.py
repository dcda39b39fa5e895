"""Optimizers, learning-rate schedules, weight-decay masks and per-group lr multipliers.

Schedules are configured in epochs (as the papers state them) and evaluated per optimizer step.
"""
import math
import re

import jax
import jax.numpy as jnp
import optax

from vtx.errors import VtxError


def total_steps(config) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if config.data.num_train_examples <= 0:
        raise VtxError('set config.train.num_steps, or config.data.num_train_examples so that '
                       'config.train.num_epochs can be turned into steps')
    return math.ceil(config.train.num_epochs * config.data.num_train_examples / config.train.batch_size)


def steps_per_epoch(config) -> float:
    if config.data.num_train_examples > 0:
        return config.data.num_train_examples / config.train.batch_size
    return total_steps(config) / config.train.num_epochs  # schedule spans the configured steps


def learning_rate_schedule(config) -> optax.Schedule:
    opt = config.optimizer
    per_epoch = steps_per_epoch(config)
    steps = total_steps(config)
    warmup = int(round(opt.warmup_epochs * per_epoch))
    peak = opt.learning_rate
    if opt.schedule == 'cosine':
        main = optax.cosine_decay_schedule(peak, max(steps - warmup, 1), alpha=opt.cosine_end_factor)
    elif opt.schedule == 'step':
        boundaries = {int(round(e * per_epoch)) - warmup: opt.step_factor for e in opt.step_epochs}
        main = optax.piecewise_constant_schedule(peak, boundaries)
    elif opt.schedule == 'constant':
        main = optax.constant_schedule(peak)
    else:
        raise VtxError(f"config.optimizer.schedule={opt.schedule!r}: use 'cosine', 'step' or 'constant'")
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(peak * opt.warmup_start_factor, peak, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def param_path(path) -> str:
    return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _path_map(fn, params):
    return jax.tree_util.tree_map_with_path(lambda p, _: fn(param_path(p)), params)


def decay_mask(config, params):
    patterns = [re.compile(p) for p in config.optimizer.no_decay]
    return _path_map(lambda name: not any(p.search(name) for p in patterns), params)


def lr_multipliers(config, params):
    """First matching (regex, multiplier) pair wins, as mmcv's optimizer constructor resolves keys."""
    rules = [(re.compile(p), float(m)) for p, m in config.optimizer.lr_multipliers]
    return _path_map(lambda name: next((m for p, m in rules if p.search(name)), 1.0), params)


# Leaves with fewer elements than this (biases, norms, pooling kernels, position tables) are
# squared and summed as one concatenated vector: at most about 1.1 M elements in the zoo.
GLOBAL_NORM_CONCAT_BELOW = 2 ** 16


def global_norm(tree):
    """The L2 norm of all of `tree`'s leaves together, in float32.

    XLA:CPU compiles each leaf's sum of squares into kernels of its own, up to three per leaf (the
    square, a split of the sum for accuracy, the sum), and compile time grows with the kernel
    count. So the small leaves, most leaves by count, are squared and summed as one vector, and
    each large leaf on its own (copying those would add a pass over memory to every step). For
    STTS-MViT's 333 leaves the norm compiles to 68 kernels instead of 862, and its AdamW update
    with clipping alone in 2.7 s of XLA instead of 3.9-4.7 s; in whole train steps the saving
    was within this host's spread of compile times (docs/performance.md, "Compile time,
    2026-12-06"). The partial sums are stacked and summed once: summed in Python, as optax's norm
    does, they would be a chain of one scalar add per leaf."""
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    small = [x.ravel() for x in leaves if x.size < GLOBAL_NORM_CONCAT_BELOW]
    squares = [jnp.sum(jnp.square(x)) for x in leaves if x.size >= GLOBAL_NORM_CONCAT_BELOW]
    if small:
        squares.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    return jnp.sqrt(jnp.sum(jnp.stack(squares)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_, as the official recipes clip: the gradients times
    min(1, max_norm / (global norm + 1e-6)). A multiply (optax divides by the norm) lets XLA fuse
    the scaling into the optimizer's update of each leaf."""
    def update(updates, state, params=None):
        factor = jnp.minimum(1.0, max_norm / (global_norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """params may be abstract (shapes only): only their tree structure and paths are used."""
    opt = config.optimizer
    schedule = learning_rate_schedule(config)
    mask = decay_mask(config, params)
    chain = []
    if opt.grad_clip_norm > 0:
        chain.append(clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == 'sgd':
        # PyTorch SGD adds weight decay to the gradient before momentum.
        if opt.weight_decay > 0:
            chain.append(optax.add_decayed_weights(opt.weight_decay, mask))
        chain.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == 'adamw':
        chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                 weight_decay=opt.weight_decay, mask=mask))
    else:
        raise VtxError(f"config.optimizer.name={opt.name!r}: use 'sgd' or 'adamw'")
    if opt.lr_multipliers:
        # The step is linear in the group's lr (decoupled decay included), so scaling it is exact.
        multipliers = lr_multipliers(config, params)
        chain.append(optax.GradientTransformation(
            lambda _: optax.EmptyState(),
            lambda updates, state, params=None: (
                jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state)))
    return optax.chain(*chain), schedule

"""The functions a run executes, built in one place: `build(config, mesh)`.

`build` makes the model, the optimizer and its schedule, the placement of the train state
(parameters and optimizer state by the rules in `vtx.sharding`, the batch split over the mesh's
'data' axis) and the jitted functions: `init_state`, `train_step` (explicit in/out shardings, the
state donated), `eval_step` (multi-view aggregation) and `forward` (eval-mode logits of a clip
batch). The trainer runs these objects, the report lowers them on abstract inputs and the
benchmark times them, so what is measured is what trains.
"""
import copy
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from vtx import families, optim, sharding, xla_flags
from vtx.errors import VtxError
from vtx.models import build_model, resolve_dtype


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


def input_shape(config, batch: int = 1):
    d = config.data
    return (batch, d.num_frames, d.crop_size, d.crop_size, 3)


def abstract_variables(model, config):
    """Boxed (logically partitioned) shapes of the model's variables, without allocating them."""
    dummy = jnp.zeros(input_shape(config), jnp.float32)
    return jax.eval_shape(lambda rng: model.init(rng, dummy, train=False), jax.random.PRNGKey(0))


def cross_entropy(logits, labels, label_smoothing: float):
    """Mean softmax cross-entropy; labels are class ids [B] or (mixed) target distributions [B, K]."""
    num_classes = logits.shape[-1]
    targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
    if label_smoothing > 0:
        targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits, targets)


def topk_correct(scores, labels, k: int):
    labels = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    k = min(k, scores.shape[-1])
    top = jax.lax.top_k(scores, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch, *, model, tx, schedule, config, mesh, gathered=None):
    """One optimizer step on the global batch, split into `grad_accum_steps` micro-batches.
    `gathered`: where FSDP-stored parameters are used (`sharding.gather_params`)."""
    accum = config.train.grad_accum_steps
    base_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    extra = {}
    if families.family(config.model.name).takes_train_progress:
        # STTS: the differentiable top-k's noise decays linearly over training.
        extra['train_progress'] = state.step / optim.total_steps(config)
    mixing = config.data.mixup_alpha > 0 or config.data.cutmix_alpha > 0
    if mixing:
        from vtx.data.mixing import mixup_cutmix  # here: importing vtx.data loads TF

    def loss_fn(params, micro, rng):
        mix_rng, dropout_rng = jax.random.split(rng)
        images, labels = micro['image'], micro['label']
        if mixing:
            labels = labels if labels.ndim == 2 else jax.nn.one_hot(labels, config.data.num_classes)
            images, labels = mixup_cutmix(mix_rng, images, labels, config.data.mixup_alpha,
                                          config.data.cutmix_alpha)
        with sharding.constrain_activations(mesh):
            logits = model.apply({'params': sharding.gather_params(params, gathered)}, images,
                                 train=True, rngs={'dropout': dropout_rng}, **extra)
        # The loss (log-softmax and mean) in float32 whatever the compute dtype.
        logits = logits.astype(jnp.float32)
        loss = cross_entropy(logits, labels, config.train.label_smoothing).mean()
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
        (loss, logits), grads = grad_fn(state.params, batch, base_rng)
        labels = batch['label']
    else:
        # Micro-batch j takes rows j, j+accum, ...: a reshape that keeps each device's rows local.
        micro_batches = jax.tree.map(
            lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

        def accumulate(carry, xs):
            micro, j = xs
            (loss, logits), grads = grad_fn(state.params, micro, jax.random.fold_in(base_rng, j))
            return jax.tree.map(jnp.add, carry, grads), (loss, logits)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, (losses, logits) = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / accum, grads)
        loss = losses.mean()
        logits = logits.reshape(-1, logits.shape[-1])
        labels = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), micro_batches['label'])
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'top1': topk_correct(logits, labels, 1).mean(),
               'top5': topk_correct(logits, labels, 5).mean(), 'lr': schedule(state.step),
               'grad_norm': optim.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def aggregate_views(logits, aggregation: str):
    """Per-view logits [B, V, K] -> per-video scores [B, K]: the mean of the views' logits
    ('logits') or of their softmax ('probs'), as the config's test protocol says."""
    logits = logits.astype(jnp.float32)
    if aggregation == 'probs':
        return jax.nn.softmax(logits, -1).mean(1)
    if aggregation == 'logits':
        return logits.mean(1)
    raise VtxError(f"config.data.eval_aggregation={aggregation!r}: expected 'logits' or 'probs'")


def eval_logits(model, params, clips):
    """Logits [N, K] of clips [N, T, H, W, 3] with the model in eval mode (no dropout)."""
    return model.apply({'params': params}, clips, train=False)


def eval_features(model, params, clips):
    """One feature vector per clip, float32 [N, D]: the classifier's input averaged over every
    axis but its channels (Video Swin's pooling; the frames of the ViT family's per-frame or
    temporal head; MViT's class token as it is)."""
    features = model.apply({'params': params}, clips, train=False, return_features=True)[1]
    return features.reshape(features.shape[0], -1, features.shape[-1]).mean(1).astype(jnp.float32)


def eval_step(params, batch, *, model, config, mesh, gathered=None):
    """Sums over the (masked) batch of per-video loss and top-1/top-5 after multi-view aggregation."""
    images = batch['image']  # [B, V, T, H, W, 3]
    b, v = images.shape[:2]
    with sharding.constrain_activations(mesh):
        logits = eval_logits(model, sharding.gather_params(params, gathered),
                             images.reshape(b * v, *images.shape[2:]))
    scores = aggregate_views(logits.reshape(b, v, -1), config.data.eval_aggregation)
    if config.data.eval_aggregation == 'probs':
        loss = -jnp.log(jnp.take_along_axis(scores, batch['label'][:, None], -1)[:, 0] + 1e-12)
    else:
        loss = cross_entropy(scores, batch['label'], 0.0)
    mask = batch['mask'].astype(jnp.float32)
    return {'loss': (loss * mask).sum(), 'top1': (topk_correct(scores, batch['label'], 1) * mask).sum(),
            'top5': (topk_correct(scores, batch['label'], 5) * mask).sum(), 'count': mask.sum()}


def jit_forward(fun, **jit_kwargs):
    """`jax.jit` of a program that runs a model forward only (no backward pass), compiled with
    `xla_flags.forward_compiler_options()`. JAX runs such a program at top level only: inside a
    function of your own, call `fun` itself."""
    return jax.jit(fun, compiler_options=xla_flags.forward_compiler_options(), **jit_kwargs)


def make_forward(model):
    """Forward-only jit (`jit_forward`) of `eval_logits` of `model`, called as (params, clips). It
    has no shardings of its own, so it runs where its arguments are: sharded ones in the
    benchmark, one device in predict."""
    return jit_forward(functools.partial(eval_logits, model))


@dataclasses.dataclass(frozen=True)
class Steps:
    """What `build` makes for one config on one mesh; the jitted functions are built once, here."""
    config: Any
    model: nn.Module
    mesh: Mesh
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_sharding: TrainState   # a NamedSharding per leaf of the train state
    batch_sharding: NamedSharding  # a prefix: every batch leaf split over 'data' on dim 0
    abstract_state: TrainState   # jax.ShapeDtypeStruct leaves with their shardings; no memory
    init_state: Callable[[], TrainState]  # the state of config.seed, created already sharded
    train_step: Callable  # (state, batch) -> (state, metrics); the state argument is donated
    eval_step: Callable   # (params, batch of views) -> replicated metric sums
    forward: Callable     # (params, clips) -> logits
    # eval_step and forward are forward-only jits (`jit_forward`): JAX runs them at top level
    # only; inside a function of your own, call `eval_logits` or `eval_step`.


def build(config, mesh: Mesh) -> Steps:
    """The model, optimizer, state placement and jitted steps of `config` on `mesh`. Only shapes
    are traced here; nothing is allocated until `init_state` runs. `Steps.config` is `config` with
    `model.dtype` resolved for this backend ('auto' -> 'bfloat16' or 'float32')."""
    if 'dtype' in config.model and resolve_dtype(config.model.dtype) != config.model.dtype:
        config = copy.deepcopy(config)
        config.model.dtype = resolve_dtype(config.model.dtype)
    model = build_model(config.model)
    boxed = abstract_variables(model, config)['params']
    params_sharding = sharding.param_shardings(boxed, mesh, config.mesh)
    gathered = (sharding.param_shardings(boxed, mesh, config.mesh, fsdp=False)
                if config.mesh.param_sharding == 'fsdp' else None)
    abstract_params = nn.meta.unbox(boxed)
    tx, schedule = optim.make_optimizer(config, abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, params_sharding,
        transform_non_params=lambda _: sharding.replicated(mesh))
    state_sharding = TrainState(step=sharding.replicated(mesh), params=params_sharding,
                                opt_state=opt_sharding)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                   opt_state=abstract_opt), state_sharding)

    def init():
        dummy = jnp.zeros(input_shape(config), jnp.float32)
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(config.seed), dummy,
                                          train=False)['params'])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    batch_sharding = sharding.batch_sharding(mesh, 1)
    replicated = sharding.replicated(mesh)
    return Steps(
        config=config, model=model, mesh=mesh, tx=tx, schedule=schedule,
        state_sharding=state_sharding, batch_sharding=batch_sharding,
        abstract_state=abstract_state,
        init_state=jax.jit(init, out_shardings=state_sharding),
        train_step=jax.jit(
            functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                              mesh=mesh, gathered=gathered),
            in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, replicated),
            donate_argnums=(0,)),
        eval_step=jit_forward(functools.partial(eval_step, model=model, config=config, mesh=mesh,
                                                gathered=gathered),
                              in_shardings=(params_sharding, batch_sharding),
                              out_shardings=replicated),
        forward=make_forward(model))

"""Training and evaluation loop: create_train_state, train_step, eval_step, train_and_evaluate.

One code path from a laptop CPU to a TPU pod: parameters and optimizer state are placed by the
sharding rules in `vtx.sharding`, the batch is sharded over the mesh's 'data' axis, and both steps
are `jax.jit` with explicit in/out shardings. Everything random (init, dropout, data order,
augmentation) is a pure function of `config.seed` and the step, so a resumed run continues
bit for bit where the interrupted one stopped.
"""
import inspect
import json
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vtx import checkpoint, optim, sharding
from vtx.errors import VtxError
from vtx.metrics import MetricWriter
from vtx.models import build_model


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


class NonFiniteLossError(VtxError):
    pass


def input_shape(config, batch: int = 1):
    d = config.data
    return (batch, d.num_frames, d.crop_size, d.crop_size, 3)


def abstract_variables(model, config):
    """Boxed (logically partitioned) shapes of the model's variables, without allocating them."""
    dummy = jnp.zeros(input_shape(config), jnp.float32)
    return jax.eval_shape(lambda rng: model.init(rng, dummy, train=False), jax.random.PRNGKey(0))


def create_train_state(config, model, mesh):
    """Returns (state, state_shardings, tx, schedule); the state is initialised directly sharded."""
    boxed = abstract_variables(model, config)['params']
    params_sharding = sharding.param_shardings(boxed, mesh, config.mesh)
    abstract_params = nn.meta.unbox(boxed)
    tx, schedule = optim.make_optimizer(config, abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, params_sharding,
        transform_non_params=lambda _: sharding.replicated(mesh))
    state_sharding = TrainState(step=sharding.replicated(mesh), params=params_sharding,
                                opt_state=opt_sharding)

    def init(rng):
        dummy = jnp.zeros(input_shape(config), jnp.float32)
        params = nn.meta.unbox(model.init(rng, dummy, train=False)['params'])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    init = jax.jit(init, out_shardings=state_sharding)
    state = init(jax.random.PRNGKey(config.seed))
    return state, state_sharding, tx, schedule


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


def train_step(state: TrainState, batch, *, model, tx, schedule, config):
    """One optimizer step on the global batch, split into `grad_accum_steps` micro-batches."""
    accum = config.train.grad_accum_steps
    base_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    extra = {}
    if 'train_progress' in inspect.signature(type(model).__call__).parameters:
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
        logits = model.apply({'params': params}, images, train=True, rngs={'dropout': dropout_rng},
                             **extra)
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
               'grad_norm': optax.tree.norm(grads)}
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


def eval_step(params, batch, *, model, config):
    """Sums over the (masked) batch of per-video loss and top-1/top-5 after multi-view aggregation."""
    images = batch['image']  # [B, V, T, H, W, 3]
    b, v = images.shape[:2]
    logits = model.apply({'params': params}, images.reshape(b * v, *images.shape[2:]), train=False)
    scores = aggregate_views(logits.reshape(b, v, -1), config.data.eval_aggregation)
    if config.data.eval_aggregation == 'probs':
        loss = -jnp.log(jnp.take_along_axis(scores, batch['label'][:, None], -1)[:, 0] + 1e-12)
    else:
        loss = cross_entropy(scores, batch['label'], 0.0)
    mask = batch['mask'].astype(jnp.float32)
    return {'loss': (loss * mask).sum(), 'top1': (topk_correct(scores, batch['label'], 1) * mask).sum(),
            'top5': (topk_correct(scores, batch['label'], 5) * mask).sum(), 'count': mask.sum()}


def _global_batch(local, mesh):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x), local)


def train_batches(config, start_step: int):
    """This process's share of each global train batch, concatenated over its readers."""
    processes = jax.process_count()
    readers = config.data.num_readers or processes
    if readers % processes:
        raise VtxError(f'config.data.num_readers={readers} must be a multiple of the {processes} '
                       'processes')
    if config.train.batch_size % (readers * config.train.grad_accum_steps):
        raise VtxError(f'config.train.batch_size={config.train.batch_size} must divide evenly over '
                       f'{readers} readers x {config.train.grad_accum_steps} accumulation steps')
    from vtx.data import pipeline  # TF is loaded only when data is read
    per_process = readers // processes
    streams = [pipeline.train_batches(config.data, global_batch_size=config.train.batch_size,
                                      seed=config.seed, start_step=start_step, process_index=r,
                                      process_count=readers)
               for r in range(jax.process_index() * per_process,
                              (jax.process_index() + 1) * per_process)]
    while True:
        parts = [next(s) for s in streams]
        yield jax.tree.map(lambda *xs: np.concatenate(xs), *parts) if per_process > 1 else parts[0]


def evaluate(params, eval_fn, config, mesh) -> dict:
    """One pass over the eval set; every video counted once, also when hosts hold unequal shares."""
    from vtx.data import pipeline
    batches = pipeline.eval_batches(config.data, global_batch_size=config.train.eval_batch_size,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    totals, template = None, None
    while True:
        local = next(batches, None)
        if local is not None:
            template = local
        has_data = np.array([local is not None])
        if jax.process_count() > 1:
            has_data = multihost_utils.process_allgather(has_data)
        if not has_data.any():
            break
        if local is None:  # this host is done: feed an all-masked batch so the others can finish
            if template is None:
                raise VtxError(f'process {jax.process_index()} got no eval data from '
                               f'config.data.eval_shards={config.data.eval_shards!r}')
            local = jax.tree.map(np.zeros_like, template)
        sums = eval_fn(params, _global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise VtxError(f'the eval set config.data.eval_shards={config.data.eval_shards!r} is empty')
    totals = jax.device_get(totals)
    count = max(float(totals.pop('count')), 1.0)
    return {k: float(v) / count for k, v in totals.items()} | {'num_videos': count}


class _Preemption:
    """SIGTERM (TPU/cluster preemption) asks the loop to save a checkpoint and stop cleanly."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, step: int, every: int) -> bool:
        """Whether all processes saw the signal; across hosts this is agreed every `every` steps."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        return bool(multihost_utils.process_allgather(np.array([self.requested])).any())


def _check_workdir_model(workdir, config):
    """Refuses a workdir whose checkpoints belong to another model config."""
    path = os.path.join(workdir, 'config.json')
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get('model') != current['model'] or stored.get('data', {}).get(
                'crop_size') != current['data']['crop_size']:
            raise VtxError(f'workdir {workdir} holds a run of another model (config.json: model '
                           f"{stored.get('model')}); this config builds {current['model']}. Use a new "
                           '--workdir, or the config that made this one.')
    elif jax.process_index() == 0:
        with open(path + '.tmp', 'w') as f:
            json.dump(current, f, indent=1)
        os.replace(path + '.tmp', path)  # other processes see all of it or nothing


def _initial_params(config, model, state, state_sharding):
    if not config.init_from:
        return state
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state.params, state_sharding.params)
    path = config.init_from
    if os.path.isdir(path):
        params, _ = checkpoint.load_params(path, abstract)
    elif os.path.isfile(path):
        import vtx.convert  # only for official/ImageNet files; torch is imported there when needed
        params = vtx.convert.import_pretrained(path, config.model, abstract)
        params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), params,
                              state_sharding.params)
    else:
        raise VtxError(f'config.init_from={path!r} does not exist')
    return state.replace(params=params)


def train_and_evaluate(config, workdir: str, mode: str = 'train_and_eval'):
    """Trains (resuming from the newest checkpoint in `workdir`), evaluates, checkpoints.

    mode: 'train_and_eval', 'train' or 'eval' (evaluate the newest checkpoint, or init_from).
    Returns the final eval metrics (or None when mode is 'train').
    """
    workdir = os.path.abspath(workdir)
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise VtxError(f'--workdir {workdir}: its parent folder {parent} does not exist')
    model = build_model(config.model)  # an unknown model or field fails before any work
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_model(workdir, config)
    if config.data.synthetic and jax.process_index() == 0:
        from vtx.data import synthetic
        synthetic.ensure(config.data)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices('vtx: data ready')

    mesh = sharding.make_mesh(config.mesh)
    data_devices = mesh.shape['data']
    for field, size in (('batch_size', config.train.batch_size // config.train.grad_accum_steps),
                        ('eval_batch_size', config.train.eval_batch_size)):
        if size % data_devices:
            raise VtxError(f'config.train.{field} (per accumulation step: {size}) must be a multiple '
                           f"of the mesh's data axis ({data_devices} devices)")
    num_steps = optim.total_steps(config)
    state, state_sharding, tx, schedule = create_train_state(config, model, mesh)

    ckpt_dir = os.path.join(workdir, 'checkpoints')
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_checkpoints, create=True))
    latest = manager.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, state_sharding)
        try:
            state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError) as e:
            raise VtxError(f'checkpoint {ckpt_dir}/{latest} does not fit this config ({e}); use '
                           'a new --workdir') from None
    else:
        state = _initial_params(config, model, state, state_sharding)
    start_step = int(jax.device_get(state.step))

    batch_sharding = sharding.batch_sharding(mesh, 1)  # a prefix: every batch leaf split on dim 0
    train_fn = jax.jit(
        lambda s, b: train_step(s, b, model=model, tx=tx, schedule=schedule, config=config),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
    eval_fn = jax.jit(lambda p, b: eval_step(p, b, model=model, config=config),
                      in_shardings=(state_sharding.params, batch_sharding),
                      out_shardings=sharding.replicated(mesh))

    writer = MetricWriter(workdir, num_steps, start_step)
    if mode == 'eval':
        if latest is None and not config.init_from:
            raise VtxError(f'--mode=eval: {ckpt_dir} has no checkpoint and config.init_from is empty')
        metrics = evaluate(state.params, eval_fn, config, mesh)
        writer.write(start_step, 'eval', metrics)
        writer.close()
        return metrics

    batches = train_batches(config, start_step)
    preemption = _Preemption()
    pending, last_log_step, timer = [], start_step, None
    last_saved = latest

    def flush(step):
        """Logs the mean of the pending train metrics; stops on a non-finite loss."""
        nonlocal pending, last_log_step, timer
        if not pending:
            return
        history = jax.device_get(pending)
        losses = np.array([m['loss'] for m in history])
        if not np.all(np.isfinite(losses)):
            bad = last_log_step + 1 + int(np.argmin(np.isfinite(losses)))
            manager.wait_until_finished()
            kept = f'step {last_saved}' if last_saved is not None else 'none was saved yet'
            raise NonFiniteLossError(
                f'training loss became {losses[~np.isfinite(losses)][0]} at step {bad}; stopped '
                f'without saving. The last good checkpoint in {ckpt_dir} is kept ({kept}). Lower '
                'config.optimizer.learning_rate or set config.optimizer.grad_clip_norm.')
        means = {k: float(np.mean([m[k] for m in history])) for k in history[0]}
        now = time.perf_counter()
        if timer is not None:
            means['clips_per_sec'] = config.train.batch_size * (step - timer[1]) / (now - timer[0])
        writer.write(step, 'train', means)
        pending, last_log_step, timer = [], step, (now, step)

    for step in range(start_step + 1, num_steps + 1):
        state, metrics = train_fn(state, _global_batch(next(batches), mesh))
        pending.append(metrics)
        writer.advance(1)
        if timer is None:  # the first step compiles: time from its end
            jax.block_until_ready(metrics)
            timer = (time.perf_counter(), step)
        stop = preemption.agreed(step, config.train.log_every_steps)
        if step % config.train.log_every_steps == 0 or step == num_steps or stop:
            flush(step)
        if step % config.train.checkpoint_every_steps == 0 or step == num_steps or stop:
            flush(step)
            manager.save(step, args=ocp.args.StandardSave(state))
            last_saved = step
        if stop:
            manager.wait_until_finished()
            writer.message(f'SIGTERM: saved checkpoint at step {step} in {ckpt_dir}; exiting')
            writer.close()
            return None
        if (mode == 'train_and_eval' and config.train.eval_every_steps
                and step % config.train.eval_every_steps == 0 and step != num_steps):
            writer.write(step, 'eval', evaluate(state.params, eval_fn, config, mesh))
            timer = None
    manager.wait_until_finished()
    metrics = None
    if mode == 'train_and_eval':
        metrics = evaluate(state.params, eval_fn, config, mesh)
        writer.write(num_steps, 'eval', metrics)
    writer.close()
    return metrics

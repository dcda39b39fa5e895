"""Training and evaluation loop: train_and_evaluate.

One code path from a laptop CPU to a TPU pod: the model, the sharded train state and the jitted
train/eval steps come from `vtx.steps.build` (the very functions the report lowers and the
benchmark times). Everything random (init, dropout, data order, augmentation) is a pure function
of `config.seed` and the step, so a resumed run continues bit for bit where the interrupted one
stopped.
"""
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vtx import optim, sharding, steps
from vtx import config as vtx_config
from vtx.errors import VtxError
from vtx.metrics import MetricWriter


class NonFiniteLossError(VtxError):
    pass


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


def evaluate(params, built: steps.Steps) -> dict:
    """One pass over the eval set; every video counted once, also when hosts hold unequal shares."""
    from vtx.data import pipeline
    config = built.config
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
        sums = built.eval_step(params, _global_batch(local, built.mesh))
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


def _initial_state(built: steps.Steps):
    """The state a new run starts from: initialised, with config.init_from's params if set."""
    state = built.init_state()
    if not built.config.init_from:
        return state
    from vtx import finetune
    params = finetune.initial_params(built.config, built.model, built.abstract_state.params)
    params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), params,
                          built.state_sharding.params)
    return state.replace(params=params)


def train_and_evaluate(config, workdir: str, mode: str = 'train_and_eval'):
    """Trains (resuming from the newest checkpoint in `workdir`), evaluates, checkpoints.

    mode: 'train_and_eval', 'train' or 'eval' (evaluate the newest checkpoint, or init_from).
    Returns the final eval metrics (or None when mode is 'train').
    """
    vtx_config.prepare(config)
    workdir = os.path.abspath(workdir)
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise VtxError(f'--workdir {workdir}: its parent folder {parent} does not exist')
    mesh = sharding.make_mesh(config.mesh)
    data_devices = mesh.shape['data']
    for field, size in (('batch_size', config.train.batch_size // config.train.grad_accum_steps),
                        ('eval_batch_size', config.train.eval_batch_size)):
        if size % data_devices:
            raise VtxError(f'config.train.{field} (per accumulation step: {size}) must be a multiple '
                           f"of the mesh's data axis ({data_devices} devices)")
    built = steps.build(config, mesh)  # an unknown model or field fails before anything is written
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_model(workdir, config)
    if config.data.synthetic and jax.process_index() == 0:
        from vtx.data import synthetic
        synthetic.ensure(config.data)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices('vtx: data ready')
    num_steps = optim.total_steps(config)

    ckpt_dir = os.path.join(workdir, 'checkpoints')
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_checkpoints, create=True))
    latest = manager.latest_step()
    if latest is not None:
        try:
            state = manager.restore(latest, args=ocp.args.StandardRestore(built.abstract_state))
        except (ValueError, KeyError) as e:
            raise VtxError(f'checkpoint {ckpt_dir}/{latest} does not fit this config ({e}); use '
                           'a new --workdir') from None
    else:
        state = _initial_state(built)
    start_step = int(jax.device_get(state.step))

    writer = MetricWriter(workdir, num_steps, start_step)
    if mode == 'eval':
        if latest is None and not config.init_from:
            raise VtxError(f'--mode=eval: {ckpt_dir} has no checkpoint and config.init_from is empty')
        metrics = evaluate(state.params, built)
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
        state, metrics = built.train_step(state, _global_batch(next(batches), mesh))
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
            writer.write(step, 'eval', evaluate(state.params, built))
            timer = None
    manager.wait_until_finished()
    metrics = None
    if mode == 'train_and_eval':
        metrics = evaluate(state.params, built)
        writer.write(num_steps, 'eval', metrics)
    writer.close()
    return metrics

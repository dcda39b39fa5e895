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

from vtx import checkpoint, optim, prefetch, sharding, steps
from vtx import config as vtx_config
from vtx.errors import VtxError
from vtx.metrics import MetricWriter


class NonFiniteLossError(VtxError):
    pass


def train_batches(config, start_step: int):
    """This process's share of each global train batch, concatenated over its readers."""
    processes = jax.process_count()
    readers = config.data.num_readers or processes
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
        sums = built.eval_step(params, prefetch.global_batch(local, built.mesh))
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
        # How the model computes (dtype, kernels, remat) and dropout may change between runs.
        differences = checkpoint.model_differences(stored.get('model'), current['model'])
        if stored.get('data', {}).get('crop_size') != current['data']['crop_size']:
            differences.append(f"data.crop_size: workdir {stored.get('data', {}).get('crop_size')}"
                               f", config {current['data']['crop_size']}")
        if differences:
            raise VtxError(f'workdir {workdir} holds a run of another model ('
                           f"{'; '.join(differences)}). Use a new --workdir, or the config that "
                           'made this one.')
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


# Settings that count something: each must be at least 1 (or 0 where 0 has a meaning).
_AT_LEAST_ONE = ('train.batch_size', 'train.eval_batch_size', 'train.grad_accum_steps',
                 'train.log_every_steps', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
                 'data.num_classes', 'data.num_frames', 'data.stride', 'data.crop_size',
                 'data.min_resize', 'data.eval_num_clips', 'data.eval_num_crops',
                 'model.num_classes')
_AT_LEAST_ZERO = ('train.num_steps', 'train.num_epochs', 'train.eval_every_steps',
                  'data.num_readers', 'data.num_train_examples')


def validate(config, workdir: str, mode: str, data_devices: int) -> str:
    """Every setting a run depends on, checked before any work and before anything is written:
    sizes positive and divisible, the shard globs the mode reads matching files, the workdir
    writable. Raises one VtxError naming every problem; returns the workdir's absolute path."""
    if not (workdir or '').strip():
        raise VtxError('--workdir is empty: give the folder for checkpoints and metrics, e.g. '
                       '--workdir runs/demo')
    problems = []
    for key, least in [(k, 1) for k in _AT_LEAST_ONE] + [(k, 0) for k in _AT_LEAST_ZERO]:
        section, field = key.split('.')
        value = config[section].get(field)
        if value is not None and not value >= least:
            problems.append(f'config.{key}={value} must be at least {least}')
    if problems:  # the divisions below need positive sizes
        raise VtxError('; '.join(problems))
    train = config.train
    if mode != 'eval' and not train.num_steps and not (train.num_epochs and
                                                       config.data.num_train_examples):
        problems.append('config.train.num_steps and config.train.num_epochs x '
                        'config.data.num_train_examples give no steps to train')
    processes = jax.process_count()
    readers = config.data.num_readers or processes
    if readers % processes:
        problems.append(f'config.data.num_readers={readers} must be a multiple of the '
                        f'{processes} processes')
    elif train.batch_size % (readers * train.grad_accum_steps):
        problems.append(f'config.train.batch_size={train.batch_size} must divide evenly over '
                        f'{readers} readers x {train.grad_accum_steps} accumulation steps')
    for field, size in (('batch_size', train.batch_size // train.grad_accum_steps),
                        ('eval_batch_size', train.eval_batch_size)):
        if size % data_devices or size % processes:
            problems.append(f'config.train.{field} (per accumulation step: {size}) must be a '
                            f"multiple of the mesh's data axis ({data_devices} devices) and of "
                            f'the {processes} processes')
    # Synthetic shards are generated on first use and TFDS has no globs: read at start instead.
    if not config.data.synthetic and not config.data.tfds_name:
        from vtx.data import pipeline
        for split in (('train', 'eval') if mode == 'train_and_eval' else (mode,)):
            try:
                field = f'{split}_shards'
                pipeline.resolve_shards(config.data[field], f'config.data.{field}')
            except VtxError as e:
                problems.append(str(e))
    workdir = os.path.abspath(os.path.expanduser(workdir.strip()))
    existing = workdir if os.path.exists(workdir) else os.path.dirname(workdir)
    if not os.path.isdir(existing):
        problems.append(f'--workdir {workdir}: ' + (
            'a file, not a folder' if existing == workdir else
            f'its parent folder {existing} does not exist'))
    elif not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f'--workdir {workdir}: ' + (
            'the folder is not writable' if existing == workdir else
            f'its parent folder {existing} is not writable'))
    if problems:
        raise VtxError('; '.join(problems))
    return workdir


def _check_eval_data(config):
    """Reads and decodes the first eval video of this process now (all its views, as the eval
    will), so that a missing or bad eval set stops the run before training instead of after it."""
    from vtx.data import pipeline
    batches = pipeline.eval_batches(config.data, global_batch_size=jax.process_count(),
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    try:
        next(batches, None)
    finally:
        batches.close()  # stops a decoding worker pool now, not whenever the generator is collected


def train_and_evaluate(config, workdir: str, mode: str = 'train_and_eval'):
    """Trains (resuming from the newest readable checkpoint in `workdir`), evaluates, checkpoints.

    mode: 'train_and_eval', 'train' or 'eval' (evaluate the newest checkpoint, or init_from).
    Returns the final eval metrics (or None when mode is 'train').

    A training run holds the workdir's lock (process 0 takes it) from before its first write to
    its end; a second trainer on the same workdir is refused. `--mode=eval` only reads
    checkpoints, so it takes no lock and may run beside a trainer.
    """
    vtx_config.prepare(config)
    mesh = sharding.make_mesh(config.mesh)
    workdir = validate(config, workdir, mode, mesh.shape['data'])
    built = steps.build(config, mesh)  # an unknown model or field fails before anything is written
    try:
        os.makedirs(workdir, exist_ok=True)
        lock = (checkpoint.WorkdirLock(workdir)
                if mode != 'eval' and jax.process_index() == 0 else None)
    except OSError as e:  # a read-only file system passes the permission check above
        raise VtxError(f'--workdir {workdir}: cannot write there ({e.strerror})') from None
    try:
        return _run(config, workdir, mode, built)
    finally:
        if lock is not None:
            lock.release()


def _run(config, workdir: str, mode: str, built: steps.Steps):
    mesh = built.mesh
    _check_workdir_model(workdir, config)
    if config.data.synthetic and jax.process_index() == 0:
        from vtx.data import synthetic
        synthetic.ensure(config.data)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices('vtx: data ready')
    if mode == 'train_and_eval':
        _check_eval_data(config)
    num_steps = optim.total_steps(config)

    ckpt_dir = os.path.join(workdir, 'checkpoints')
    abstract = built.abstract_state

    def restore(item):
        with ocp.StandardCheckpointer() as ckptr:
            stored = ckptr.metadata(item)  # the tree and shapes, without reading any array
            stored = getattr(stored, 'item_metadata', stored)
            checkpoint.check_same_tree(stored['params'], abstract.params, item)
            return ckptr.restore(item, abstract)

    # Only the lock holder moves unreadable checkpoints aside; eval reads and changes nothing.
    latest, state = checkpoint.restore_newest(
        workdir, restore, set_aside=mode != 'eval' and jax.process_index() == 0)
    if jax.process_count() > 1:
        multihost_utils.assert_equal(np.array(-1 if latest is None else latest),
                                     'the processes restored different checkpoint steps')
    if mode == 'eval' and latest is None and not config.init_from:
        raise VtxError(f'--mode=eval: {ckpt_dir} has no checkpoint and config.init_from is empty')
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_checkpoints, create=True))
    if latest is None:
        state = _initial_state(built)
    start_step = int(jax.device_get(state.step))

    writer = MetricWriter(workdir, num_steps, start_step)
    if mode == 'eval':
        metrics = evaluate(state.params, built)
        writer.write(start_step, 'eval', metrics)
        writer.close(f'eval of step {start_step} appended to {workdir}/metrics.jsonl')
        return metrics

    # Double-buffered: the next batch is copied to the devices while the step runs.
    batches = prefetch.DevicePrefetch(train_batches(config, start_step), mesh)
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
        writer.advance(len(history))  # steps known to be done: the bar's rate and ETA are real
        now = time.perf_counter()
        if timer is not None and step > timer[1]:  # not when the timed step is the only one
            means['clips_per_sec'] = config.train.batch_size * (step - timer[1]) / (now - timer[0])
            means['step_time'] = (now - timer[0]) / (step - timer[1])
        # Seconds per step the loop waited for the host input: near step_time when input-bound.
        means['data_time'] = batches.data_time / len(history)
        batches.data_time = 0.0
        writer.write(step, 'train', means)
        pending, last_log_step, timer = [], step, (now, step)

    for step in range(start_step + 1, num_steps + 1):
        state, metrics = built.train_step(state, next(batches))
        pending.append(metrics)
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
            writer.close(f'SIGTERM: saved checkpoint at step {step} in {ckpt_dir}; exiting (the '
                         'same command resumes)')
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
    writer.close(f'done: checkpoints (step {num_steps}) in {ckpt_dir}, metrics in '
                 f'{workdir}/metrics.jsonl, TensorBoard events in {workdir}/tensorboard')
    return metrics

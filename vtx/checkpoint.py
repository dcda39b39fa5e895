"""Checkpoints: training state (orbax CheckpointManager in the workdir) and standalone params.

A *params checkpoint* is what `vtx-convert` writes and what `--config.init_from` reads:
a folder with `params/` (orbax) and `vtx_params.json` (the model config it was made for, plus
free-form metadata such as label names and the source file).

A training workdir is written by one trainer at a time (`WorkdirLock`), and its checkpoints are
read newest first, falling back past steps whose files cannot be read (`restore_newest`).
"""
import contextlib
import dataclasses
import fcntl
import gc
import json
import logging
import os
import socket
import sys
import tempfile
import time
from typing import List, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from vtx import models
from vtx.errors import VtxError

PARAMS_META = 'vtx_params.json'


class CheckpointError(VtxError):
    pass


def save_params(directory: str, params, model_config: dict, **metadata) -> None:
    """Writes params (a pytree of arrays) and the model config they belong to."""
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, PARAMS_META)):
        raise CheckpointError(f'{directory} already holds a params checkpoint; choose a new folder')
    os.makedirs(directory, exist_ok=True)
    params = jax.tree.map(np.asarray, params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, 'params'), params)
    with open(os.path.join(directory, PARAMS_META), 'w') as f:
        json.dump({'format': 'vtx-params-v1', 'model': dict(model_config), **metadata}, f, indent=1)


def is_params_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PARAMS_META))


def load_params(directory: str, abstract_params=None):
    """Returns (params, metadata). With `abstract_params` the tree is restored with its structure,
    shapes and shardings, and a mismatch is an error naming the parameters."""
    directory = os.path.abspath(directory)
    if not is_params_checkpoint(directory):
        raise CheckpointError(f'{directory} is not a vtx params checkpoint (no {PARAMS_META}); '
                              'make one with `vtx-convert`')
    with open(os.path.join(directory, PARAMS_META)) as f:
        meta = json.load(f)
    with ocp.StandardCheckpointer() as ckptr:
        if abstract_params is None:
            return ckptr.restore(os.path.join(directory, 'params')), meta
        stored = ckptr.metadata(os.path.join(directory, 'params'))
        stored = getattr(stored, 'item_metadata', stored)
        check_same_tree(stored, abstract_params, directory)
        return ckptr.restore(os.path.join(directory, 'params'), abstract_params), meta


def check_same_tree(stored, expected, where):
    flat_stored = {jax.tree_util.keystr(k): v.shape for k, v in
                   jax.tree_util.tree_leaves_with_path(stored)}
    flat_expected = {jax.tree_util.keystr(k): v.shape for k, v in
                     jax.tree_util.tree_leaves_with_path(expected)}
    problems = []
    for k in sorted(set(flat_expected) - set(flat_stored)):
        problems.append(f'missing {k}')
    for k in sorted(set(flat_stored) - set(flat_expected)):
        problems.append(f'unexpected {k}')
    for k in sorted(set(flat_stored) & set(flat_expected)):
        if tuple(flat_stored[k]) != tuple(flat_expected[k]):
            problems.append(f'{k}: stored {tuple(flat_stored[k])}, model wants {tuple(flat_expected[k])}')
    if problems:
        shown = '; '.join(problems[:10]) + (f' (+{len(problems) - 10} more)' if len(problems) > 10 else '')
        raise CheckpointError(f'checkpoint {where} does not fit the configured model: {shown}. '
                              'Was it made for another config.model?')


def load_any_params(path: str, abstract_params):
    """(params, metadata) from a params checkpoint, or from a training workdir: the params of its
    newest readable checkpoint (the optimizer state is not read), with {'model': ..., 'step': ...}
    from the workdir's config.json as metadata. `abstract_params` gives the expected tree.
    Reading a workdir changes nothing in it: an unreadable newer step is named and skipped."""
    path = os.path.abspath(path)
    if is_params_checkpoint(path):
        return load_params(path, abstract_params)
    wanted = {'params': abstract_params}

    def restore(item):
        with ocp.PyTreeCheckpointer() as ckptr:
            stored = ckptr.metadata(item)
            stored = getattr(stored, 'item_metadata', stored)
            stored = getattr(stored, 'tree', stored)
            if 'params' not in stored:
                raise CheckpointError(f'{item} holds no params (keys: {sorted(stored)})')
            check_same_tree(stored['params'], abstract_params, item)
            return ckptr.restore(item, args=ocp.args.PyTreeRestore(
                wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                partial_restore=True))['params']

    step, params = restore_newest(path, restore, set_aside=False)
    if step is None:
        raise CheckpointError(f'{path} is neither a vtx params checkpoint (no {PARAMS_META}) nor '
                              'a training workdir with a finished checkpoint in checkpoints/<step>')
    meta = {'step': step}
    config_path = os.path.join(path, 'config.json')
    if os.path.isfile(config_path):
        with open(config_path) as f:
            meta['model'] = json.load(f).get('model')
    return params, meta


# Where a trainer moves the checkpoints it cannot read: out of orbax's sight, nothing deleted.
SET_ASIDE = 'checkpoints_unreadable'


def restore_newest(workdir: str, restore, set_aside: bool):
    """(step, restore(<workdir>/checkpoints/<step>/default)) for the newest step that reads, or
    (None, None) when there is no checkpoint.

    A step that fails to read (a truncated or overwritten file, a missing folder) is named on
    stderr with the reason and the next older one is tried. Once an older step has read, the
    failed ones are moved to <workdir>/checkpoints_unreadable/ when `set_aside` (the trainer, so
    that orbax neither lists them nor collides with them when it saves those steps again). When
    no step reads, nothing is moved: the failure may lie outside the files (memory, devices), and
    the error lists every step with its reason. A CheckpointError from `restore` (a readable
    checkpoint of another model) is raised as it is: falling back would not help."""
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    steps = sorted((int(d) for d in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else ())
                    if d.isdigit()), reverse=True)
    with _without_reader_noise() as (failed, say):
        return _restore_newest(ckpt_dir, steps, restore, set_aside, failed, say)


def _restore_newest(ckpt_dir, steps, restore, set_aside, failed, say):
    workdir = os.path.dirname(ckpt_dir)
    for step in steps:
        item = os.path.join(ckpt_dir, str(step), 'default')
        try:
            if not os.path.isdir(item):
                raise FileNotFoundError(f'its folder {item} is missing')
            with _orbax_quiet():
                restored = restore(item)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001  any failure to read a step's files
            failed.append((step, _innermost_reason(e)))
            say(f'vtx: checkpoint step {step} ({item}) cannot be read: {failed[-1][1]}')
            continue
        for bad, _ in failed:
            where = _set_aside(workdir, bad) if set_aside else 'left in place'
            say(f'vtx: checkpoint step {bad}: {where}')
        if failed:
            say(f'vtx: using checkpoint step {step}, the newest one that reads')
        return step, restored
    if failed:
        raise CheckpointError(f'no checkpoint in {ckpt_dir} can be read (' + '; '.join(
            f'step {s}: {reason}' for s, reason in failed) + '); nothing was moved or deleted')
    return None, None


@contextlib.contextmanager
def _without_reader_noise():
    """Yields (failed, say): the list restore_newest fills with its failed steps, and the function
    that collects its messages. After a failed restore, TensorStore's reader threads and orbax's
    abandoned coroutines print tracebacks and long TensorStore specs to file descriptor 2, at no
    fixed time ("Event loop is closed", "Exception ignored in <coroutine ...>"). So meanwhile fd 2
    goes to a temporary file; when a step failed, the abandoned coroutines are collected and the
    threads given until their output stops, and only restore_newest's one line per step is shown.
    When nothing failed, what was written there is passed on unchanged."""
    failed, messages = [], []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield failed, messages.append
        finally:
            size, deadline = -1, time.monotonic() + 5
            while failed and size != os.fstat(captured.fileno()).st_size and (
                    time.monotonic() < deadline):
                size = os.fstat(captured.fileno()).st_size
                gc.collect()  # the failed reads' coroutines report their error when collected
                time.sleep(0.5)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors='replace'))
            for message in messages:
                print(message, file=sys.stderr)


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax warns on every read of a step's item folder that the step's metadata file is not in
    it (it never is: it sits one level up); what fails is reported by restore_newest instead."""
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _innermost_reason(error: BaseException) -> str:
    """The first line of the innermost cause: orbax wraps TensorStore's error, which names the
    file, in a long dump of its spec."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = (str(error).strip().splitlines() or [''])[0]
    return f'{type(error).__name__}: {text[:400]}'


def _set_aside(workdir: str, step: int) -> str:
    target_dir = os.path.join(workdir, SET_ASIDE)
    os.makedirs(target_dir, exist_ok=True)
    target, n = os.path.join(target_dir, str(step)), 1
    while os.path.exists(target):  # the same step may go bad again in a later run
        n += 1
        target = os.path.join(target_dir, f'{step}-{n}')
    os.rename(os.path.join(workdir, 'checkpoints', str(step)), target)
    return f'set aside as {target}'


class WorkdirLock:
    """One trainer per workdir: an exclusive flock on <workdir>/lock, which names its holder.

    The kernel drops a flock when its holder exits in any way, SIGKILL included, so a lock left by
    a killed run never blocks a restart; the file itself stays (deleting it would let a third
    process lock a fresh file while a second still holds the old one)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, 'lock')
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 1000, 0).decode(errors='replace').strip()
            os.close(self._fd)
            raise CheckpointError(f'--workdir {workdir} is in use by another trainer '
                                  f'({holder or "its lock names no holder yet"}); wait for it to '
                                  'finish, stop it, or use another --workdir') from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f'host {socket.gethostname()}, pid {os.getpid()}, since '
                            f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}\n'.encode(), 0)

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def model_differences(stored: Optional[dict], configured: dict) -> List[str]:
    """Fields where the model a checkpoint was made for differs from config.model, each side
    completed with the family's defaults. Dropout rates and how the model computes
    (`IMPLEMENTATION_FIELDS`: dtype, attention kernel, remat, ...) do not change what the params
    mean and are not compared."""
    if not stored:
        return []
    if stored.get('name') != configured.get('name'):
        return [f"name: checkpoint {stored.get('name')!r}, config {configured.get('name')!r}"]
    defaults = {f.name: f.default for f in dataclasses.fields(models.model_class(configured['name']))
                if f.default is not dataclasses.MISSING}
    out = []
    for key in sorted(set(stored) | set(configured)):
        # STTS keep ratios (`*_left_ratio`) are chosen at inference: the scorers are the same.
        if 'drop' in key or key in models.IMPLEMENTATION_FIELDS or key.endswith('_left_ratio'):
            continue
        a, b = stored.get(key, defaults.get(key)), configured.get(key, defaults.get(key))
        if json.dumps(a, default=str) != json.dumps(b, default=str):
            out.append(f'{key}: checkpoint {a!r}, config {b!r}')
    return out


def workdir_model(path: str):
    """(config.model, config.data) of the run a training workdir holds, from its config.json, or
    None when `path` holds no such file."""
    config_path = os.path.join(path, 'config.json')
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        stored = json.load(f)
    return stored.get('model'), stored.get('data', {})


def read_params_metadata(directory: str) -> dict:
    """The `vtx_params.json` of a params checkpoint: the model config and free-form metadata."""
    try:
        with open(os.path.join(directory, PARAMS_META)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{directory}: cannot read {PARAMS_META} ({e})') from None

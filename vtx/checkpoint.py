"""Checkpoints: training state (orbax CheckpointManager in the workdir) and standalone params.

A *params checkpoint* is what `vtx-convert` writes and what `--config.init_from` reads:
a folder with `params/` (orbax) and `vtx_params.json` (the model config it was made for, plus
free-form metadata such as label names and the source file).
"""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

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
        _check_same_tree(stored, abstract_params, directory)
        return ckptr.restore(os.path.join(directory, 'params'), abstract_params), meta


def _check_same_tree(stored, expected, where):
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
    newest checkpoint (the optimizer state is not read), with {'model': ..., 'step': ...} from
    the workdir's config.json as metadata. `abstract_params` gives the expected tree."""
    path = os.path.abspath(path)
    if is_params_checkpoint(path):
        return load_params(path, abstract_params)
    steps_dir = os.path.join(path, 'checkpoints')
    steps = sorted(int(d) for d in (os.listdir(steps_dir) if os.path.isdir(steps_dir) else ())
                   if d.isdigit() and os.path.isdir(os.path.join(steps_dir, d, 'default')))
    if not steps:
        raise CheckpointError(f'{path} is neither a vtx params checkpoint (no {PARAMS_META}) nor '
                              'a training workdir with a finished checkpoint in checkpoints/<step>')
    item = os.path.join(steps_dir, str(steps[-1]), 'default')
    wanted = {'params': abstract_params}
    with ocp.PyTreeCheckpointer() as ckptr:
        stored = ckptr.metadata(item)
        stored = getattr(stored, 'item_metadata', stored)
        stored = getattr(stored, 'tree', stored)
        if 'params' not in stored:
            raise CheckpointError(f'{item} holds no params (keys: {sorted(stored)})')
        _check_same_tree(stored['params'], abstract_params, item)
        restored = ckptr.restore(item, args=ocp.args.PyTreeRestore(
            wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
            partial_restore=True))
    meta = {'step': steps[-1]}
    config_path = os.path.join(path, 'config.json')
    if os.path.isfile(config_path):
        with open(config_path) as f:
            meta['model'] = json.load(f).get('model')
    return restored['params'], meta


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

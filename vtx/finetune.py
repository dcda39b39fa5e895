"""Where a run's parameters start (`config.init_from`), including fine-tuning on other classes.

`init_from` names a zoo model (downloaded and converted once, `vtx.pretrained`), a vtx params
checkpoint or training workdir, an official checkpoint of the model's family, or a pretrained file
the family's official fine-tuning starts from (ImageNet ViT/Swin, an MViT or Video Swin backbone
for STTS: `vtx.families`). Every parameter must come from it with its exact shape, except:
  - the classifier, where the source was trained on another number of classes: it is
    re-initialised as the family's official fine-tuning code does (`Family.classifier`);
  - parameters matching `config.init_reinit` (a regex over parameter paths such as
    'temporal_head/.*'), re-initialised with the model's own initialisers.
A report names exactly what was re-initialised and why; anything else that does not fit is an
error naming the parameters, and nothing is trained from a partial model.
"""
import os
import re
from typing import Callable, Dict, List, Tuple

import numpy as np

from vtx.errors import VtxError


class InitError(VtxError):
    pass


def _flat(tree) -> Dict[str, np.ndarray]:
    from vtx.convert import engine
    return {k: np.asarray(v) for k, v in engine.flatten_params(tree).items()}


def _unflat(flat: Dict[str, np.ndarray]):
    import flax
    return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def _fresh_values(model, example_input) -> Callable[[], Dict[str, np.ndarray]]:
    """The model's own initial parameters (computed once, when first asked for)."""
    import jax
    cache = {}

    def values():
        if not cache:
            variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), example_input,
                                                   train=False))()
            cache.update(_flat(variables['params']))
        return cache
    return values


def adapt(source: Dict[str, np.ndarray], wanted: Dict[str, tuple], classifier: Tuple[str, str],
          reinit_pattern: str, fresh: Callable[[], Dict[str, np.ndarray]],
          where: str) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """(params, report lines): `source` (flat vtx params) onto the shapes `wanted` (path ->
    (shape, dtype)). `classifier` is the family's (path regex, how the official fine-tuning starts
    it); re-initialised values come from `fresh()`, the model's own initialisers."""
    out, report, problems = {}, [], []
    for path, (shape, dtype) in wanted.items():
        have = source.get(path)
        if reinit_pattern and re.fullmatch(reinit_pattern, path):
            out[path] = np.asarray(fresh()[path], dtype)
            report.append(f'{path} {tuple(shape)}: re-initialised (config.init_reinit)')
            continue
        if have is not None and tuple(have.shape) == tuple(shape):
            out[path] = np.asarray(have, dtype)
            continue
        pattern, how = classifier
        if have is not None and re.fullmatch(pattern, path):
            out[path] = np.asarray(fresh()[path], dtype)
            report.append(f'{path}: {tuple(have.shape)} in {where}, {tuple(shape)} here: '
                          f're-initialised ({how})')
        elif have is None:
            problems.append(f'{path} {tuple(shape)} is not in {where}')
        else:
            problems.append(f'{path}: {tuple(have.shape)} in {where}, the model wants '
                            f'{tuple(shape)}')
    problems += [f'{where} has {path}, which the model does not'
                 for path in sorted(set(source) - set(wanted))]
    if problems:
        shown = '; '.join(problems[:8]) + (f' (+{len(problems) - 8} more)' if len(problems) > 8 else '')
        raise InitError(f'config.init_from={where}: does not fit the configured model apart from '
                        f'its classifier: {shown}. Was it made for another config.model?')
    return out, report


def _official_source(path: str, family, model_config, wanted, classifier):
    """The flat vtx params of an official checkpoint of the model's family whose only misfit is
    the classifier, or None when the file is not such a checkpoint."""
    from vtx.convert import engine, families as converters
    module = converters.converter(family.official_tags[0])
    if not hasattr(module, 'table'):
        return None
    state = engine.load_checkpoint(path)
    table = module.table(model_config)
    abstract = _unflat({p: np.zeros(s, d) for p, (s, d) in wanted.items()})
    params, report = engine.convert_with_report(state, table, abstract)
    if params is not None:
        return _flat(params)
    misfits = {p for _, p, _, _ in report.mismatches}
    if not misfits or report.unused or report.unknown_targets or report.duplicates or \
            report.errors or report.missing or \
            not all(re.fullmatch(classifier[0], p) for p in misfits):
        return None
    # Convert again with the classifier's tensors as the checkpoint has them, so that `adapt`
    # sees their real shapes and re-initialises them with the rest checked strictly.
    source_shapes = dict(wanted)
    for _, p, got, _ in report.mismatches:
        source_shapes[p] = (got, wanted[p][1])
    abstract = _unflat({p: np.zeros(s, d) for p, (s, d) in source_shapes.items()})
    return _flat(engine.convert(state, table, abstract, log=None))


def _vtx_source(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """Flat params (and metadata) of a vtx params checkpoint or training workdir, as stored."""
    from vtx import checkpoint
    from vtx.models import build_model
    if checkpoint.is_params_checkpoint(path):
        params, meta = checkpoint.load_params(path)
        return _flat(params), meta
    stored = checkpoint.workdir_model(path)
    if stored is None or not stored[0]:
        raise InitError(f'config.init_from={path}: a folder, but neither a vtx params checkpoint '
                        'nor a training workdir (no config.json with the model)')
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    model_config, data = stored
    model = build_model(model_config)
    shape = (1, data['num_frames'], data['crop_size'], data['crop_size'], 3)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                                 train=False))['params']
    params, meta = checkpoint.load_any_params(path, nn.meta.unbox(abstract))
    return _flat(params), meta


def initial_params(config, model, abstract_params, log=print):
    """The params a run starts from, per `config.init_from` (see the module docstring), as a
    nested dict of numpy arrays shaped like `abstract_params`."""
    import jax.numpy as jnp

    from vtx import families, pretrained
    source_name = config.init_from
    family = families.family(config.model.name)
    wanted = {p: (tuple(v.shape), v.dtype) for p, v in _flat_shapes(abstract_params).items()}
    d = config.data
    fresh = _fresh_values(model, jnp.zeros((1, d.num_frames, d.crop_size, d.crop_size, 3)))
    reinit = config.get('init_reinit', '')
    path = source_name
    if not os.path.exists(path) and pretrained.is_zoo_name(source_name):
        path = pretrained.converted(source_name, log=log)
    if os.path.isdir(path):
        source, _ = _vtx_source(path)
    elif os.path.isfile(path):
        source = _official_source(path, family, config.model, wanted, family.classifier)
        if source is None:  # not a checkpoint of this family: an ImageNet or backbone import
            import vtx.convert
            abstract = _unflat({p: np.zeros(s, dt) for p, (s, dt) in wanted.items()})
            source = _flat(vtx.convert.import_pretrained(path, config.model, abstract, log=log))
    else:
        raise InitError(f'config.init_from={source_name!r} is neither a file, a folder nor a zoo '
                        f'model name{pretrained.close_matches_hint(source_name)}')
    params, report = adapt(source, wanted, family.classifier, reinit, fresh, source_name)
    if report and log is not None:
        log(f'init_from {source_name}: ' + '; '.join(report))
    return _unflat(params)


def _flat_shapes(abstract_params) -> Dict[str, object]:
    from vtx.convert import engine
    return engine.flatten_params(abstract_params)

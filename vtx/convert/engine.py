r"""The conversion engine: official PyTorch / big_vision checkpoints -> vtx Flax params.

API (family converters in `convert/<family>.py` use only this):

    state = load_checkpoint(path)          # {source key: np.ndarray}, wrapper detected and stripped
    ckpt = read_checkpoint(path)           # plus `.wrapper` and `.extras` (e.g. SlowFast 'cfg')

    table = ConversionTable(
        rules=[Rule(r'blocks\.(?P<i>\d+)\.attn\.proj\.weight', 'blocks_{i}/attn/out/kernel',
                    'linear'),
               Rule(r'blocks\.(?P<i>\d+)\.attn\.qkv\.weight',
                    ('blocks_{i}/attn/query/kernel', 'blocks_{i}/attn/key/kernel',
                     'blocks_{i}/attn/value/kernel'), 'qkv_linear'), ...],
        ignore=[(r'.*relative_position_index', 'recomputed buffer'), ...])

    abstract_params = abstract_params_of(model, example_video, train=False)  # shapes only
    params = convert(state, table, abstract_params)   # strict: ConversionError with the report
    params, report = convert_with_report(state, table, abstract_params)
    flatten_params(tree) -> {'a/b/kernel': leaf};  strip_module_prefix(state) -> state

Rules: `pattern` is a regex that must match the whole source key; its named groups fill the
`target` template(s) (Flax param paths joined by '/'). The first rule that matches a key wins.
`target` may also be a callable(match) -> path(s). `transform` is the name of a layout transform
in `TRANSFORMS` or a callable(array, target_shapes) -> array (one target) or tuple of arrays
(several targets, in target order): a family transform is simply such a callable.

`abstract_params` is the tree of `jax.eval_shape(model.init, ...)['params']` (boxed or unboxed);
every leaf must be filled exactly once with an array of its shape. A source key matched by no rule
and by no ignore pattern, a rule producing a path the model lacks, a shape mismatch, a param
filled twice or left unfilled: each is named in the report and makes the conversion fail, so a
partial model is never returned. `fill` on the table lists target patterns the official loader
itself initialises (e.g. a zero classifier when importing ImageNet weights); those are reported
as initialised rather than missing.
"""
import dataclasses
import os
import re
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax
import jax
import numpy as np

from vtx.errors import VtxError


class ConversionError(VtxError):
    """Raised with the full report when a checkpoint does not map exactly onto the model."""


class CheckpointFormatError(VtxError):
    """Raised when a file's top-level layout is none of the known checkpoint wrappers."""


# --------------------------------------------------------------------------- reading checkpoints

def import_torch():
    """PyTorch, which only reading official `.pth` files needs; without it, one line saying what
    to install."""
    try:
        import torch
    except ImportError:
        raise CheckpointFormatError(
            "reading a PyTorch checkpoint needs torch, which this install lacks: pip install "
            "'vtx[convert]' (the CPU wheel torch==2.13.0 is enough)") from None
    return torch


@dataclasses.dataclass
class Checkpoint:
    state: dict              # source key -> np.ndarray
    wrapper: str             # which layout was detected
    extras: dict             # non-weight top-level entries kept for config recovery (e.g. 'cfg')


def _to_numpy(value, path: str, key: str) -> np.ndarray:
    torch = import_torch()  # only here: the rest of the engine works on numpy
    if not isinstance(value, torch.Tensor):
        raise CheckpointFormatError(f'{path}: state-dict entry {key!r} is a '
                                    f'{type(value).__name__}, expected a tensor')
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16
        value = value.float()
    return value.numpy()


def _is_state_dict(obj) -> bool:
    torch = import_torch()
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(path: str) -> Checkpoint:
    """Reads a `.npz` (google-research ViT) or a PyTorch checkpoint of any known wrapper:

    mmcv `{'meta', 'state_dict', 'optimizer', ...}`, SlowFast `{'model_state', 'cfg', ...}`,
    TokShift DDP `{'state_dict': {'module....'}, 'optimizer', 'scheduler', ...}`, microsoft Swin
    `{'model', ...}`, or a plain state dict. A DDP `module.` prefix is stripped. Other top-level
    entries (optimizer, scheduler, meta, amp) are dropped; scalar/string ones are kept in `extras`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.endswith('.npz'):
        with np.load(path, allow_pickle=False) as data:
            return Checkpoint({k: np.asarray(data[k]) for k in data.files}, 'npz', {})
    torch = import_torch()
    try:
        with warnings.catch_warnings():  # a newer pickle protocol: refused below in one line
            warnings.filterwarnings('ignore', 'Detected pickle protocol', UserWarning)
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # weights_only refuses pickled objects: say which file
        raise CheckpointFormatError(f'{path}: not a readable PyTorch checkpoint: '
                                    f'{_torch_load_reason(e)}') from None
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f'{path}: expected a dict, found a {type(obj).__name__}')
    keys = list(obj)
    if _is_state_dict(obj):
        wrapper, state, extras = 'state_dict', obj, {}
    else:
        for name, wrapper in (('model_state', 'slowfast'), ('state_dict', None), ('model', 'swin'),
                              ('state_dict_ema', 'slowfast-ema')):
            if name in obj and isinstance(obj[name], Mapping):
                state = obj[name]
                if wrapper is None:
                    wrapper = 'mmcv' if 'meta' in obj else 'ddp'
                break
        else:
            raise CheckpointFormatError(
                f'{path}: unknown checkpoint layout; top-level keys {keys}. Expected a state dict '
                "or a dict holding one under 'state_dict' (mmcv, TokShift), 'model_state' "
                "(SlowFast) or 'model' (Swin)")
        extras = {k: v for k, v in obj.items() if isinstance(v, (str, int, float))}
    state = strip_module_prefix(state)
    return Checkpoint({k: _to_numpy(v, path, k) for k, v in state.items()}, wrapper, extras)


def _torch_load_reason(error: Exception) -> str:
    """torch.load's refusal in one line (its own text spans lines and asks to file an issue)."""
    text = ' '.join(str(error).split())
    if 'WeightsUnpickler error:' in text:
        detail = text.split('WeightsUnpickler error:', 1)[1].split(' Check the documentation')[0]
        return (f'torch.load(weights_only=True) refused it ({detail.strip()}): the file is '
                'damaged, not a torch.save file, or holds objects other than tensors and plain '
                'containers, which are never unpickled')
    first_sentence = text.split('. ')[0].rstrip('.')
    return (f'torch.load(weights_only=True) failed: {first_sentence[:300]} (a truncated or '
            'damaged file?)')


def strip_module_prefix(state: Mapping) -> dict:
    """Drops the `module.` that (Distributed)DataParallel puts in front of every key."""
    if state and all(k.startswith('module.') for k in state):
        return {k[len('module.'):]: v for k, v in state.items()}
    return dict(state)


def load_checkpoint(path: str) -> dict:
    """{source key: np.ndarray} of the model weights in `path` (see `read_checkpoint`)."""
    return read_checkpoint(path).state


# --------------------------------------------------------------------------- layout transforms

def _single(fn):
    return lambda x, shapes: fn(x)


def _reshape(x, shapes):
    return x.reshape(shapes[0])


def _split(n: int, per_part: Callable):
    def split(x, shapes):
        if x.shape[0] % n:
            raise ValueError(f'cannot split leading dim {x.shape[0]} into {n} parts')
        return tuple(per_part(p) for p in np.split(x, n, axis=0))
    return split


TRANSFORMS: dict[str, Callable] = {
    'identity': _single(lambda x: x),
    'linear': _single(lambda x: x.T),                                   # (out, in) -> (in, out)
    'conv2d': _single(lambda x: x.transpose(2, 3, 1, 0)),               # OIHW -> HWIO
    'conv3d': _single(lambda x: x.transpose(2, 3, 4, 1, 0)),            # OIDHW -> DHWIO
    'reshape': _reshape,                                                # same size, target shape
    'qkv_linear': _split(3, lambda p: p.T),     # fused (3D, in) -> query/key/value kernels
    'qkv_bias': _split(3, lambda p: p),         # fused (3D,) -> query/key/value biases
}


# --------------------------------------------------------------------------- tables

Target = Union[str, Sequence[str], Callable]


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: str
    target: Target
    transform: Union[str, Callable] = 'identity'

    def targets(self, match: re.Match) -> tuple:
        target = self.target(match) if callable(self.target) else self.target
        names = (target,) if isinstance(target, str) else tuple(target)
        return tuple(t.format(**match.groupdict()) for t in names)

    def apply(self, array: np.ndarray, shapes: list) -> tuple:
        fn = self.transform if callable(self.transform) else TRANSFORMS.get(self.transform)
        if fn is None:
            raise ConversionError(f'rule {self.pattern!r}: unknown transform {self.transform!r}; '
                                  f'known: {sorted(TRANSFORMS)}')
        out = fn(array, shapes)
        return out if isinstance(out, tuple) else (out,)


@dataclasses.dataclass(frozen=True)
class ConversionTable:
    rules: Sequence[Rule]
    ignore: Sequence[tuple] = ()   # (pattern, reason): source keys the model does not need
    # (target pattern, 'zeros' | 'ones' | callable(shape, dtype), reason)
    fill: Sequence[tuple] = ()

    def rule_for(self, key: str):
        for rule in self.rules:
            m = re.fullmatch(rule.pattern, key)
            if m:
                return rule, m
        return None, None

    def ignore_reason(self, key: str) -> Optional[str]:
        for pattern, reason in self.ignore:
            if re.fullmatch(pattern, key):
                return reason
        return None


# --------------------------------------------------------------------------- conversion

@dataclasses.dataclass
class Report:
    mapped: dict = dataclasses.field(default_factory=dict)      # source -> target paths
    ignored: dict = dataclasses.field(default_factory=dict)     # source -> reason
    filled: dict = dataclasses.field(default_factory=dict)      # target -> reason (official init)
    unused: list = dataclasses.field(default_factory=list)      # source keys nothing explains
    unknown_targets: list = dataclasses.field(default_factory=list)  # (source, path) not in model
    mismatches: list = dataclasses.field(default_factory=list)  # (source, path, got, want)
    duplicates: list = dataclasses.field(default_factory=list)  # (path, first source, second)
    missing: list = dataclasses.field(default_factory=list)     # model params nothing filled
    errors: list = dataclasses.field(default_factory=list)      # (source, message) from transforms

    @property
    def ok(self) -> bool:
        return not (self.unused or self.unknown_targets or self.mismatches or self.duplicates
                    or self.missing or self.errors)

    def format(self, limit: int = 50) -> str:
        def section(title, items):
            items = list(items)
            if not items:
                return []
            shown = [f'  {i}' for i in items[:limit]]
            more = [f'  ... and {len(items) - limit} more'] if len(items) > limit else []
            return [f'{title} ({len(items)}):'] + shown + more
        lines = [f'conversion {"OK" if self.ok else "FAILED"}: {len(self.mapped)} source tensors '
                 f'mapped, {len(self.ignored)} ignored, {len(self.filled)} params initialised']
        lines += section('source tensors not used (no rule, not ignorable)', self.unused)
        lines += section('rules produced params the model does not have',
                         (f'{s} -> {p}' for s, p in self.unknown_targets))
        lines += section('shape mismatches', (f'{s} -> {p}: converted {g}, model wants {w}'
                                              for s, p, g, w in self.mismatches))
        lines += section('params filled twice', (f'{p}: from {a} and {b}'
                                                  for p, a, b in self.duplicates))
        lines += section('model params not filled', self.missing)
        lines += section('transform errors', (f'{s}: {m}' for s, m in self.errors))
        lines += section('ignored source tensors', (f'{k} ({r})' for k, r in self.ignored.items()))
        lines += section('params initialised as the official loader does',
                         (f'{k} ({r})' for k, r in self.filled.items()))
        return '\n'.join(lines)


def flatten_params(tree) -> dict:
    """{'a/b/kernel': leaf} of a (possibly boxed) params tree."""
    tree = flax.core.meta.unbox(tree)
    return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(tree)).items()}


def _fill_value(how, shape, dtype):
    if callable(how):
        return np.asarray(how(shape, dtype), dtype)
    if how == 'zeros':
        return np.zeros(shape, dtype)
    if how == 'ones':
        return np.ones(shape, dtype)
    raise ConversionError(f"fill rule: unknown initialiser {how!r}; use 'zeros', 'ones' or a "
                          'callable')


def convert_with_report(source: Mapping[str, np.ndarray], table: ConversionTable,
                        abstract_params) -> tuple[dict, Report]:
    """Returns (params, report); params is None unless report.ok."""
    want = flatten_params(abstract_params)
    report, out, origin = Report(), {}, {}
    for key in source:
        rule, match = table.rule_for(key)
        if rule is None:
            reason = table.ignore_reason(key)
            if reason is None:
                report.unused.append(key)
            else:
                report.ignored[key] = reason
            continue
        paths = rule.targets(match)
        absent = [p for p in paths if p not in want]
        report.unknown_targets += [(key, p) for p in absent]
        if absent:
            continue
        try:
            arrays = rule.apply(np.asarray(source[key]), [tuple(want[p].shape) for p in paths])
        except Exception as e:  # a transform that cannot handle this tensor: report, don't crash
            report.errors.append((key, f'{type(e).__name__}: {e}'))
            continue
        if len(arrays) != len(paths):
            report.errors.append((key, f'transform gave {len(arrays)} arrays for {len(paths)} '
                                       'targets'))
            continue
        report.mapped[key] = paths
        for path, array in zip(paths, arrays):
            if tuple(array.shape) != tuple(want[path].shape):
                report.mismatches.append((key, path, tuple(array.shape), tuple(want[path].shape)))
            elif path in out:
                report.duplicates.append((path, origin[path], key))
            else:
                out[path], origin[path] = np.asarray(array, want[path].dtype), key
    for path, leaf in want.items():
        if path in out or any(p == path for _, p, _, _ in report.mismatches):
            continue
        for pattern, how, reason in table.fill:
            if re.fullmatch(pattern, path):
                out[path] = _fill_value(how, tuple(leaf.shape), leaf.dtype)
                report.filled[path] = reason
                break
        else:
            report.missing.append(path)
    if not report.ok:
        return None, report
    params = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})
    return params, report


def convert(source: Mapping[str, np.ndarray], table: ConversionTable, abstract_params, *,
            log: Optional[Callable[[str], Any]] = print) -> dict:
    """Strict conversion: the params tree (nested dict of np arrays), or ConversionError."""
    params, report = convert_with_report(source, table, abstract_params)
    if log is not None:
        log(report.format())
    if not report.ok:
        raise ConversionError(report.format())
    return params


def abstract_params_of(model, *inputs, **kwargs):
    """Unboxed shape/dtype tree of `model.init(rng, *inputs, **kwargs)['params']` (never
    materialised)."""
    tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, **kwargs))
    return flax.core.meta.unbox(tree['params'])

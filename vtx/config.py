"""Configs: the shared defaults, finding a config by zoo name or path, and the checks that tie
`config.model` to `config.data`.

A config is a Python file with `get_config()` returning an ml_collections ConfigDict. The zoo's
files are the repository's `configs/` folder; an installed vtx carries them as `vtx/configs`
(pyproject.toml maps the folder there), so `--config xvit_k600` works from any directory. Config
files inherit by name through `get(name)`, never by importing a `configs` package, so a user's
own `configs/` folder on the path cannot shadow them.
"""
import dataclasses
import difflib
import importlib.util
import json
import os
from typing import List, Optional

import ml_collections

from vtx.errors import VtxError

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NOT_CONFIGS = ('__init__',)


class ConfigError(VtxError):
    pass


def config_dir() -> str:
    """The zoo's config folder: inside the installed package, else the repository's `configs/`."""
    for path in (os.path.join(_PACKAGE_DIR, 'configs'),
                 os.path.join(os.path.dirname(_PACKAGE_DIR), 'configs')):
        if os.path.isdir(path):
            return path
    raise ConfigError(f'no zoo config folder next to {_PACKAGE_DIR}: reinstall vtx (pip install .)')


def names() -> List[str]:
    """Every config the zoo folder holds, by name (`demo`, `xvit_k600`, ...)."""
    return sorted(f[:-3] for f in os.listdir(config_dir())
                  if f.endswith('.py') and f[:-3] not in _NOT_CONFIGS)


def resolve(name_or_path: str) -> str:
    """The file a `--config` value means: an existing path, else a zoo name (with or without
    `.py` or a `configs/` prefix). Anything else is one error listing the close matches."""
    if not name_or_path:
        raise ConfigError('--config is empty: give a zoo config name (vtx.config.names()) or a '
                          'path to a config file')
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    name = os.path.basename(name_or_path)
    name = name[:-3] if name.endswith('.py') else name
    known = names()
    if name in known and os.path.dirname(name_or_path) in ('', 'configs'):
        return os.path.join(config_dir(), name + '.py')
    close = close_matches(name, known)
    hint = (f'close matches: {", ".join(close)}' if close else
            f'the zoo configs are: {", ".join(known)}')
    raise ConfigError(f'--config {name_or_path}: no such file and no zoo config of that name; '
                      f'{hint}')


def close_matches(name: str, known: List[str]) -> List[str]:
    """Up to 8 of `known` that look like a mistyped `name`: near spellings, then names that
    contain it."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    close += [k for k in known if name and name in k and k not in close]
    return close[:8]


def _module(path: str):
    name = 'vtx_config_' + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f'config file {path}: syntax error at line {e.lineno}: {e.msg}') from None
    except Exception as e:  # noqa: BLE001  any failure of the file is one line naming it
        raise ConfigError(f'config file {path}{_line_in(e, path)}: {type(e).__name__}: {e}') from None
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'config file {path} defines no get_config()')
    return module


def _line_in(error: BaseException, path: str) -> str:
    """', line N' of the innermost frame of `error` inside the file `path`, if any."""
    import traceback
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(f.filename) == os.path.abspath(path)]
    return f', line {lines[-1]}' if lines else ''


def get(name_or_path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a zoo config or config file, unchecked: what a config file inheriting
    from another one starts from."""
    path = resolve(name_or_path)
    module = _module(path)
    try:
        return module.get_config()
    except VtxError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f'config file {path}{_line_in(e, path)}: get_config() failed: '
                          f'{type(e).__name__}: {e}') from None


def unknown_field(config: ml_collections.ConfigDict, key: str) -> Optional[str]:
    """Why the dotted `key` ('model.dtype') names no field of `config`, or None where it does."""
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
        if not isinstance(node, ml_collections.ConfigDict) or p not in node:
            return f'--config.{key}: the config has no field {p!r}'
        node = node[p]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(leaf, known, n=3)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        return f'--config.{key}: the config has no field {leaf!r}{hint}'
    return None


def set_overrides(config: ml_collections.ConfigDict, overrides: Optional[dict]):
    """Sets dotted `overrides` ('model.dtype': value) on `config`; an unknown field is an error."""
    for key, value in (overrides or {}).items():
        error = unknown_field(config, key)
        if error:
            raise ConfigError(error)
        *parents, leaf = key.split('.')
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def load(name_or_path: str, overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
    """A config by zoo name or path, with dotted `overrides` set, completed and checked by
    `prepare`."""
    return prepare(set_overrides(get(name_or_path), overrides))


def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills the fields `config.data.dataset` determines, then `check`s the result. Every entry
    point (train, eval, predict, export, report) calls this before any work."""
    if config.get('data', {}).get('dataset'):
        _apply_dataset(config)
    return check(config)


def _apply_dataset(config) -> None:
    """A folder written by `vtx-shards-from-folder` sets the shards, the class count (of the data
    and the model's classifier) and the train-set size, and how its frames were stored."""
    folder = os.path.abspath(os.path.expanduser(config.data.dataset))
    path = os.path.join(folder, 'dataset.json')
    try:
        with open(path) as f:
            dataset = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f'config.data.dataset={config.data.dataset!r}: cannot read {path} '
                          f'({getattr(e, "strerror", None) or e}); make the folder with '
                          'vtx-shards-from-folder') from None
    data = config.data
    data.synthetic = ''  # the folder replaces any built-in set the config would generate
    data.train_shards = os.path.join(folder, dataset['train']['pattern']) if 'train' in dataset else ''
    data.eval_shards = os.path.join(folder, dataset['val']['pattern']) if 'val' in dataset else ''
    data.num_classes = dataset['num_classes']
    data.num_train_examples = dataset.get('train', {}).get('videos', 0)
    for field in ('shard_short_side', 'shard_fps', 'shard_qscale'):
        data[field] = type(data[field])(dataset[field])
    if 'num_classes' in config.model:
        config.model.num_classes = dataset['num_classes']


def dataset_label_names(config) -> Optional[List[str]]:
    """The class names of `config.data.dataset`, if the config reads such a folder."""
    if not config.data.get('dataset'):
        return None
    folder = os.path.abspath(os.path.expanduser(config.data.dataset))
    with open(os.path.join(folder, 'labels.txt')) as f:
        return [line.rstrip('\n') for line in f if line.strip()]


# config.model field -> the config.data field it must equal (each where the family has the field).
TIED_FIELDS = {'num_frames': 'num_frames', 'num_classes': 'num_classes', 'image_size': 'crop_size'}


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fields that describe one thing twice must agree; a mismatch is one error naming both."""
    model, data = config.get('model', {}), config.get('data', {})
    wrong = [f'config.model.{m}={model[m]} but config.data.{d}={data[d]}'
             for m, d in TIED_FIELDS.items()
             if m in model and d in data and data[d] and model[m] != data[d]]
    if wrong:
        raise ConfigError('the model and its data disagree: ' + '; '.join(wrong) + '. Set both '
                          '(e.g. --config.model.num_classes=N --config.data.num_classes=N).')
    return config


def defaults() -> ml_collections.ConfigDict:
    """Defaults shared by every config; a zoo config overrides only what its paper states.

    Units follow the papers: schedules are in epochs (converted to steps with
    `data.num_train_examples` and `train.batch_size`), learning rates are for the global batch.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Where the params start ('': from scratch): a zoo model name (downloaded and converted once),
    # a vtx params checkpoint or workdir, an official checkpoint of the family, or the pretrained
    # file its official fine-tuning starts from (ImageNet ViT .npz, 2D ImageNet Swin .pth, ...).
    # A classifier trained on another number of classes is re-initialised (vtx.finetune).
    c.init_from = ''
    c.init_reinit = ''  # regex over parameter paths to re-initialise too, e.g. 'temporal_head/.*'
    c.distributed = False  # call jax.distributed.initialize (TPU pods and SLURM auto-detect)

    c.model = ml_collections.ConfigDict({'name': ''})  # a zoo config sets model_defaults(family)

    c.data = ml_collections.ConfigDict()
    c.data.train_shards = ''   # glob(s) of DMVR shards, comma-separated
    c.data.eval_shards = ''
    # A folder written by vtx-shards-from-folder: sets the shards, class count (data and model),
    # train-set size and shard settings from its dataset.json (vtx.config.prepare).
    c.data.dataset = ''
    c.data.tfds_name = ''      # alternative source: a prepared TFDS dataset with a video feature
    c.data.tfds_data_dir = ''
    c.data.tfds_train_split = 'train'
    c.data.tfds_eval_split = 'test'
    c.data.tfds_video_key = ''   # '' = the dataset's only Video feature
    c.data.tfds_label_key = ''   # '' = its only ClassLabel feature
    c.data.synthetic = ''      # name of a built-in synthetic set generated when shards are missing
    # How the shards were built (vtx-shards-from-* --fps/--short_side/--qscale): vtx-predict makes
    # the same frames from a video file. fps 0: the native rate; short side 0: keep the size.
    c.data.shard_fps = 0.0
    c.data.shard_short_side = 256
    c.data.shard_qscale = 2
    c.data.num_classes = 0
    c.data.num_train_examples = 0
    c.data.num_frames = 8
    c.data.stride = 1
    c.data.sampling = 'dense'  # 'dense' (stride) or 'uniform' (TSN/SSv2 segments)
    c.data.min_resize = 256    # test short side
    c.data.crop_size = 224
    c.data.train_scale_range = (256, 320)  # short side before the random crop (scale jitter)
    c.data.random_resized_crop = False
    c.data.random_resized_crop_area = (0.08, 1.0)
    c.data.random_flip = True
    c.data.zero_centering = False  # [-1, 1] instead of [0, 1]
    c.data.normalization_mean = (0.0, 0.0, 0.0)
    c.data.normalization_std = (1.0, 1.0, 1.0)
    c.data.randaugment_layers = 0
    c.data.randaugment_magnitude = 0
    c.data.random_erasing = 0.0
    c.data.mixup_alpha = 0.0
    c.data.cutmix_alpha = 0.0
    c.data.eval_num_clips = 1
    c.data.eval_num_crops = 1
    c.data.eval_aggregation = 'logits'  # average 'logits' or softmax 'probs' over views
    # The official test pipeline eval and vtx-predict follow (vtx.data.protocols): 'dmvr', or a
    # zoo config's paper's ('mmaction', 'slowfast_xvit', 'slowfast_stts', 'tokshift').
    c.data.test_protocol = 'dmvr'
    # Exact evaluation from files: a CSV of `path,label[,num_frames]` (video files, XViT .h5
    # files or TokShift frame folders; relative to the CSV) read instead of config.data.eval_shards
    # by the config's (non-dmvr) test protocol, decoded in this process (eval_workers=1) or in
    # `eval_workers` spawned processes (0: one per core), which a full Kinetics pass wants.
    c.data.eval_videos = ''
    c.data.eval_workers = 1
    c.data.shuffle_buffer = 256
    # Input readers, each over a disjoint subset of the shards; the global batch is the
    # concatenation of their batches. 0: one per process. Fixing it makes the data order
    # independent of how many processes run the job (each process runs readers/processes).
    c.data.num_readers = 0
    c.data.skip_bad_records = False

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64          # global, across all hosts
    c.train.eval_batch_size = 64
    c.train.num_epochs = 30.0
    c.train.num_steps = 0            # > 0 overrides num_epochs
    c.train.grad_accum_steps = 1
    c.train.label_smoothing = 0.0
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 0     # 0: only at the end
    c.train.checkpoint_every_steps = 1000
    c.train.keep_checkpoints = 3

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = 'adamw'       # 'adamw' or 'sgd'
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9       # sgd
    c.optimizer.nesterov = False
    c.optimizer.b1 = 0.9             # adamw
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    # Parameters whose path matches any of these regexes get no weight decay.
    c.optimizer.no_decay = (r'bias$', r'scale$', r'norm', r'pos_embed', r'cls_token',
                            r'relative_position_bias_table')
    # Learning-rate multipliers: '(regex, multiplier)' pairs, first match wins (mmcv's rule).
    c.optimizer.lr_multipliers = ()
    c.optimizer.grad_clip_norm = 0.0
    c.optimizer.schedule = 'cosine'  # 'cosine', 'step' or 'constant'
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_start_factor = 0.0
    c.optimizer.step_epochs = ()     # 'step': epochs at which lr *= step_factor
    c.optimizer.step_factor = 0.1
    c.optimizer.cosine_end_factor = 0.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.model_axis_size = 1       # devices on the 'model' axis; the rest form 'data'
    c.mesh.param_sharding = 'replicated'  # or 'fsdp': large kernels sharded over 'data'
    c.mesh.fsdp_min_size = 2 ** 18   # parameters with fewer elements stay replicated
    return c


def model_defaults(name: str) -> ml_collections.ConfigDict:
    """`config.model` for family `name` with every constructor field at its default, so any of
    them can be overridden from the command line; a zoo config then sets its paper's values."""
    from vtx.models import model_class
    fields = {f.name: f.default for f in dataclasses.fields(model_class(name))
              if f.name not in ('parent', 'name') and f.default is not dataclasses.MISSING}
    if 'dtype' in fields:
        fields['dtype'] = 'auto'  # bfloat16 on GPU/TPU, float32 on CPU: vtx.models.resolve_dtype
    return ml_collections.ConfigDict({'name': name, **fields})

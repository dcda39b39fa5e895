"""From a model name to a ready model: `vtx.load('swin_tiny_patch244_window877_kinetics400_1k')`.

A zoo name (`vtx-zoo list`) is a config in `configs/` plus the official checkpoint it reproduces
(`vtx.families`: URL, checksum, class names). The first `load` downloads the checkpoint into the
cache (`vtx.hub`: resumable, verified), converts it with the strict report and caches the
converted params (`$VTX_CACHE_DIR/converted/<name>/`); later loads use the cache and need no
network. Checkpoints whose official host needs a browser (Google Drive) are downloaded by hand and
given once with `checkpoint=PATH` (`--checkpoint PATH`); they are cached the same way.
"""
import os
import shutil
import sys
import tempfile
from typing import List, Optional

from vtx import cli, families, hub
from vtx.errors import VtxError

LABELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'labels')


class ZooError(VtxError):
    pass


def zoo_names() -> List[str]:
    return [entry.config for entry in families.zoo_entries()]


def is_zoo_name(name: str) -> bool:
    return name in zoo_names()


def close_matches_hint(name: str) -> str:
    from vtx.config import close_matches
    close = close_matches(name, zoo_names())
    return f'; close zoo names: {", ".join(close)}' if close else ''


def _entry(name: str):
    if not is_zoo_name(name):
        raise ZooError(f'{name!r} is not a zoo model{close_matches_hint(name)} (vtx-zoo list '
                       'shows them all)')
    return families.find_in_zoo(name)


def class_names(dataset: str) -> List[str]:
    """The class names of a dataset the zoo models were trained on ('kinetics400', ...)."""
    with open(os.path.join(LABELS_DIR, dataset + '.txt')) as f:
        return [line.rstrip('\n') for line in f if line.strip()]


def official_checkpoint(name: str, checkpoint: Optional[str] = None, quiet: bool = False) -> str:
    """The cached official checkpoint of zoo model `name`: downloaded on first use, or, where
    its host needs a browser, taken from `checkpoint` (a file the user downloaded)."""
    _, entry = _entry(name)
    if entry.url is None:
        raise ZooError(f'{name}: the official repository publishes no checkpoint for this config '
                       '(train it, or give init_from / a params checkpoint of your own)')
    if checkpoint:
        return hub.add_local_file(checkpoint, entry.file_name)
    cached = hub.cached_file(entry.file_name)
    if cached:
        return cached
    if entry.needs_browser and not os.environ.get(hub.MIRROR_ENV):
        raise ZooError(f'{name}: the official checkpoint is published at {entry.url}, which needs '
                       f'a browser. Download it there, then pass the file once: '
                       f'vtx.load({name!r}, checkpoint=PATH) or --checkpoint PATH (it is cached '
                       'from then on)')
    return hub.download(entry.url, expected_sha256=entry.sha256, quiet=quiet)


def converted(name: str, checkpoint: Optional[str] = None, log=print, quiet: bool = False) -> str:
    """The cached vtx params checkpoint of zoo model `name`, converted once (strict report) from
    its official checkpoint. A cache entry made from another file, or unreadable, is made again."""
    from vtx import checkpoint as vtx_checkpoint
    source = official_checkpoint(name, checkpoint, quiet=quiet)
    digest = hub.Checksums(os.path.dirname(source)).get(os.path.basename(source)) or hub.sha256(source)
    folder = os.path.join(hub.cache_dir(), 'converted', name)
    if vtx_checkpoint.is_params_checkpoint(folder):
        try:
            meta = vtx_checkpoint.read_params_metadata(folder)
        except vtx_checkpoint.CheckpointError:
            meta = {}
        if meta.get('source_sha256') == digest:
            return folder
    if os.path.exists(folder):
        print(f'vtx: {folder} does not belong to {os.path.basename(source)}; converting again',
              file=sys.stderr)
        shutil.rmtree(folder)
    _convert(name, source, digest, folder, log)
    return folder


def _convert(name: str, source: str, digest: str, folder: str, log) -> None:
    import jax.numpy as jnp

    from vtx import checkpoint as vtx_checkpoint
    from vtx import config as vtx_config
    from vtx.convert import engine, families as converters
    from vtx.models import build_model
    family, entry = _entry(name)
    config = vtx_config.get(entry.config)
    model_config = config.model.to_dict()
    d = config.data
    abstract = engine.abstract_params_of(
        build_model(model_config), jnp.zeros((1, d.num_frames, d.crop_size, d.crop_size, 3)),
        train=False)
    params = converters.convert_checkpoint(family.official_tags[0], source, model_config,
                                           abstract, log=log)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=f'.{name}-')
    try:
        vtx_checkpoint.save_params(staging, params, model_config, source=source,
                                   source_sha256=digest, zoo=name,
                                   label_names=class_names(entry.labels) if entry.labels else None)
        os.replace(staging, folder)  # all of it or nothing: an interrupted conversion leaves none
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(name_or_path: str, *, config=None, checkpoint: Optional[str] = None,
         overrides: Optional[dict] = None, label_names: Optional[List[str]] = None,
         quiet: bool = False, log=None):
    """A ready model (`vtx.predict.Predictor`) with `predict(videos)`, `embed(videos)`,
    `apply(clips)`, `config` and `class_names`.

    `name_or_path`: a zoo name, or a vtx params checkpoint / training workdir (then `config`, a
    zoo config name, file or ConfigDict, says which model it holds; a checkpoint converted from a
    zoo model knows its own). `checkpoint`: the official file of a zoo model whose host needs a
    browser. `overrides`: dotted config fields to set ('data.eval_num_clips': 1). `label_names`
    replace the class names the model carries.
    """
    from vtx import checkpoint as vtx_checkpoint
    from vtx import config as vtx_config
    from vtx.predict import Predictor
    def configured(default):
        if config is None or not hasattr(config, 'model'):
            return vtx_config.load(config or default, overrides)
        return vtx_config.prepare(vtx_config.set_overrides(config, overrides))

    if is_zoo_name(name_or_path) and not os.path.isdir(name_or_path):
        _, entry = _entry(name_or_path)
        folder = converted(name_or_path, checkpoint, log=log, quiet=quiet)
        config = configured(entry.config)
        try:
            return Predictor(config, folder, label_names, warn=_warn)
        except vtx_checkpoint.CheckpointError:
            # The cached params do not load (damaged by hand): convert them again, once.
            shutil.rmtree(folder, ignore_errors=True)
            return Predictor(config, converted(name_or_path, checkpoint, log=log, quiet=quiet),
                             label_names, warn=_warn)
    if not os.path.isdir(name_or_path):
        raise ZooError(f'{name_or_path!r} is neither a zoo model nor a folder'
                       f'{close_matches_hint(name_or_path)}')
    zoo = (vtx_checkpoint.read_params_metadata(name_or_path).get('zoo')
           if vtx_checkpoint.is_params_checkpoint(name_or_path) else None)
    if config is None and zoo is None:
        raise ZooError(f'{name_or_path}: say which config made it: vtx.load(path, config=...)')
    return Predictor(configured(zoo and _entry(zoo)[1].config), name_or_path, label_names,
                     warn=_warn)


def _warn(message: str) -> None:
    print(f'vtx: warning: {message}', file=sys.stderr)


COSTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'zoo_costs.json')


def zoo_table() -> List[dict]:
    """One row per zoo model: name, family, params, GMACs per view and views (from
    `vtx/zoo_costs.json`, written by scripts/render_model_table.py), class names, where the
    checkpoint comes from, and whether it is in the cache."""
    import json
    with open(COSTS_FILE) as f:
        costs = json.load(f)
    rows = []
    for family in families.FAMILIES.values():
        for entry in family.zoo:
            cost = costs.get(entry.config, {})
            source = ('not published' if entry.url is None else
                      'by hand (browser)' if entry.needs_browser else 'download')
            cached = entry.url is not None and os.path.isdir(
                os.path.join(hub.cache_dir(), 'converted', entry.config))
            rows.append({'name': entry.config, 'family': family.name,
                         'params_m': cost.get('params', 0) / 1e6,
                         'gmacs_per_view': cost.get('gmacs_per_view'),
                         'views': cost.get('views_per_video'), 'classes': entry.labels,
                         'checkpoint': source, 'cached': cached, 'url': entry.url})
    return rows


@cli.command
def main(argv=None):
    """`vtx-zoo list [--json]`; `vtx-zoo fetch NAME [--checkpoint FILE]`."""
    import argparse
    import json
    parser = argparse.ArgumentParser(prog='vtx-zoo', description='The model zoo: every official '
                                     'checkpoint vtx has a config for.')
    commands = parser.add_subparsers(dest='command', required=True)
    listing = commands.add_parser('list', help='every zoo model with its params and GMACs')
    listing.add_argument('--json', action='store_true')
    fetch = commands.add_parser('fetch', help='download and convert a zoo model into the cache')
    fetch.add_argument('name')
    fetch.add_argument('--checkpoint', help='the official file, where its host needs a browser')
    args = parser.parse_args(argv)
    if args.command == 'list':
        rows = zoo_table()
        if args.json:
            print(json.dumps(rows, indent=1))
            return
        print(f'{"name":46s} {"family":16s} {"params":>8s} {"GMACs":>8s} {"views":>5s}  '
              f'{"classes":23s} checkpoint')
        for r in rows:
            gmacs = f'{r["gmacs_per_view"]:.1f}' if r['gmacs_per_view'] is not None else '-'
            print(f'{r["name"]:46s} {r["family"]:16s} {r["params_m"]:7.1f}M {gmacs:>8s} '
                  f'{r["views"] or "-":>5}  {r["classes"]:23s} {r["checkpoint"]}'
                  f'{" (cached)" if r["cached"] else ""}')
        print(f'\nGMACs per view; cache: {hub.cache_dir()} (${hub.CACHE_ENV})')
        return
    try:
        print(converted(args.name, args.checkpoint))
    except VtxError as e:
        print(f'vtx-zoo: error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()

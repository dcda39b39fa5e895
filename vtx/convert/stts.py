"""The 'stts' (and 'mvit') converter family: STTS ships two independent backbones.

MViT (SlowFast cfg: `config.resolved_MVIT` in a parity case, `official_config.merged_cfg.MVIT` in a
`parity/full` entry) goes to `convert.mvit`; Video Swin (mmaction `backbone`/`cls_head` config) to
`convert.stts_video_swin`. `import_backbone` starts STTS fine-tuning from a checkpoint without
scorers (plain MViT-B, Kinetics Video Swin), as the official loaders do.
"""
import dataclasses
import importlib

import numpy as np

from vtx.convert import engine


def _is_mvit(manifest: dict) -> bool:
    if 'official_config' in manifest:
        return 'MVIT' in manifest['official_config'].get('merged_cfg', {})
    return 'resolved_MVIT' in manifest['config']


def _module(backbone: str):
    return importlib.import_module({'mvit': 'vtx.convert.mvit',
                                    'stts_video_swin': 'vtx.convert.stts_video_swin'}[backbone])


def model_config_from_manifest(manifest: dict) -> dict:
    return _module('mvit' if _is_mvit(manifest) else 'stts_video_swin').model_config_from_manifest(
        manifest)


def _backbone(model_config):
    name = dict(model_config)['name']
    if name not in ('mvit', 'stts_video_swin'):
        raise ValueError(f"STTS converter: model name {name!r} is neither 'mvit' nor "
                         "'stts_video_swin'")
    return _module(name)


def table(model_config):
    return _backbone(model_config).table(model_config)


def example_input_shape(model_config) -> tuple:
    return _backbone(model_config).example_input_shape(model_config)


def _xavier_uniform(shape, dtype):
    # vtx's Dense initialiser (layers.default_kernel_init), fixed seed: conversion is reproducible.
    limit = np.sqrt(6.0 / (shape[0] + shape[1]))
    return np.random.default_rng(0).uniform(-limit, limit, shape).astype(dtype)


_ABSENT = ('not in a backbone checkpoint: the official loader skips the scorer keys it lacks and '
           'keeps their initialisation')
SCORER_INIT = ((r'(time|space)_selection/.*/kernel', _xavier_uniform, _ABSENT),
               (r'(time|space)_selection/.*/bias', 'zeros', _ABSENT),
               (r'(time|space)_selection/.*/scale', 'ones', _ABSENT))


def import_backbone(path: str, model_config, abstract_params, log=print):
    """Params of an STTS model from an official checkpoint that may lack the scorers (a plain
    MViT-B `.pyth`, a Kinetics Video Swin `.pth`); every backbone and head tensor must map."""
    rules = dataclasses.replace(table(model_config), fill=SCORER_INIT)
    return engine.convert(engine.load_checkpoint(path), rules, abstract_params, log=log)

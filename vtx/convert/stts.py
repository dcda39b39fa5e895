"""STTS fine-tuning from a video backbone checkpoint without the STTS scorers (a plain MViT-B
`.pyth`, a Kinetics Video Swin `.pth`), as the official loaders do it.

The STTS models themselves convert with their backbone's converter (`vtx.convert.mvit`,
`vtx.convert.stts_video_swin`); the official tag 'stts' they share is resolved in
`vtx.convert.families`.
"""
import dataclasses

import numpy as np

from vtx import families
from vtx.convert import engine


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
    backbone = families.family(dict(model_config)['name']).converter_module()
    rules = dataclasses.replace(backbone.table(model_config), fill=SCORER_INIT)
    return engine.convert(engine.load_checkpoint(path), rules, abstract_params, log=log)


def is_video_swin_checkpoint(path: str) -> bool:
    """A 3D (video) Swin: its patch embedding kernel is [C, 3, T, H, W]; a 2D ImageNet Swin's is
    [C, 3, H, W]."""
    kernel = next((v for k, v in engine.load_checkpoint(path).items()
                   if k.endswith('patch_embed.proj.weight')), None)
    return kernel is not None and kernel.ndim == 5

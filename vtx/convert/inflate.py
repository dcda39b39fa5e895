"""Inflating a 2D ImageNet Swin (microsoft/Swin-Transformer `{'model': ...}`) into Video Swin / TPS.

Reproduces the official `inflate_weights`: the patch kernel is repeated over the temporal taps and
divided by their number (mean inflation); every relative-position bias table is resized with
PyTorch's bicubic interpolation (cubic constant -0.75, no antialiasing: not `jax.image.resize`)
when the spatial windows differ, then tiled once per temporal offset of the 3D table. The 2D
classifier is dropped and the video head keeps the official init (normal(0, 0.01) weight, zero
bias).
"""
import math

import numpy as np

from vtx.convert import engine, video_swin

HEAD_INIT_SEED = 0


def resize_bias_table(table: np.ndarray, window_hw) -> np.ndarray:
    """[(2w-1)^2, heads] 2D table -> [(2Wh-1)(2Ww-1), heads] (bicubic) for the target window."""
    rows, heads = table.shape
    side = int(round(math.sqrt(rows)))
    out_h, out_w = (2 * w - 1 for w in window_hw)
    if side * side != rows:
        raise ValueError(f'2D relative_position_bias_table has {rows} rows, not a square grid')
    if (side, side) == (out_h, out_w):
        return table
    torch = engine.import_torch()  # the official resize is torch's bicubic: only torch matches its rounding
    grid = torch.from_numpy(np.ascontiguousarray(table.T)).reshape(1, heads, side, side)
    grid = torch.nn.functional.interpolate(grid, size=(out_h, out_w), mode='bicubic',
                                           align_corners=False)
    return grid.reshape(heads, out_h * out_w).numpy().T.astype(table.dtype)


def inflate_state(state_2d: dict, model_config, abstract_params) -> dict:
    """2D state dict -> the 3D recognizer's `backbone.*` keys, inflated as officially."""
    from vtx.models import build_model
    model = build_model(model_config)  # its patch and window, defaults included
    want = engine.flatten_params(abstract_params)
    pt = model.patch_size[0]
    window_hw = tuple(model.window_size)[1:]
    out = {}
    for key, value in state_2d.items():
        if key.endswith('patch_embed.proj.weight'):
            value = np.repeat(value[:, :, None], pt, axis=2) / pt
        elif key.endswith('relative_position_bias_table'):
            table = resize_bias_table(value, window_hw)
            i, j = key.split('.')[1], key.split('.')[3]  # layers.{i}.blocks.{j}.attn....
            rows = want[f'layers_{i}/blocks_{j}/attn/relative_position_bias_table'].shape[0]
            if rows % table.shape[0]:
                raise ValueError(f'{key}: the model table has {rows} rows, not a multiple of the '
                                 f'resized 2D table ({table.shape[0]})')
            value = np.tile(table, (rows // table.shape[0], 1))
        out['backbone.' + key] = value
    return out


def _head_init(shape, dtype):
    return np.random.default_rng(HEAD_INIT_SEED).normal(0.0, 0.01, shape).astype(dtype)


def table(model_config) -> engine.ConversionTable:
    return engine.ConversionTable(
        rules=video_swin.RULES,
        ignore=(*video_swin.IGNORE,
                (r'backbone\.head\.(weight|bias)', '2D ImageNet classifier (unused by the video '
                 'model)'),
                (r'.*\.attn_mask', '2D shifted-window mask buffer (recomputed)')),
        fill=(('head/kernel', _head_init, 'video head: normal(0, 0.01) as I3DHead.init_weights'),
              ('head/bias', 'zeros', 'video head bias: zeros')))


def inflate_2d_swin(path: str, model_config, abstract_params, log=print):
    """Params of the Video Swin or TPS model `model_config` describes, initialised from the 2D
    ImageNet Swin checkpoint at `path` (`abstract_params`: that model's param shapes)."""
    checkpoint = engine.read_checkpoint(path)
    if not any(k.endswith('relative_position_bias_table') for k in checkpoint.state):
        raise ValueError(f'{path}: not a 2D Swin checkpoint (no relative_position_bias_table keys)')
    state = inflate_state(checkpoint.state, model_config, abstract_params)
    return engine.convert(state, table(model_config), abstract_params, log=log)

"""XViT (1adrianb/video-transformers, SlowFast-based) checkpoints -> `vtx.models.xvit.XViT`.

Sources: the official training checkpoint (`{'model_state': {'base_model.*', 'consensus.*',
'new_fc.*'}, 'cfg': YAML, ...}`), see `table`; and, for fine-tuning, the ImageNet-21k ViT-B/16 the
official training starts from, either as the timm `.pth` port it actually loads
(`import_timm_vit`) or as the original `.npz` (`import_npz`). Both leave `temp_embed` at zero, as
the official loader does, and give the temporal head fresh initial values.
"""
import math
import re

import numpy as np

from vtx.convert import engine
from vtx.convert.engine import ConversionTable, Rule
from vtx.convert.tokshift import imagenet_npz_table


def _block_rules(src: str, dst: str) -> list:
    """Rules for one official timm-style transformer block prefix `src` (regex) -> Flax `dst`."""
    return [
        Rule(src + r'(?P<ln>norm1|norm2)\.weight', dst + '/{ln}/scale'),
        Rule(src + r'(?P<ln>norm1|norm2)\.bias', dst + '/{ln}/bias'),
        Rule(src + r'attn\.qkv\.weight',
             tuple(f'{dst}/attn/{p}/kernel' for p in ('query', 'key', 'value')), 'qkv_linear'),
        Rule(src + r'attn\.qkv\.bias',
             tuple(f'{dst}/attn/{p}/bias' for p in ('query', 'key', 'value')), 'qkv_bias'),
        Rule(src + r'attn\.proj\.weight', dst + '/attn/out/kernel', 'linear'),
        Rule(src + r'attn\.proj\.bias', dst + '/attn/out/bias'),
        Rule(src + r'mlp\.(?P<fc>fc1|fc2)\.weight', dst + '/mlp/{fc}/kernel', 'linear'),
        Rule(src + r'mlp\.(?P<fc>fc1|fc2)\.bias', dst + '/mlp/{fc}/bias'),
    ]


def _backbone_rules(prefix: str) -> list:
    return [
        Rule(prefix + r'patch_embed\.proj\.weight', 'patch_embed/proj/kernel', 'conv2d'),
        Rule(prefix + r'patch_embed\.proj\.bias', 'patch_embed/proj/bias'),
        Rule(prefix + r'cls_token', 'cls_token'),
        Rule(prefix + r'pos_embed', 'pos_embed'),
        Rule(prefix + r'temp_embed', 'temp_embed'),
        Rule(prefix + r'norm\.weight', 'norm/scale'),
        Rule(prefix + r'norm\.bias', 'norm/bias'),
        *_block_rules(prefix + r'blocks\.(?P<i>\d+)\.', 'blocks_{i}'),
    ]


_H = 'temporal_head/'
TABLE = ConversionTable(
    rules=[
        *_backbone_rules(r'base_model\.'),
        Rule(r'consensus\.cls_token', _H + 'cls_token'),
        *_block_rules(r'consensus\.temporal_encoder\.(?P<j>\d+)\.', _H + 'blocks_{j}'),
        Rule(r'consensus\.mlp_head\.0\.weight', _H + 'mlp_head_norm/scale'),
        Rule(r'consensus\.mlp_head\.0\.bias', _H + 'mlp_head_norm/bias'),
        Rule(r'consensus\.mlp_head\.1\.weight', _H + 'mlp_head_fc1/kernel', 'linear'),
        Rule(r'consensus\.mlp_head\.1\.bias', _H + 'mlp_head_fc1/bias'),
        Rule(r'consensus\.mlp_head\.4\.weight', _H + 'mlp_head_fc2/kernel', 'linear'),
        Rule(r'consensus\.mlp_head\.4\.bias', _H + 'mlp_head_fc2/bias'),
    ],
    ignore=[(r'new_fc\.(weight|bias)', "classifier of the unused 'avg' consensus path")])


def table(model_config=None) -> ConversionTable:
    return TABLE


# timm backbones the official configs name in XVIT.BASE_MODEL.
BACKBONES = {
    'vit_base_patch16_224_in21k': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                       mlp_ratio=4.0),
}


def model_config_from_slowfast(cfg: dict, backbone: dict = None) -> dict:
    """vtx `config.model` for an official SlowFast config (the nested dict of the YAML).

    `backbone` gives the timm VisionTransformer sizes; by default they come from `BACKBONES`.
    """
    xvit, head = cfg['XVIT'], cfg['TEMPORAL_HEAD']
    if backbone is None:
        if xvit['BASE_MODEL'] not in BACKBONES:
            raise ValueError(f"XVIT.BASE_MODEL={xvit['BASE_MODEL']!r} is not a known backbone "
                             f'({sorted(BACKBONES)}); pass its sizes')
        backbone = BACKBONES[xvit['BASE_MODEL']]
    if xvit.get('CONSENSUS_TYPE', 'vit') != 'vit':
        raise ValueError(f"XVIT.CONSENSUS_TYPE={xvit['CONSENSUS_TYPE']!r}: only the 'vit' temporal "
                         'head (every zoo model) is implemented')
    data = cfg['DATA']
    train_enabled = cfg.get('TRAIN', {}).get('ENABLE', cfg.get('TRAIN.ENABLE', True))
    test_only = cfg.get('TEST', {}).get('ENABLE', False) and not train_enabled
    dim = backbone['embed_dim']
    if head['HIDDEN_DIM'] != dim:
        raise ValueError(f"TEMPORAL_HEAD.HIDDEN_DIM={head['HIDDEN_DIM']} must equal the backbone "
                         f'width {dim}')
    return {
        'name': 'xvit',
        'num_classes': cfg['MODEL']['NUM_CLASSES'],
        'image_size': data['TEST_CROP_SIZE'] if test_only else data['TRAIN_CROP_SIZE'],
        'patch_size': backbone['patch_size'],
        'hidden_size': dim,
        'mlp_dim': int(dim * backbone['mlp_ratio']),
        'num_heads': backbone['num_heads'],
        'num_layers': backbone['depth'],
        'num_segments': xvit['NUM_SEGMENTS'],
        'shift_div': xvit['SHIFT_DIV'],
        'mixing_layers': tuple(i for i in xvit['LOCATIONS_LIST'] if i < backbone['depth']),
        'head_num_layers': head['NUM_HIDDEN_LAYERS'],
        'head_num_heads': head['NUM_ATTENTION_HEADS'],
        'head_mlp_dim': head['MLP_DIM'],
        'dropout_rate': cfg['MODEL']['DROPOUT_RATE'],
        'attention_dropout_rate': xvit.get('BACKBONE', {}).get('DROP_ATTN_RATE', 0.0),
        'drop_path_rate': xvit.get('BACKBONE', {}).get('DROP_PATH_RATE', 0.0),
    }


def model_config_from_manifest(manifest: dict) -> dict:
    """From a parity manifest (`config`, tiny backbone in `VisionTransformer_kwargs`) or a
    `parity/full/*.json` (`official_config`)."""
    official = manifest['config'] if 'config' in manifest else manifest['official_config']
    kwargs = official.get('VisionTransformer_kwargs')
    config = model_config_from_slowfast(official, kwargs)
    if kwargs is not None:  # the manifests record the image size the official model was built for
        config['image_size'] = kwargs['img_size']
    return config


def model_config_from_checkpoint(extras: dict):
    """From the YAML `cfg` an official SlowFast checkpoint carries; None when it has none."""
    if 'cfg' not in extras:
        return None
    import yaml
    return model_config_from_slowfast(yaml.safe_load(extras['cfg']))


# --------------------------------------------------------------------------- ImageNet init

XVIT_NAMES = dict(patch='patch_embed/proj', cls='cls_token', pos='pos_embed', norm='norm',
                  block='blocks_{i}', norm1='norm1', attn='attn', norm2='norm2', mlp='mlp')


def _fresh_head(model_config) -> dict:
    """The temporal head's initial values (the image model has none), from the vtx initialisers."""
    import jax
    import jax.numpy as jnp

    from vtx.models import build_model
    model = build_model(dict(model_config))
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros(example_input_shape(model_config))))()
    flat = engine.flatten_params(variables['params'])
    return {k: np.asarray(v) for k, v in flat.items() if k.startswith('temporal_head/')}


def example_input_shape(model_config) -> tuple:
    """The smallest clip the model accepts: whole shift groups and temporal-embedding periods."""
    c = dict(model_config)
    frames = math.lcm(c.get('num_segments', 8), c.get('temporal_embedding_size', 8))
    return (1, frames, c.get('image_size', 224), c.get('image_size', 224), 3)


def _init_from_image_model(source, image_table, model_config, abstract_params, log):
    fill = [(re.escape(path), (lambda v: lambda shape, dtype: v)(value),
             'temporal head: not in the image model, freshly initialised')
            for path, value in _fresh_head(model_config).items()]
    fill.append(('temp_embed', 'zeros', 'absent from the image model; the official init is zero'))
    table = ConversionTable(image_table.rules, image_table.ignore, fill)
    return engine.convert(source, table, abstract_params, log=log)


def import_npz(path: str, model_config, abstract_params, log=print):
    """ImageNet-21k ViT `.npz` -> XViT backbone (grid must already match: no resize)."""
    return _init_from_image_model(engine.load_checkpoint(path), imagenet_npz_table(XVIT_NAMES),
                                  model_config, abstract_params, log)


def import_timm_vit(path: str, model_config, abstract_params, log=print):
    """The timm `.pth` port of the in21k ViT (what the official training loads) -> XViT backbone."""
    table = ConversionTable(_backbone_rules(''), ignore=[
        (r'head\.(weight|bias)', 'ImageNet classifier, deleted by the official loader'),
        (r'pre_logits\.fc\.(weight|bias)', 'representation layer the official model drops')])
    return _init_from_image_model(engine.load_checkpoint(path), table, model_config,
                                  abstract_params, log)

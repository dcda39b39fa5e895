"""Video Swin (SwinTransformer/Video-Swin-Transformer, mmcv checkpoints) -> vtx `VideoSwin` params.

The official keys map 1:1 onto vtx module names (`backbone.layers.{i}.blocks.{j}.attn.qkv` ->
`layers_{i}/blocks_{j}/attn/qkv`); Linear weights are transposed, the Conv3d patch kernel goes
OIDHW -> DHWIO, and the int64 `relative_position_index` buffers are recomputed by the model.
"""
from vtx.convert import engine
from vtx.convert.engine import Rule

_BLOCK = r'backbone\.layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.'
_LAYER = r'backbone\.layers\.(?P<i>\d+)\.'

RULES = (
    Rule(r'backbone\.patch_embed\.proj\.weight', 'patch_embed/proj/kernel', 'conv3d'),
    Rule(r'backbone\.patch_embed\.proj\.bias', 'patch_embed/proj/bias'),
    Rule(r'backbone\.patch_embed\.norm\.weight', 'patch_norm/scale'),
    Rule(r'backbone\.patch_embed\.norm\.bias', 'patch_norm/bias'),
    Rule(_BLOCK + r'(?P<n>norm1|norm2)\.weight', 'layers_{i}/blocks_{j}/{n}/scale'),
    Rule(_BLOCK + r'(?P<n>norm1|norm2)\.bias', 'layers_{i}/blocks_{j}/{n}/bias'),
    Rule(_BLOCK + r'attn\.relative_position_bias_table',
         'layers_{i}/blocks_{j}/attn/relative_position_bias_table'),
    Rule(_BLOCK + r'(?P<m>attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.weight',
         lambda m: 'layers_{i}/blocks_{j}/' + m['m'].replace('.', '/') + '/kernel', 'linear'),
    Rule(_BLOCK + r'(?P<m>attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.bias',
         lambda m: 'layers_{i}/blocks_{j}/' + m['m'].replace('.', '/') + '/bias'),
    Rule(_LAYER + r'downsample\.norm\.weight', 'layers_{i}/downsample/norm/scale'),
    Rule(_LAYER + r'downsample\.norm\.bias', 'layers_{i}/downsample/norm/bias'),
    Rule(_LAYER + r'downsample\.reduction\.weight', 'layers_{i}/downsample/reduction/kernel',
         'linear'),
    Rule(r'backbone\.norm\.weight', 'norm/scale'),
    Rule(r'backbone\.norm\.bias', 'norm/bias'),
    Rule(r'cls_head\.fc_cls\.weight', 'head/kernel', 'linear'),
    Rule(r'cls_head\.fc_cls\.bias', 'head/bias'),
)
IGNORE = ((r'.*\.attn\.relative_position_index', 'int64 buffer, recomputed by the model'),)


def table(model_config=None) -> engine.ConversionTable:
    return engine.ConversionTable(rules=RULES, ignore=IGNORE)


def swin_fields(manifest: dict, family: str) -> dict:
    """vtx model fields shared by Video Swin and TPS from the official `Recognizer3D` config a
    parity manifest (`config`) or a `parity/full/*.json` (`official_config`) records."""
    official = manifest['config'] if 'config' in manifest else manifest['official_config']
    backbone, head = official['model']['backbone'], official['model']['cls_head']
    if backbone.get('qk_scale') is not None:
        raise ValueError(f"{family}: backbone.qk_scale={backbone['qk_scale']} is not supported "
                         '(every official config uses None = head_dim ** -0.5)')
    if head.get('spatial_type', 'avg') != 'avg':
        raise ValueError(f"{family}: cls_head.spatial_type={head['spatial_type']!r}; only 'avg' "
                         'exists')
    return {
        'name': family,
        'num_classes': int(manifest.get('num_classes', head['num_classes'])),
        'patch_size': tuple(backbone.get('patch_size', (4, 4, 4))),
        'embed_dim': int(backbone.get('embed_dim', 96)),
        'depths': tuple(backbone.get('depths', (2, 2, 6, 2))),
        'num_heads': tuple(backbone.get('num_heads', (3, 6, 12, 24))),
        'mlp_ratio': float(backbone.get('mlp_ratio', 4.0)),
        'qkv_bias': bool(backbone.get('qkv_bias', True)),
        'patch_norm': bool(backbone.get('patch_norm', False)),
        'dropout_rate': float(backbone.get('drop_rate', 0.0)),
        'attention_dropout_rate': float(backbone.get('attn_drop_rate', 0.0)),
        'drop_path_rate': float(backbone.get('drop_path_rate', 0.2)),
        'head_dropout_rate': float(head.get('dropout_ratio', 0.5)),
    }


def model_config_from_manifest(manifest: dict) -> dict:
    config = swin_fields(manifest, 'video_swin')
    official = manifest['config'] if 'config' in manifest else manifest['official_config']
    config['window_size'] = tuple(official['model']['backbone'].get('window_size', (2, 7, 7)))
    return config


def example_input_shape(model_config) -> tuple:
    return (1, 32, 224, 224, 3)  # the zoo clip: 32 frames of 224x224

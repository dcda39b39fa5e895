"""TokShift / video-ViT (VideoNetworks/TokShift-Transformer) -> `vtx.models.vit.VideoViT`.

Two sources:
  - the official training checkpoint (`{'state_dict': {'module.base_model....'}, 'optimizer', ...}`,
    keys as in `vit_models/modeling*.py`), see `table`;
  - the ImageNet-21k ViT `.npz` the official fine-tuning starts from (google-research layout),
    loaded as `VisionTransformer.load_from` does: zero head, position grid resized with
    align-corners bilinear interpolation (scipy `ndimage.zoom(order=1)`), see `import_npz`.
"""
import numpy as np

from vtx.convert.engine import ConversionTable, Rule

_P = r'base_model\.transformer\.'
_L = _P + r'encoder\.layer\.(?P<i>\d+)\.'

TABLE = ConversionTable(
    rules=[
        Rule(_P + r'embeddings\.patch_embeddings\.weight', 'patch_embed/proj/kernel', 'conv2d'),
        Rule(_P + r'embeddings\.patch_embeddings\.bias', 'patch_embed/proj/bias'),
        Rule(_P + r'embeddings\.cls_token', 'cls_token'),
        Rule(_P + r'embeddings\.position_embeddings', 'pos_embedding'),
        Rule(_L + r'(?P<ln>attention_norm|ffn_norm)\.weight', 'layer_{i}/{ln}/scale'),
        Rule(_L + r'(?P<ln>attention_norm|ffn_norm)\.bias', 'layer_{i}/{ln}/bias'),
        Rule(_L + r'attn\.(?P<p>query|key|value|out)\.weight', 'layer_{i}/attn/{p}/kernel',
             'linear'),
        Rule(_L + r'attn\.(?P<p>query|key|value|out)\.bias', 'layer_{i}/attn/{p}/bias'),
        Rule(_L + r'ffn\.(?P<fc>fc1|fc2)\.weight', 'layer_{i}/ffn/{fc}/kernel', 'linear'),
        Rule(_L + r'ffn\.(?P<fc>fc1|fc2)\.bias', 'layer_{i}/ffn/{fc}/bias'),
        Rule(_P + r'encoder\.encoder_norm\.weight', 'encoder_norm/scale'),
        Rule(_P + r'encoder\.encoder_norm\.bias', 'encoder_norm/bias'),
        Rule(r'base_model\.head\.weight', 'head/kernel', 'linear'),
        Rule(r'base_model\.head\.bias', 'head/bias'),
    ])


def table(model_config=None) -> ConversionTable:
    return TABLE


def model_config_from_manifest(manifest: dict) -> dict:
    """vtx `config.model` for the official yml + ViT config recorded in a parity manifest
    (`config`) or a `parity/full/*.json` (`official_config`)."""
    official = manifest['config'] if 'config' in manifest else manifest['official_config']
    yml, vit = official['yaml'], official['vit_config']
    config = {
        'name': 'vit',
        'num_classes': yml['NUM_CLASS'],
        'num_frames': yml['T_SIZE'],
        'image_size': official.get('vit_img_size', yml['VAL_PATCH_SIZE']),
        'patch_size': vit['patches.size'][0],
        'hidden_size': vit['hidden_size'],
        'mlp_dim': vit['transformer.mlp_dim'],
        'num_heads': vit['transformer.num_heads'],
        'num_layers': vit['transformer.num_layers'],
        'temporal': {'TokShift': 'token_shift', 'ViT': 'none'}[yml['NET']],
    }
    if yml['NET'] == 'TokShift':
        config['shift_div'] = yml['SHIFT_DIV']
    return config


# --------------------------------------------------------------------------- ImageNet-21k .npz

def resize_pos_embedding_align_corners(pe: np.ndarray, target_shapes) -> np.ndarray:
    """(1, 1 + g_old^2, D) -> (1, 1 + g_new^2, D): [CLS] entry kept, square grid resized with
    align-corners bilinear interpolation in float64 (what `scipy.ndimage.zoom(order=1)` computes),
    rounded to float32 once at the end."""
    (_, length, dim), = [tuple(s) for s in target_shapes]
    g_old, g_new = int(np.sqrt(pe.shape[1] - 1)), int(np.sqrt(length - 1))
    if g_old ** 2 != pe.shape[1] - 1 or g_new ** 2 != length - 1 or pe.shape[2] != dim:
        raise ValueError(f'position embedding {pe.shape} -> {(1, length, dim)}: both grids must be '
                         'square with the same width')
    if g_old == g_new:
        return pe
    grid = pe[0, 1:].reshape(g_old, g_old, dim).astype(np.float64)

    def along(x, axis):
        pos = np.arange(g_new) * ((g_old - 1) / (g_new - 1)) if g_new > 1 else np.zeros(1)
        lo = np.clip(np.floor(pos).astype(int), 0, g_old - 1)
        hi = np.minimum(lo + 1, g_old - 1)
        w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
        return np.take(x, lo, axis) * (1 - w) + np.take(x, hi, axis) * w

    grid = along(along(grid, 0), 1).astype(np.float32)
    return np.concatenate([pe[:, :1], grid.reshape(1, g_new * g_new, dim)], axis=1)


VIDEO_VIT_NAMES = dict(patch='patch_embed/proj', cls='cls_token', pos='pos_embedding',
                       norm='encoder_norm', block='layer_{i}', norm1='attention_norm', attn='attn',
                       norm2='ffn_norm', mlp='ffn')


def imagenet_npz_table(names: dict, pos_transform='reshape', fill=()) -> ConversionTable:
    """Rules for a google-research ViT `.npz` onto a per-frame ViT whose Flax names are `names`.

    Kernels are already in Flax layout; attention kernels/biases are stored per head and only
    reshaped. The ImageNet classifier and pre-logits are dropped; `fill` initialises the rest.
    """
    b, blk = names['block'], r'Transformer/encoderblock_(?P<i>\d+)/'
    attn, mlp = b + '/' + names['attn'], b + '/' + names['mlp']
    return ConversionTable(
        rules=[
            Rule(r'embedding/kernel', names['patch'] + '/kernel'),
            Rule(r'embedding/bias', names['patch'] + '/bias'),
            Rule(r'cls', names['cls']),
            Rule(r'Transformer/posembed_input/pos_embedding', names['pos'], pos_transform),
            Rule(r'Transformer/encoder_norm/(?P<p>scale|bias)', names['norm'] + '/{p}'),
            Rule(blk + r'LayerNorm_0/(?P<p>scale|bias)', b + '/' + names['norm1'] + '/{p}'),
            Rule(blk + r'LayerNorm_2/(?P<p>scale|bias)', b + '/' + names['norm2'] + '/{p}'),
            Rule(blk + r'MultiHeadDotProductAttention_1/(?P<q>query|key|value|out)/'
                 r'(?P<p>kernel|bias)', attn + '/{q}/{p}', 'reshape'),
            Rule(blk + r'MlpBlock_3/Dense_0/(?P<p>kernel|bias)', mlp + '/fc1/{p}'),
            Rule(blk + r'MlpBlock_3/Dense_1/(?P<p>kernel|bias)', mlp + '/fc2/{p}'),
        ],
        ignore=[(r'head/.*', 'ImageNet classifier: the video model starts from a zero head'),
                (r'pre_logits/.*', 'representation layer the video model does not have')],
        fill=fill)


def import_npz(path: str, model_config, abstract_params, log=print):
    """ImageNet-21k `.npz` -> VideoViT params exactly as the official `load_from` (zero head)."""
    from vtx.convert import engine
    return engine.convert(engine.load_checkpoint(path),
                          imagenet_npz_table(VIDEO_VIT_NAMES, resize_pos_embedding_align_corners,
                                             fill=[('head/(kernel|bias)', 'zeros',
                                                    'zero_head=True, as the official loader')]),
                          abstract_params, log=log)


def example_input_shape(model_config) -> tuple:
    c = dict(model_config)
    return (1, c['num_frames'], c.get('image_size', 224), c.get('image_size', 224), 3)

"""MViT / STTS-MViT (wangjk666/STTS `MViT/`, a SlowFast fork) checkpoints -> `vtx.models.mvit.MViT`.

SlowFast checkpoints hold `model_state` (no prefix) next to the YAML `cfg`. Official names map
onto vtx names with `.` -> `/`, `blocks.{i}` -> `blocks_{i}` and the MLP linears lifted to the
block (`mlp.fc1` -> `fc1`). Linear weights are transposed; the Conv3d stem goes OIDHW -> DHWIO and
the depthwise pooling convs [hd, 1, kT, kH, kW] -> [kT, kH, kW, 1, hd]. The STTS scorers
(`time_score_predictor.0` / `space_score_predictor.0`) map onto `time_selection` /
`space_selection`.
"""
from vtx.convert import engine
from vtx.convert.engine import Rule

_B = r'blocks\.(?P<i>\d+)\.'


def score_network_rules(source: str, target: str) -> list:
    """Rules for one official PredictorLG (`source` = regex prefix up to `score_network.`) onto
    `vtx.models.token_selection.ScorePredictor` at Flax path `target`."""
    layers = {r'in_conv\.1': 'in_fc', r'out_conv\.0': 'out_fc0', r'out_conv\.2': 'out_fc1',
              r'out_conv\.4': 'out_fc2'}
    rules = [Rule(source + r'in_conv\.0\.weight', target + '/norm/scale'),
             Rule(source + r'in_conv\.0\.bias', target + '/norm/bias')]
    for official, ours in layers.items():
        rules += [Rule(source + official + r'\.weight', f'{target}/{ours}/kernel', 'linear'),
                  Rule(source + official + r'\.bias', f'{target}/{ours}/bias')]
    return rules


RULES = [
    Rule(r'(?P<p>cls_token|pos_embed_spatial|pos_embed_temporal|pos_embed_class)', '{p}'),
    Rule(r'patch_embed\.proj\.weight', 'patch_embed/kernel', 'conv3d'),
    Rule(r'patch_embed\.proj\.bias', 'patch_embed/bias'),
    Rule(_B + r'(?P<n>norm1|norm2|attn\.norm_q|attn\.norm_k|attn\.norm_v)\.weight',
         lambda m: 'blocks_{i}/' + m['n'].replace('.', '/') + '/scale'),
    Rule(_B + r'(?P<n>norm1|norm2|attn\.norm_q|attn\.norm_k|attn\.norm_v)\.bias',
         lambda m: 'blocks_{i}/' + m['n'].replace('.', '/') + '/bias'),
    Rule(_B + r'attn\.(?P<p>pool_q|pool_k|pool_v)\.weight', 'blocks_{i}/attn/{p}/kernel', 'conv3d'),
    Rule(_B + r'(?P<m>attn\.qkv|attn\.proj|proj|mlp\.fc1|mlp\.fc2)\.weight',
         lambda m: 'blocks_{i}/' + m['m'].replace('mlp.', '').replace('.', '/') + '/kernel',
         'linear'),
    Rule(_B + r'(?P<m>attn\.qkv|attn\.proj|proj|mlp\.fc1|mlp\.fc2)\.bias',
         lambda m: 'blocks_{i}/' + m['m'].replace('mlp.', '').replace('.', '/') + '/bias'),
    Rule(r'norm\.weight', 'norm/scale'),
    Rule(r'norm\.bias', 'norm/bias'),
    Rule(r'head\.projection\.weight', 'head/kernel', 'linear'),
    Rule(r'head\.projection\.bias', 'head/bias'),
    *score_network_rules(r'time_score_predictor\.0\.score_network\.',
                         'time_selection/score_network'),
    *score_network_rules(r'space_score_predictor\.0\.score_network\.',
                         'space_selection/score_network'),
]


def table(model_config=None) -> engine.ConversionTable:
    return engine.ConversionTable(rules=RULES)


def _single_location(mvit: dict, which: str):
    """(block, ratio) of the one selection stage `which` ('TIME'/'SPACE'), or (None, 1.0)."""
    locs = mvit.get(f'{which}_PRUNING_LOC')
    if not locs:
        return None, 1.0
    ratios = mvit[f'{which}_LEFT_RATIO']
    if len(locs) != 1 or len(ratios) != 1:
        raise ValueError(f'MVIT.{which}_PRUNING_LOC={locs}: vtx supports one {which.lower()} '
                         'selection stage (every STTS config has one)')
    return int(locs[0]), float(ratios[0])


def model_config_from_slowfast(mvit: dict, data: dict, model: dict) -> dict:
    """vtx `config.model` from the SlowFast cfg sections MVIT, DATA and MODEL."""
    required = {'MODE': 'conv', 'POOL_FIRST': False, 'CLS_EMBED_ON': True, 'SEP_POS_EMBED': True,
                'NORM_STEM': False, 'PATCH_2D': False, 'NORM': 'layernorm'}
    for key, value in required.items():
        if mvit.get(key, value) != value:
            raise ValueError(f'MVIT.{key}={mvit[key]!r} is not supported (vtx MViT implements '
                             f'{key}={value!r}, as every MViT-B / STTS config)')
    if mvit.get('POOL_KV_STRIDE_ADAPTIVE') is None or mvit.get('POOL_KVQ_KERNEL') is None:
        raise ValueError('MVIT.POOL_KV_STRIDE_ADAPTIVE and MVIT.POOL_KVQ_KERNEL must be set '
                         '(explicit per-block POOL_KV_STRIDE lists are not supported)')
    for key, score in (('TIME_SCORE', 'tpool'), ('SPACE_SCORE', 'spatch')):
        if mvit.get(key, score) != score:
            raise ValueError(f'MVIT.{key}={mvit[key]!r}: only {score!r} is implemented')
    time_loc, time_ratio = _single_location(mvit, 'TIME')
    space_loc, space_ratio = _single_location(mvit, 'SPACE')
    if data['TRAIN_CROP_SIZE'] != data.get('TEST_CROP_SIZE', data['TRAIN_CROP_SIZE']):
        raise ValueError('DATA.TRAIN_CROP_SIZE != DATA.TEST_CROP_SIZE: the official model sizes '
                         'its position embeddings from TRAIN_CROP_SIZE and cannot test at another '
                         'size')
    return {
        'name': 'mvit',
        'num_classes': int(model['NUM_CLASSES']),
        'num_frames': int(data['NUM_FRAMES']),
        'image_size': int(data['TRAIN_CROP_SIZE']),
        'embed_dim': int(mvit['EMBED_DIM']),
        'num_heads': int(mvit['NUM_HEADS']),
        'depth': int(mvit['DEPTH']),
        'mlp_ratio': float(mvit['MLP_RATIO']),
        'qkv_bias': bool(mvit['QKV_BIAS']),
        'patch_kernel': tuple(mvit['PATCH_KERNEL']),
        'patch_stride': tuple(mvit['PATCH_STRIDE']),
        'patch_padding': tuple(mvit['PATCH_PADDING']),
        'dim_mul': tuple((int(i), float(m)) for i, m in mvit['DIM_MUL']),
        'head_mul': tuple((int(i), float(m)) for i, m in mvit['HEAD_MUL']),
        'pool_q_stride': tuple(tuple(int(v) for v in s) for s in mvit['POOL_Q_STRIDE']),
        'pool_kvq_kernel': tuple(mvit['POOL_KVQ_KERNEL']),
        'pool_kv_stride_adaptive': tuple(mvit['POOL_KV_STRIDE_ADAPTIVE']),
        'drop_path_rate': float(mvit['DROPPATH_RATE']),
        'dropout_rate': float(model['DROPOUT_RATE']),
        'time_pruning_loc': time_loc,
        'time_left_ratio': time_ratio,
        'space_pruning_loc': space_loc,
        'space_left_ratio': space_ratio,
        'selection_sigma': float(mvit.get('SIGMA', 0.05)),
        'selection_sigma_decay': bool(mvit.get('DECAY_SIGMA', True)),
    }


def model_config_from_manifest(manifest: dict) -> dict:
    """From a parity case (`config.resolved_MVIT`, ...) or a `parity/full/MViT*.json`."""
    if 'official_config' in manifest:
        cfg = manifest['official_config']['merged_cfg']
        return model_config_from_slowfast(cfg['MVIT'], cfg['DATA'], cfg['MODEL'])
    config = manifest['config']
    return model_config_from_slowfast(config['resolved_MVIT'], config['resolved_DATA_sizes'],
                                      config['MODEL'])


def example_input_shape(model_config) -> tuple:
    config = dict(model_config)
    return (1, config.get('num_frames', 16), config.get('image_size', 224),
            config.get('image_size', 224), 3)

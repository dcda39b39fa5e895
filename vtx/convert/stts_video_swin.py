"""STTS on Video Swin (wangjk666/STTS `VideoSwin/`, mmcv checkpoints) -> vtx `VideoSwin` with
`time_left_ratio` set (model name 'stts_video_swin').

The backbone and head keys are those of Video Swin (`convert.video_swin`); the temporal scorer
`backbone.time_score_predictor.0` maps onto `time_selection`.
"""
from vtx.convert import engine, video_swin
from vtx.convert.mvit import score_network_rules

RULES = (*video_swin.RULES,
         *score_network_rules(r'backbone\.time_score_predictor\.0\.score_network\.',
                              'time_selection/score_network'))


def table(model_config=None) -> engine.ConversionTable:
    return engine.ConversionTable(rules=RULES, ignore=video_swin.IGNORE)


def model_config_from_manifest(manifest: dict) -> dict:
    """From a parity case (`config` = {backbone, cls_head, test_cfg}) or a `parity/full` entry
    (`official_config.model`)."""
    official = manifest['config'] if 'config' in manifest else manifest['official_config']
    model = official.get('model', official)
    backbone = model['backbone']
    locs, ratios = backbone.get('time_pruning_loc'), backbone.get('time_left_ratio')
    if locs != [0] or not ratios or len(ratios) != 1:
        raise ValueError(f'STTS Video Swin: backbone.time_pruning_loc={locs}, time_left_ratio='
                         f'{ratios}; vtx supports the zoo placement [0] with one ratio')
    if backbone.get('time_score', 'tpool') != 'tpool':
        raise ValueError(f"STTS Video Swin: backbone.time_score={backbone['time_score']!r}; only "
                         "'tpool' is implemented")
    config = video_swin.swin_fields({'config': {'model': model},
                                     'num_classes': manifest.get('num_classes',
                                                                 model['cls_head']['num_classes'])},
                                    'stts_video_swin')
    config['window_size'] = tuple(backbone.get('window_size', (2, 7, 7)))
    config['time_left_ratio'] = float(ratios[0])
    config['num_frames'] = int(backbone.get('num_frames', 32))
    return config


def example_input_shape(model_config) -> tuple:
    return (1, dict(model_config).get('num_frames', 32), 224, 224, 3)

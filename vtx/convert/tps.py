"""TPS (MartinXM/TPS, mmcv checkpoints) -> vtx `TPS` params: Video Swin's key map, plus the second
int64 index buffer (`relative_position_index_old`) the TPS blocks store."""
from vtx.convert import engine, video_swin
from vtx.models.tps import FRAME_TOKENS

IGNORE = video_swin.IGNORE + (
    (r'.*\.attn\.relative_position_index_old', 'int64 buffer, recomputed by the model'),)


def table(model_config=None) -> engine.ConversionTable:
    return engine.ConversionTable(rules=video_swin.RULES, ignore=IGNORE)


def model_config_from_manifest(manifest: dict) -> dict:
    official = manifest['config'] if 'config' in manifest else manifest['official_config']
    window = tuple(official['model']['backbone'].get('window_size', (1, 7, 7)))
    if window != (1, 7, 7):
        raise ValueError(f'tps: backbone.window_size={window}; the official TPS runs only with '
                         '(1, 7, 7)')
    config = video_swin.swin_fields(manifest, 'tps')
    # The clip length the official model accepts (it runs only with 16 frame tokens).
    config['num_frames'] = FRAME_TOKENS * config['patch_size'][0]
    return config


def example_input_shape(model_config) -> tuple:
    return (1, model_config['num_frames'], 224, 224, 3)

"""Official test-pipeline parity: `python -m convert.verify_pipeline CASE_DIR... [--json]`.

A case (`shared/parity/pipelines/<case>/`) is the official test pipeline run on a small video:
`manifest.json` (settings in the official code's own terms), the video in the form the official
loader reads (video file, XViT `.h5` of JPEGs, TokShift frame folder), `frame_indices.json`,
`views.npy` and, where a tiny official model took the views, `scores.npy`. This runs the vtx
protocol the manifest describes on the same input and prints one JSON line: frame-index equality,
the largest view error, and the score error (the case's official checkpoint converted, the views
run through it and aggregated as the protocol says). Exits 0 only if all are within the
manifest's tolerances (scores: 1e-4).
"""
import argparse
import json
import os
import re
import sys

import numpy as np

from vtx.data import protocols, video_sources

SCORE_ATOL = 1e-4


def view_tolerance(manifest: dict) -> float:
    """The manifest's view atol (the first 'atol X' of its sentence; 1e-5 if it names none)."""
    match = re.search(r'atol\s*([0-9.eE+-]+)', manifest.get('tolerance', {}).get('views', ''))
    return float(match.group(1)) if match else 1e-5


def _mmaction(manifest):
    steps = {p['type']: p for p in manifest['pipeline']['test_pipeline']}
    sample, norm = steps['SampleFrames'], steps['Normalize']
    crop = steps.get('ThreeCrop') or steps['CenterCrop']
    uniform = bool(sample.get('frame_uniform'))
    return protocols.Settings(
        'mmaction', sample['clip_len'], sample['frame_interval'], uniform,
        1 if uniform else sample['num_clips'],
        3 if 'ThreeCrop' in steps else 1, steps['Resize']['scale'][1], crop['crop_size'],
        tuple(m / 255 for m in norm['mean']), tuple(v / 255 for v in norm['std']))


def _slowfast(manifest):
    cfg = manifest['pipeline']['cfg']
    data, test = cfg['DATA'], cfg['TEST']
    crops = test['NUM_SPATIAL_CROPS']
    stts = data.get('DECODING_BACKEND') == 'pyav' or data.get('USE_OFFSET_SAMPLING')
    # With one spatial crop SlowFast tests at the first train jitter scale, else at the crop size.
    short = data['TRAIN_JITTER_SCALES'][0] if crops == 1 else data['TEST_CROP_SIZE']
    return protocols.Settings(
        'slowfast_stts' if stts else 'slowfast_xvit', data['NUM_FRAMES'], data['SAMPLING_RATE'],
        manifest['pipeline']['dataset'] == 'Ssv2', test['NUM_ENSEMBLE_VIEWS'], crops, short,
        data['TEST_CROP_SIZE'], tuple(data['MEAN']), tuple(data['STD']),
        float(data.get('TARGET_FPS', 30)))


def _tokshift(manifest):
    cfg = manifest['pipeline']['cfg']
    return protocols.Settings(
        'tokshift', cfg['T_SIZE'], cfg['T_STEP'], cfg['DENSE_OR_UNIFORM'] == 'uniform',
        cfg['VAL_SAMPLE_TIMES'], cfg['VAL_TEST_AUG'], cfg['VAL_SHORT_SIDE'],
        cfg['VAL_PATCH_SIZE'], tuple(m / 255 for m in cfg['PIXEL_MEAN']), tuple(cfg['PIXEL_STD']))


SETTINGS = {'A': _mmaction, 'B': _slowfast, 'C': _slowfast, 'D': _tokshift}


def case_settings(manifest: dict) -> protocols.Settings:
    """The protocol settings a case's manifest records (`kind` starts with the spec's letter)."""
    return SETTINGS[manifest['kind'][0]](manifest)


def case_input(case_dir: str, manifest: dict, s: protocols.Settings):
    """(path, frame count of the official list or None): the case's input in the form the
    official loader read it (TokShift frame folder, XViT .h5, else the video file)."""
    if s.protocol == 'tokshift':
        with open(os.path.join(case_dir, 'frames', 'val.txt')) as f:
            folder, count, _ = f.read().split()
        return os.path.join(case_dir, 'frames', folder), int(count)
    if s.protocol == 'slowfast_xvit':
        return os.path.join(case_dir, manifest['outputs']['frames_h5']), None
    return os.path.join(case_dir, manifest['video']['file']), None


def official_views(case_dir: str, manifest: dict) -> np.ndarray:
    """The case's views.npy in vtx's layout [V, T, H, W, C]."""
    views = manifest['outputs']['views']
    return views_to_vtx_layout(np.load(os.path.join(case_dir, views['file'])), views['layout'])


def official_indices(case_dir: str) -> list:
    """Per-view-clip 0-based frame numbers from frame_indices.json, one list per temporal clip."""
    with open(os.path.join(case_dir, 'frame_indices.json')) as f:
        data = json.load(f)
    if 'clips' in data:
        return data['clips']
    if 'clips_file_numbers' in data:  # TokShift's 1-based file numbers
        return [[n - 1 for n in clip] for clip in data['clips_file_numbers']]
    clips = {}
    for view in data['per_view']:
        clips.setdefault(view['temporal_sample_index'], view['frame_indices'])
    return [clips[t] for t in sorted(clips)]


def views_to_vtx_layout(views: np.ndarray, layout: str) -> np.ndarray:
    """Official views [V, C, T, H, W] or [V, T, C, H, W] (manifest layout) -> [V, T, H, W, C]."""
    axes = [a.strip() for a in layout[layout.index('[') + 1:layout.index(']')].split(',')][-4:]
    perm = (0, 2, 3, 4, 1) if axes[0] == 'C' else (0, 1, 3, 4, 2)
    return np.ascontiguousarray(views.transpose(perm))


def scoring_model(checkpoint: str, log=None):
    """(jitted apply, params) of an official parity checkpoint, from its case's manifest."""
    import jax.numpy as jnp

    from vtx import steps
    from vtx.convert import engine, families
    from vtx.models import build_model

    with open(os.path.join(os.path.dirname(checkpoint), 'manifest.json')) as f:
        parity = json.load(f)
    model_config = dict(families.converter(parity['family']).model_config_from_manifest(parity))
    model = build_model(model_config)
    shape = parity['input']['shape']
    example = jnp.zeros((1, shape[2], shape[3], shape[4], shape[1]), jnp.float32)
    abstract = engine.abstract_params_of(model, example, train=False)
    params = families.convert_checkpoint(parity['family'], checkpoint, model_config, abstract,
                                         log=log)
    return steps.jit_forward(lambda p, v: model.apply({'params': p}, v, train=False)), params


def resolve_checkpoint(case_dir: str, named: str) -> str:
    """A manifest's 'shared/parity/cases/<case>/checkpoint.pth' from the folder holding shared/."""
    shared = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(case_dir))))
    return os.path.join(os.path.dirname(shared), named.split(' ')[0])


def verify_case(case_dir: str, models=None, log=None) -> dict:
    """Runs one pipeline case; returns the result the CLI prints. `models` caches the converted
    checkpoints by path across calls."""
    with open(os.path.join(case_dir, 'manifest.json')) as f:
        manifest = json.load(f)
    s = case_settings(manifest)
    path, num_frames = case_input(case_dir, manifest, s)
    video = video_sources.open_video(path, s.protocol, num_frames)
    indices, views = protocols.video_views(video, s)
    expected = official_indices(case_dir)
    outputs = manifest['outputs']
    ref = official_views(case_dir, manifest)
    view_err = float(np.abs(views - ref).max()) if views.shape == ref.shape else float('inf')
    view_atol = view_tolerance(manifest)
    result = {'case': manifest.get('case', os.path.basename(os.path.normpath(case_dir))),
              'protocol': s.protocol,
              'indices_equal': [list(map(int, c)) for c in indices] == expected,
              'views_max_abs_err': view_err, 'views_atol': view_atol}
    passed = result['indices_equal'] and view_err <= view_atol
    if 'scores' in outputs:
        checkpoint = resolve_checkpoint(case_dir, outputs['scores']['checkpoint'])
        models = {} if models is None else models
        if checkpoint not in models:
            models[checkpoint] = scoring_model(checkpoint, log)
        apply, params = models[checkpoint]
        logits = np.asarray(apply(params, views))
        score = protocols.aggregate(logits, s.protocol)[None]
        ref_score = np.load(os.path.join(case_dir, outputs['scores']['file']))
        result['scores_max_abs_err'] = float(np.abs(score - ref_score).max())
        passed = passed and result['scores_max_abs_err'] <= SCORE_ATOL
    result['passed'] = bool(passed)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('case_dirs', nargs='+', metavar='CASE_DIR')
    parser.add_argument('--json', action='store_true',
                        help='print only the JSON lines (no conversion report)')
    args = parser.parse_args(argv)
    models, failed = {}, 0
    for case_dir in args.case_dirs:  # one line per case; a checkpoint is converted once
        result = verify_case(case_dir, models, log=None if args.json else print)
        print(json.dumps(result), flush=True)
        failed += not result['passed']
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

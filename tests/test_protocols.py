"""Official test pipelines: every case under VTX_PIPELINE_CASES (default
../shared/parity/pipelines) gives the official frame indices, views and scores; a zoo config
evaluated from the case's files (CSV) and from shards that keep them gives the official views."""
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(REPO, os.environ.get('VTX_PIPELINE_CASES', '../shared/parity/pipelines'))
# The zoo config whose paper each protocol comes from.
ZOO = {'mmaction': 'swin_tiny_patch244_window877_kinetics400_1k',
       'slowfast_xvit': 'xvit_k400', 'slowfast_stts': 'mvit_b_16x4_k400',
       'tokshift': 'tokshift_b16_224_8f'}
_MODELS = {}  # converted official checkpoints, shared by the cases


def _case_dirs():
    if not os.path.isdir(CASES):
        return []
    return sorted(d for d in os.listdir(CASES)
                  if os.path.isfile(os.path.join(CASES, d, 'manifest.json')))


def _manifest(case):
    with open(os.path.join(CASES, case, 'manifest.json')) as f:
        return json.load(f)


def test_cases_found():
    assert _case_dirs(), f'no pipeline cases (folders with manifest.json) under {CASES}'


@pytest.mark.parametrize('case', _case_dirs())
def test_official_pipeline(case):
    from convert.verify_pipeline import verify_case
    result = verify_case(os.path.join(CASES, case), models=_MODELS)
    assert result['indices_equal'], f'{case}: {json.dumps(result)}'
    assert result['views_max_abs_err'] <= result['views_atol'], f'{case}: {json.dumps(result)}'
    assert result.get('scores_max_abs_err', 0.0) <= 1e-4, f'{case}: {json.dumps(result)}'


def _zoo_config(s):
    """The protocol's zoo config with the case's (scaled-down) settings."""
    from vtx import config
    c = config.load(ZOO[s.protocol])
    c.data.update({'num_frames': s.num_frames, 'stride': s.stride,
                   'sampling': 'uniform' if s.uniform else 'dense',
                   'eval_num_clips': s.num_clips, 'eval_num_crops': s.num_crops,
                   'min_resize': s.short_side, 'crop_size': s.crop_size,
                   'zero_centering': False, 'normalization_mean': s.mean,
                   'normalization_std': s.std, 'num_classes': 7, 'eval_workers': 1})
    return c


def test_zoo_configs_from_files_and_kept_shards_give_the_official_views(tmp_path):
    from convert import verify_pipeline
    from vtx.data import pipeline, shards

    cases = _case_dirs()
    inputs = {}
    for case in cases:
        manifest = _manifest(case)
        s = verify_pipeline.case_settings(manifest)
        inputs[case] = (manifest, s, *verify_pipeline.case_input(os.path.join(CASES, case),
                                                                  manifest, s))
    rows = [shards.Row(source=path, label_index=0, max_frames=count)
            for _, _, path, count in inputs.values()]
    built = shards.build(rows, str(tmp_path / 'kept'), 'val',
                         shards.EncodeSettings(short_side=0, keep_video=True),
                         num_shards=len(rows), workers=1)
    for case, shard in zip(cases, built):  # row r goes to shard r
        manifest, s, path, count = inputs[case]
        official = verify_pipeline.official_views(os.path.join(CASES, case), manifest)
        atol = verify_pipeline.view_tolerance(manifest)
        listing = tmp_path / f'{case}.csv'
        listing.write_text(f'path,label,num_frames\n{path},3,{count or ""}\n')
        for source in ({'eval_videos': str(listing)}, {'eval_shards': shard}):
            c = _zoo_config(s)
            c.data.update(source)
            (batch,) = list(pipeline.eval_batches(c.data, global_batch_size=2))
            assert batch['mask'].tolist() == [True, False]
            np.testing.assert_allclose(batch['image'][0], official, rtol=0, atol=atol,
                                       err_msg=f'{case} from {source}')


def test_unknown_protocol_and_dmvr_with_video_list_are_one_line_errors(tmp_path):
    from vtx import config
    from vtx.data import pipeline
    from vtx.errors import VtxError

    c = config.load('xvit_k400')
    c.data.test_protocol = 'mmaction2'
    with pytest.raises(VtxError, match=r"test_protocol='mmaction2': expected one of dmvr"):
        next(pipeline.eval_batches(c.data, global_batch_size=1))
    c.data.update({'test_protocol': 'dmvr', 'eval_videos': str(tmp_path / 'val.csv')})
    with pytest.raises(VtxError, match='eval_videos needs one of the official protocols'):
        next(pipeline.eval_batches(c.data, global_batch_size=1))
    c.data.test_protocol = 'slowfast_xvit'
    with pytest.raises(VtxError, match='val.csv'):
        next(pipeline.eval_batches(c.data, global_batch_size=1))

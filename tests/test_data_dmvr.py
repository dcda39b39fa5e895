"""DMVR parity: vtx's eval pipeline reads DMVR's own shards into exactly DMVR's clips.

Every setting in `reader.json` and every example of the fixture folder given by
VTX_DMVR_FIXTURES (default ../shared/dmvr) is checked against DMVR's saved output.
"""
import json
import os

import numpy as np
import pytest

from vtx import config as vtx_config
from vtx.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, os.environ.get('VTX_DMVR_FIXTURES', '../shared/dmvr'))
TOLERANCE = 1 / 255  # the task's bound; the spec says 0.0 is achievable and we see 0.0


def _reader():
    path = os.path.join(FIXTURES, 'reader.json')
    if not os.path.isfile(path):
        pytest.fail(f'no DMVR fixtures at {FIXTURES} (set VTX_DMVR_FIXTURES)')
    with open(path) as f:
        return json.load(f)


READER = _reader()


def _data_config(settings):
    c = vtx_config.defaults().data
    c.eval_shards = ','.join(os.path.join(FIXTURES, s) for s in READER['shards'])
    c.num_classes = len(READER['label_map'])
    c.num_frames = settings['num_frames']
    c.stride = settings['stride']
    c.eval_num_clips = settings['num_test_clips']
    c.eval_num_crops = 1
    c.min_resize = settings['min_resize']
    c.crop_size = settings['crop_size']
    c.zero_centering = settings['zero_centering_image']
    c.normalization_mean = tuple(np.broadcast_to(settings['normalization_mean'], 3).tolist())
    c.normalization_std = tuple(np.broadcast_to(settings['normalization_std'], 3).tolist())
    return c


@pytest.mark.parametrize('config', READER['configs'], ids=lambda c: c['name'])
def test_eval_pipeline_matches_dmvr(config):
    folder = os.path.join(FIXTURES, config['folder'])
    with open(os.path.join(folder, 'labels.json')) as f:
        examples = json.load(f)['examples']
    # eval_batches reads shards in sorted order and records in file order.
    by_position = {(e['shard'], e['record_in_shard']): e for e in examples}
    positions = sorted(by_position)
    data = _data_config(config['dmvr_add_image'])
    views, labels = [], []
    for batch in pipeline.eval_batches(data, global_batch_size=4):
        views.extend(batch['image'][batch['mask']])
        labels.extend(batch['label'][batch['mask']])
    assert len(views) == len(positions) == READER['num_examples']
    worst = 0.0
    for clip, label, position in zip(views, labels, positions):
        example = by_position[position]
        expected = np.load(os.path.join(folder, example['file']))
        if expected.ndim == 4:  # single clip: DMVR gives [n, c, c, 3]; vtx gives V=1 views
            expected = expected[None]
        assert clip.shape == expected.shape, example['file']
        assert label == example['label'], example['file']
        err = float(np.abs(clip - expected).max())
        worst = max(worst, err)
        assert err <= TOLERANCE, f"{config['name']} {example['file']}: max abs err {err}"
    print(f"{config['name']}: max_abs_err {worst}")

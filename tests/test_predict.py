"""vtx.predict: video files -> top-k classes, with a trained workdir or a converted checkpoint.

End to end: the demo trains a few steps, its workdir classifies synthetic mp4s (PyAV-encoded
here), the views predict builds equal the eval pipeline's views of a shard built from the same
video, and the workdir exports and reloads in a fresh process. A converted official TokShift
parity case reproduces its official logits through predict's loading path.
"""
import fractions
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from conftest import REPO, demo_cli, tiny_demo_config

TINY_MODEL = ['--config.model.hidden_size=32', '--config.model.mlp_dim=64',
              '--config.model.num_layers=2']
CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))


def write_motion_mp4(path, label, size=(32, 32), num_frames=16, fps=10, seed=0):
    """An mp4 of the demo's motion task: a square moving in direction CLASSES[label]."""
    from vtx.data import synthetic
    height, width = size
    spec = synthetic.MotionSpec(frame_size=max(size), num_frames=num_frames)
    video = synthetic.make_video(spec, label, np.random.default_rng(seed))[:, :height, :width]
    with av.open(path, 'w') as container:
        stream = container.add_stream('mpeg4', rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def tiny_config(data_dir, **overrides):
    """The config the trained workdir was made with (demo_cli's model), as an object."""
    return tiny_demo_config(data_dir, **{'model.drop_path_rate': 0.1, **overrides})


@pytest.fixture(scope='module')
def workdir(demo_data_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp('predict') / 'run')
    result = subprocess.run(demo_cli(demo_data_dir, path, '--config.train.num_steps=4',
                                     '--config.train.checkpoint_every_steps=2'),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return path


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp('videos')
    good = [write_motion_mp4(str(root / f'{name}.mp4'), label, seed=label)
            for label, name in enumerate(('left', 'right', 'up'))]
    bad = root / 'broken.mp4'
    bad.write_bytes(b'\x00 not a video' * 40)
    return good, str(bad)


def test_cli_classifies_videos_and_names_the_broken_one(workdir, videos, tmp_path):
    good, bad = videos
    labels = tmp_path / 'names.txt'
    labels.write_text('left\nright\nup\ndown\n')
    result = run(['-m', 'vtx.predict', '--config', 'configs/demo.py', f'--checkpoint={workdir}',
                  *TINY_MODEL, '--config.data.eval_num_clips=2', '--config.data.eval_num_crops=3',
                  '--json', '--top_k=4', '--batch_size=2', f'--labels={labels}',
                  good[0], bad, good[1], good[2]])
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'broken.mp4' in result.stderr
    out = json.loads(result.stdout)
    assert [p['video'] for p in out['predictions']] == good
    assert [f['video'] for f in out['failed']] == [bad]
    for p in out['predictions']:
        scores = [t['score'] for t in p['top_k']]
        assert scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-5  # all 4 classes: probabilities
        assert sorted(t['class'] for t in p['top_k']) == [0, 1, 2, 3]
        assert all(t['label'] == ['left', 'right', 'up', 'down'][t['class']] for t in p['top_k'])

    text = run(['-m', 'vtx.predict', '--config', 'configs/demo.py', f'--checkpoint={workdir}',
                *TINY_MODEL, '--top_k=2', good[0]])
    assert text.returncode == 0, text.stderr[-3000:]
    lines = text.stdout.strip().splitlines()
    assert lines[0] == good[0] and len(lines) == 3 and lines[1].split()[1] == 'class'


def test_views_equal_the_eval_pipeline_on_a_shard_of_the_same_video(tmp_path):
    """predict builds the record a shard builder writes and runs the eval view construction on
    it: bit-identical views, here with fps resampling, scaling and 2 clips x 3 crops."""
    from vtx.data import build_from_list
    from vtx import predict
    from vtx.data import pipeline
    write_motion_mp4(str(tmp_path / 'clip.mp4'), 1, size=(40, 56), num_frames=24, fps=15)
    (tmp_path / 'list.txt').write_text('clip.mp4 1\n')
    shards = build_from_list.main(['--list', str(tmp_path / 'list.txt'), '--video_root',
                                   str(tmp_path), '--output_dir', str(tmp_path / 'shards'),
                                   '--fps', '10', '--short_side', '36', '--qscale', '3',
                                   '--workers', '1'])
    c = tiny_config(str(tmp_path), **{
        'data.eval_shards': shards[0], 'data.eval_num_clips': 2, 'data.eval_num_crops': 3,
        'data.min_resize': 34, 'data.stride': 2, 'data.normalization_mean': (0.1, 0.2, 0.3)})
    c.data.shard_fps, c.data.shard_short_side, c.data.shard_qscale = 10.0, 36, 3
    expected = next(pipeline.eval_batches(c.data, global_batch_size=1))['image'][0]
    views = predict.video_views(str(tmp_path / 'clip.mp4'), c.data)
    assert views.shape == (6, 8, 16, 16, 3)
    np.testing.assert_array_equal(views, expected)
    c.data.shard_fps = 0.0  # the native 15 fps gives other frames
    assert not np.array_equal(predict.video_views(str(tmp_path / 'clip.mp4'), c.data), expected)


@pytest.mark.parametrize('aggregation', ['logits', 'probs'])
def test_batched_probabilities_aggregate_each_video_alone(workdir, demo_data_dir, aggregation):
    from vtx import predict
    c = tiny_config(demo_data_dir, **{'data.eval_aggregation': aggregation})
    predictor = predict.Predictor(c, workdir)
    rng = np.random.default_rng(0)
    d = c.data
    views = [rng.normal(size=(3, d.num_frames, d.crop_size, d.crop_size, 3)).astype(np.float32)
             for _ in range(3)]
    probs = predictor.probabilities(views, batch_size=2)  # batches of 2, the last padded
    for video, row in zip(views, probs):
        logits = np.stack([predictor.logits(view[None])[0] for view in video]).astype(np.float64)
        soft = np.exp(logits - logits.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        if aggregation == 'probs':
            expected = soft.mean(0)
        else:
            mean = logits.mean(0)
            expected = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-5)


def test_workdir_gives_the_params_of_its_newest_checkpoint(workdir, demo_data_dir):
    import jax
    import orbax.checkpoint as ocp
    from vtx import predict
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
    assert steps[-1] == 4 and len(steps) > 1
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(workdir, 'checkpoints', '4', 'default'))
    predictor = predict.Predictor(tiny_config(demo_data_dir), workdir)
    ours = jax.tree_util.tree_leaves_with_path(predictor.params)
    theirs = dict(jax.tree_util.tree_leaves_with_path(state['params']))
    assert len(ours) == len(theirs)
    for path, value in ours:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(theirs[path]))


def test_checkpoint_of_another_model_is_refused(workdir, demo_data_dir, videos):
    from vtx import predict
    from vtx.errors import VtxError
    with pytest.raises(VtxError, match=r'does not fit the configured model: missing .*layer_2'):
        predict.Predictor(tiny_config(demo_data_dir, **{'model.num_layers': 3}), workdir)
    result = run(['-m', 'vtx.predict', '--config', 'configs/demo.py', f'--checkpoint={workdir}',
                  '--config.model.hidden_size=32', videos[0][0]])
    assert result.returncode == 2 and 'vtx-predict: error:' in result.stderr, result.stderr[-2000:]
    warned = []
    predict.Predictor(tiny_config(demo_data_dir, **{'model.shift_div': 8}), workdir,
                      warn=warned.append)  # same params, another model: allowed, but said
    assert len(warned) == 1 and 'shift_div: checkpoint 4, config 8' in warned[0]


def test_trained_workdir_exports_and_reloads_in_a_fresh_process(workdir, demo_data_dir, videos,
                                                                tmp_path):
    from vtx import predict
    out = str(tmp_path / 'exported')
    result = run(['-m', 'vtx.export', '--config', 'configs/demo.py', f'--checkpoint={workdir}',
                  *TINY_MODEL, '--format=stablehlo', f'--out={out}'])
    assert result.returncode == 0, result.stderr[-3000:]
    c = tiny_config(demo_data_dir)
    clips = np.concatenate([predict.video_views(v, c.data) for v in videos[0]])
    np.save(tmp_path / 'clips.npy', clips)
    code = ('import sys, numpy as np; from vtx import export; '
            'f = export.load_stablehlo(sys.argv[1]); '
            'np.save(sys.argv[3], np.asarray(f.call(np.load(sys.argv[2]))))')
    reload = run(['-c', code, out, str(tmp_path / 'clips.npy'), str(tmp_path / 'logits.npy')])
    assert reload.returncode == 0, reload.stderr[-3000:]
    expected = predict.Predictor(c, workdir).logits(clips)
    np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), expected, rtol=0, atol=1e-5)


def _tokshift_case():
    case = os.path.join(CASES, 'tokshift_tiny_div4')
    if not os.path.isdir(case):
        pytest.skip(f'parity case folder {case} is absent (set VTX_PARITY_CASES)')
    with open(os.path.join(case, 'manifest.json')) as f:
        return case, json.load(f)


def test_converted_official_checkpoint_predicts(tmp_path):
    """A converted parity case through predict's loading path gives the official logits, and
    classifies a video with a config made by overrides."""
    from vtx.convert import tokshift
    from vtx import predict
    case, manifest = _tokshift_case()
    model = tokshift.model_config_from_manifest(manifest)
    k, frames, size = model['num_classes'], model['num_frames'], model['image_size']
    overrides = [f'--config.model.{key}={value}' for key, value in model.items() if key != 'name']
    overrides += [f'--config.data.num_classes={k}', f'--config.data.num_frames={frames}',
                  f'--config.data.crop_size={size}', f'--config.data.min_resize={size}']
    out = str(tmp_path / 'converted')
    result = run(['-m', 'vtx.convert', '--family', 'tokshift', '--checkpoint',
                  os.path.join(case, manifest['checkpoint']['file']), '--config',
                  'configs/demo.py', *overrides, f'--out={out}'])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    from vtx import config as vtx_config
    c = vtx_config.get('demo')
    for key, value in model.items():
        c.model[key] = value
    c.data.num_classes, c.data.num_frames, c.data.crop_size = k, frames, size
    c.data.min_resize = size
    predictor = predict.Predictor(c, out, warn=pytest.fail)
    video = np.load(os.path.join(case, manifest['input']['file']))  # NTCHW
    logits = predictor.logits(np.transpose(video, (0, 1, 3, 4, 2)))
    official = np.load(os.path.join(case, manifest['outputs']['logits']))
    tol = manifest['tolerance']
    np.testing.assert_allclose(logits, official, rtol=tol['rtol'], atol=tol['atol'])

    clip = write_motion_mp4(str(tmp_path / 'v.mp4'), 2, size=(36, 48), num_frames=12)
    result = run(['-m', 'vtx.predict', '--config', 'configs/demo.py', f'--checkpoint={out}',
                  *overrides, '--json', '--top_k=10', clip])
    assert result.returncode == 0, result.stderr[-3000:]
    top = json.loads(result.stdout)['predictions'][0]['top_k']
    assert sorted(t['class'] for t in top) == list(range(k))
    assert abs(sum(t['score'] for t in top) - 1) < 1e-5

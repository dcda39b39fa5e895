"""vtx.export: StableHLO (jax.export) and TF SavedModel (jax2tf) artefacts reload in a fresh
process, take any batch size, and give the in-process logits."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_demo_config

LABELS = ['left', 'right', 'up', 'down']
# Fresh-process loaders: argv = artefact, input .npy, output .npy.
LOADERS = {
    'stablehlo': ('import sys, numpy as np; from vtx import export; '
                  'f = export.load_stablehlo(sys.argv[1]); '
                  'np.save(sys.argv[3], np.asarray(f.call(np.load(sys.argv[2]))))'),
    'savedmodel': ('import sys, numpy as np, tensorflow as tf; '
                   'serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]; '
                   'np.save(sys.argv[3], serve(video=tf.constant(np.load(sys.argv[2])))'
                   '["logits"].numpy())'),
}


def run(args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope='module')
def params_checkpoint(tmp_path_factory):
    """A randomly initialised tiny demo model saved as a params checkpoint with class names."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from vtx import checkpoint
    from vtx.models import build_model
    root = tmp_path_factory.mktemp('export')
    c = tiny_demo_config(str(root))
    model = build_model(c.model)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 16, 16, 3)),
                                      train=False)['params'])
    # A non-zero head, so that the logits depend on the input.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.random.normal(jax.random.PRNGKey(2), x.shape) * 0.1
        if 'head' in jax.tree_util.keystr(path) else x, params)
    path = str(root / 'params')
    checkpoint.save_params(path, params, c.model.to_dict(), label_names=LABELS)
    return c, path


@pytest.mark.parametrize('fmt', ['stablehlo', 'savedmodel'])
def test_artefact_reloads_in_a_fresh_process_with_any_batch(params_checkpoint, fmt, tmp_path):
    from vtx import export, predict
    config, ckpt = params_checkpoint
    out = str(tmp_path / fmt)
    export.export(config, ckpt, fmt, out)
    predictor = predict.Predictor(config, ckpt)
    rng = np.random.default_rng(0)
    for batch in (3, 1):
        d = config.data
        clips = rng.normal(size=(batch, d.num_frames, d.crop_size, d.crop_size, 3)).astype(np.float32)
        np.save(tmp_path / 'in.npy', clips)
        result = run(['-c', LOADERS[fmt], out, str(tmp_path / 'in.npy'), str(tmp_path / 'out.npy')])
        assert result.returncode == 0, result.stderr[-3000:]
        logits = np.load(tmp_path / 'out.npy')
        expected = predictor.logits(clips)
        assert logits.shape == (batch, 4) and np.std(expected) > 1e-3
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)

    with open(os.path.join(out, export.SERVING_META)) as f:
        meta = json.load(f)
    assert meta['label_names'] == LABELS  # from the checkpoint's metadata
    assert meta['input']['shape'] == ['B', 8, 16, 16, 3]
    assert meta['normalization']['scale'] == '2 * x / 255 - 1'  # the demo's zero_centering
    assert meta['test_protocol']['eval_aggregation'] == config.data.eval_aggregation
    assert meta['model']['hidden_size'] == 32


def test_cli_lowers_for_several_platforms_and_refuses_bad_output(params_checkpoint, tmp_path):
    config, ckpt = params_checkpoint
    tiny = ['--config.model.hidden_size=32', '--config.model.mlp_dim=64',
            '--config.model.num_layers=2']
    out = str(tmp_path / 'multi')
    result = run(['-m', 'vtx.export', '--config', 'configs/demo.py', f'--checkpoint={ckpt}',
                  *tiny, '--format=stablehlo', f'--out={out}', '--platforms=cpu,cuda,tpu'])
    assert result.returncode == 0, result.stderr[-3000:]
    check = ('import json, sys; from vtx import export; e = export.load_stablehlo(sys.argv[1]); '
             'print(json.dumps([list(e.platforms), str(e.in_avals[0].shape)]))')
    shown = run(['-c', check, out])
    assert shown.returncode == 0, shown.stderr[-3000:]
    platforms, shape = json.loads(shown.stdout.strip().splitlines()[-1])
    assert platforms == ['cpu', 'cuda', 'tpu'] and shape == '(b, 8, 16, 16, 3)', shown.stdout

    again = run(['-m', 'vtx.export', '--config', 'configs/demo.py', f'--checkpoint={ckpt}',
                 *tiny, '--format=stablehlo', f'--out={out}'])
    assert again.returncode == 2 and 'not empty' in again.stderr, again.stderr[-2000:]
    wrong = run(['-m', 'vtx.export', '--config', 'configs/demo.py', f'--checkpoint={ckpt}',
                 '--format=stablehlo', f'--out={tmp_path / "wrong"}'])  # the full-size demo model
    assert wrong.returncode == 2 and 'does not fit the configured model' in wrong.stderr


def test_features_artefact_returns_the_embeddings(params_checkpoint, tmp_path):
    from vtx import export, predict
    config, ckpt = params_checkpoint
    out = str(tmp_path / 'features')
    export.export(config, ckpt, 'stablehlo', out, output='features')
    d = config.data
    clips = np.random.default_rng(1).normal(
        size=(2, d.num_frames, d.crop_size, d.crop_size, 3)).astype(np.float32)
    np.save(tmp_path / 'in.npy', clips)
    result = run(['-c', LOADERS['stablehlo'], out, str(tmp_path / 'in.npy'),
                  str(tmp_path / 'out.npy')])
    assert result.returncode == 0, result.stderr[-3000:]
    predictor = predict.Predictor(config, ckpt)
    expected = predictor.view_features([c[None] for c in clips], 2)
    np.testing.assert_allclose(np.load(tmp_path / 'out.npy'), expected, rtol=0, atol=1e-5)
    with open(os.path.join(out, export.SERVING_META)) as f:
        assert json.load(f)['output'] == {'name': 'features', 'dtype': 'float32',
                                          'shape': ['B', config.model.hidden_size]}

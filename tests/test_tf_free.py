"""The compute path imports no TensorFlow: building a model, `vtx-report`, `vtx-benchmark`,
StableHLO export and the array-in predictor run in one fresh process where `import tensorflow`
(and tensorflow_datasets) fails, as on accelerator images that have no TensorFlow."""
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = r'''
import os, sys

# As where they are not installed: `import` fails and importlib.util.find_spec says None.
for name in ('tensorflow', 'tensorflow_datasets'):
    sys.modules[name] = None
import jax, jax.numpy as jnp, numpy as np
from flax import linen as nn
from vtx import checkpoint, cli, export, predict
from vtx import config as vtx_config
from vtx.commands import benchmark, report
from vtx.models import build_model

small = ['--config.model.hidden_size=32', '--config.model.mlp_dim=64',
         '--config.model.num_layers=1', '--config.data.num_frames=2', '--config.data.crop_size=16',
         '--config.model.num_frames=2', '--config.model.image_size=16']
report.main(['--config', 'configs/demo.py', '--json', '--mode=forward'] + small)
benchmark.main(['--config', 'configs/demo.py', '--json', '--mode=forward', '--steps=1',
                '--warmup=0', '--peak_size=64'] + small)
config = vtx_config.load('configs/demo.py', cli.config_overrides(small)[0])
model = build_model(config.model)
params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 16, 16, 3)),
                                  train=False)['params'])
checkpoint.save_params(sys.argv[1] + '/params', params, config.model.to_dict())
predictor = predict.Predictor(config, sys.argv[1] + '/params')
logits = predictor.apply(np.zeros((1, 2, 16, 16, 3), np.float32))
assert logits.shape == (1, config.data.num_classes), logits.shape
os.makedirs(sys.argv[1] + '/exported')
export.export_stablehlo(predictor, sys.argv[1] + '/exported')
print('TF-FREE', not [m for m, v in sys.modules.items() if m.startswith('tensorflow') and v])
'''


def test_compute_path_runs_without_tensorflow(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
    run = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'TF-FREE True' in run.stdout

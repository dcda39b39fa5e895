"""Shared test setup: repo root on sys.path, locations of the shared fixtures, tiny configs."""
import atexit
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, '..', 'shared')
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if 'VTX_COMPILATION_CACHE' not in os.environ:   # where the commands the tests run keep programs
    os.environ['VTX_COMPILATION_CACHE'] = tempfile.mkdtemp(prefix='vtx-test-xla-')
    atexit.register(shutil.rmtree, os.environ['VTX_COMPILATION_CACHE'], True)

from vtx.kernels import native  # noqa: E402 - after the environment above is set


def primitive_sites(jaxpr, name: str) -> int:
    """How many places in `jaxpr` (closed or not) apply primitive `name`, nested jaxprs (jit
    calls, cond branches, scan and custom-derivative bodies) counted at each of their call sites,
    as XLA compiles them: a printed jaxpr shows a body that several calls share only once."""
    jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
    sites = 0
    for eqn in jaxpr.eqns:
        sites += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(getattr(sub, 'jaxpr', sub), 'eqns'):
                    sites += primitive_sites(sub, name)
    return sites


def tiny_demo_config(data_dir, **overrides):
    """configs/demo.py shrunk to seconds: a 2-layer TokShift on a small synthetic set in data_dir."""
    from vtx import config as vtx_config
    c = vtx_config.get('demo')
    c.data.train_shards = os.path.join(data_dir, 'train-*-of-*')
    c.data.eval_shards = os.path.join(data_dir, 'eval-*-of-*')
    c.data.synthetic_num_train = 64  # what demo_data_dir holds
    c.data.synthetic_num_eval = 20
    c.model.hidden_size = 32
    c.model.mlp_dim = 64
    c.model.num_layers = 2
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.num_steps = 6
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 2
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split('.')
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def demo_cli(data_dir, workdir, *extra):
    """`python -m vtx.main` on configs/demo.py shrunk to a tiny model on the data in data_dir."""
    overrides = {
        'data.train_shards': os.path.join(data_dir, 'train-*-of-*'),
        'data.eval_shards': os.path.join(data_dir, 'eval-*-of-*'),
        'data.synthetic_num_train': 64, 'data.synthetic_num_eval': 20,
        'model.hidden_size': 32, 'model.mlp_dim': 64, 'model.num_layers': 2,
        'model.drop_path_rate': 0.1,  # randomness in the step must resume too
        'train.batch_size': 8, 'train.log_every_steps': 2,
        'train.checkpoint_every_steps': 4, 'train.keep_checkpoints': 10,
    }
    return ([sys.executable, '-m', 'vtx.main', '--config', 'configs/demo.py', f'--workdir={workdir}',
             '--mode=train'] + [f'--config.{k}={v}' for k, v in overrides.items()] + list(extra))


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory):
    """A small motion set in the demo's format, generated once per test session."""
    from vtx.data import synthetic
    path = tmp_path_factory.mktemp('demo_motion')
    c = tiny_demo_config(str(path))
    synthetic.ensure(c.data)
    return str(path)


@pytest.fixture(params=list(native.BUILDS))
def native_build(request, monkeypatch):
    """Each build of vtx's native window attention (`vtx.kernels.native.BUILDS`) in turn, made
    the one eval uses (`VTX_NATIVE_KERNELS`); skips a build that cannot run here. An AVX-512 CPU
    runs both, so the AVX2 build is tested there too."""
    monkeypatch.setenv(native.ENV, request.param)
    native.window_attention_build.cache_clear()
    try:
        if native.window_attention_build() != request.param:
            pytest.skip(f'the {request.param} build of the native window attention needs an '
                        f'x86-64 CPU with {", ".join(sorted(native.BUILDS[request.param][0]))} '
                        'and a C++ compiler')
        yield request.param
    finally:
        native.window_attention_build.cache_clear()

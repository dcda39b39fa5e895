"""vtx as an installed package: a non-editable install into a new virtualenv works from any
directory, including one whose own `data/`, `configs/` and `convert/` packages would shadow the
repository's folders of those names; and the library never imports those top-level folders."""
import ast
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO
from test_predict import write_motion_mp4

TOP_LEVEL_FOLDERS = ('configs', 'convert', 'data', 'scripts', 'tests')


def _imported_modules(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_the_library_never_imports_a_top_level_folder():
    reaching_up = []
    for root, _, files in os.walk(os.path.join(REPO, 'vtx')):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(root, name)
                reaching_up += [f'{os.path.relpath(path, REPO)} imports {module}'
                                for module in _imported_modules(path)
                                if module.split('.')[0] in TOP_LEVEL_FOLDERS]
    assert not reaching_up, reaching_up


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """A new virtualenv with `pip install .` of a copy of the repository. The dependencies come
    from the running interpreter's site-packages (a path in a .pth file), so nothing is
    downloaded and the install itself is what is tested."""
    root = tmp_path_factory.mktemp('install')
    source = root / 'source'
    source.mkdir()
    for name in ('vtx', 'configs'):
        shutil.copytree(os.path.join(REPO, name), source / name,
                        ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(os.path.join(REPO, name), source / name)
    venv = root / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = venv / 'bin' / 'python'
    purelib = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, 'dependencies.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    result = subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps',
                             '--no-build-isolation', '--no-index', str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


@pytest.fixture(params=['empty', 'decoys'])
def elsewhere(request, tmp_path):
    """A working directory outside the repository: empty, or with packages named like the
    repository's top-level folders that fail loudly when imported."""
    if request.param == 'decoys':
        for name in ('data', 'configs', 'convert'):
            (tmp_path / name).mkdir()
            (tmp_path / name / '__init__.py').write_text(f"raise ImportError('decoy {name} imported')\n")
            (tmp_path / name / 'demo.py').write_text("raise ImportError('decoy config imported')\n")
    return tmp_path


def _run(venv, args, cwd, **env):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | env
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_installed_commands_work_from_any_directory(installed, elsewhere, demo_data_dir):
    bin_dir = installed / 'bin'
    site = _run(installed, [bin_dir / 'python', '-c', 'import vtx, vtx.config; '
                            'print(vtx.__file__); print(vtx.config.config_dir())'], elsewhere)
    assert site.returncode == 0, site.stderr[-3000:]
    assert all(str(installed) in line for line in site.stdout.split()), site.stdout  # not the repo

    workdir = elsewhere / 'run'
    overrides = [f'--config.data.train_shards={demo_data_dir}/train-*-of-*',
                 f'--config.data.eval_shards={demo_data_dir}/eval-*-of-*',
                 '--config.data.synthetic_num_train=64', '--config.data.synthetic_num_eval=20',
                 '--config.model.hidden_size=32', '--config.model.mlp_dim=64',
                 '--config.model.num_layers=2', '--config.train.batch_size=8',
                 '--config.train.num_steps=2', '--config.train.eval_batch_size=10']
    train = _run(installed, [bin_dir / 'vtx-train', '--config', 'demo', f'--workdir={workdir}',
                             *overrides], elsewhere)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (workdir / 'metrics.jsonl').exists()
    if (elsewhere / 'configs').exists():
        # `python -m` puts the working directory, decoys and all, first on sys.path.
        again = _run(installed, [bin_dir / 'python', '-m', 'vtx.main', '--config=demo',
                                 f'--workdir={workdir}', '--mode=eval', *overrides], elsewhere)
        assert again.returncode == 0, again.stderr[-3000:]

    video = write_motion_mp4(str(elsewhere / 'left.mp4'), 0)
    predict = _run(installed, [bin_dir / 'vtx-predict', '--config', 'demo', f'--checkpoint={workdir}',
                               *overrides[4:7], '--top_k=2', video], elsewhere)
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert predict.stdout.splitlines()[0] == video

    for command in ('vtx-convert', 'vtx-export', 'vtx-shards-from-csv', 'vtx-report'):
        help_text = _run(installed, [bin_dir / command, '--help'], elsewhere)
        assert help_text.returncode == 0, (command, help_text.stderr[-3000:])


def test_an_unknown_config_name_lists_close_matches(installed, tmp_path):
    result = _run(installed, [installed / 'bin' / 'vtx-train', '--config', 'xvit_k60',
                              f'--workdir={tmp_path / "run"}'], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'vtx-train: error: --config xvit_k60: no such file and no zoo config of that name; '
        'close matches: xvit_k600, xvit_k400, xvit_ssv2, mvit_b_16x4_k400']
    assert not (tmp_path / 'run').exists()

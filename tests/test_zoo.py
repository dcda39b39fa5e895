"""From a zoo name to predictions, embeddings and fine-tuning (vtx.load, vtx.finetune), against
official-format checkpoints (the parity cases) served from 127.0.0.1. A tiny zoo entry is added
to the registry for the test; everything else is the code users run."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import vtx
from conftest import REPO, SHARED
from test_predict import write_motion_mp4
from vtx import checkpoint, families, finetune, hub, pretrained
from vtx import config as vtx_config
from vtx.convert import engine, tokshift
from vtx.predict import video_views
from zoo_server import ZooServer

CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', os.path.join(SHARED, 'parity', 'cases')))
CASE = os.path.join(CASES, 'tokshift_tiny_div4')
OFFICIAL_URL = 'https://example.org/releases/tiny_tokshift_k10.pth'
TINY = 'tiny_tokshift'


def _case_model_config():
    with open(os.path.join(CASE, 'manifest.json')) as f:
        return tokshift.model_config_from_manifest(json.load(f))


def _write_tiny_config(folder):
    """The demo's config (synthetic motion set) with the parity case's tiny TokShift."""
    model = {k: v for k, v in _case_model_config().items() if k != 'name'}
    size = model['image_size']
    (folder / f'{TINY}.py').write_text(f'''from vtx import config


def get_config():
    c = config.get({os.path.join(REPO, 'configs', 'demo.py')!r})
    c.model = config.model_defaults('vit')
    c.model.update({model!r})
    c.data.num_classes = {model['num_classes']}
    c.data.num_frames = {model['num_frames']}
    c.data.crop_size = c.data.min_resize = c.data.synthetic_frame_size = {size}
    c.data.train_scale_range = ({size}, {size})
    c.train.eval_batch_size = 2
    return c
''')


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """(server, entry): the tiny entry registered, its official file served, an empty cache."""
    served = tmp_path / 'served'
    served.mkdir()
    shutil.copy(os.path.join(CASE, 'checkpoint.pth'), served / os.path.basename(OFFICIAL_URL))
    configs = tmp_path / 'configs'
    configs.mkdir()
    _write_tiny_config(configs)
    monkeypatch.setattr(vtx_config, 'config_dir', lambda: str(configs))
    entry = families.ZooEntry(TINY, None, labels=None, url=OFFICIAL_URL)
    register(monkeypatch, entry)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / 'cache'))
    with ZooServer(str(served)) as server:
        monkeypatch.setenv(hub.MIRROR_ENV, server.url)
        yield server, entry


def register(monkeypatch, entry):
    """`entry` in the ViT family's zoo, in place of any entry of the same name."""
    zoo = tuple(e for e in families.FAMILIES['vit'].zoo if e.config != entry.config)
    vit = dataclasses.replace(families.FAMILIES['vit'], zoo=zoo + (entry,))
    monkeypatch.setattr(families, 'FAMILIES', {**families.FAMILIES, 'vit': vit})
    monkeypatch.setattr(families, '_REGISTERED', tuple(
        vit if f.name == 'vit' else f for f in families._REGISTERED))


def _official_input():
    from convert.verify import to_model_layout
    with open(os.path.join(CASE, 'manifest.json')) as f:
        layout = json.load(f)['input']['layout']
    return to_model_layout(np.load(os.path.join(CASE, 'input.npy')), layout)


def test_first_load_downloads_converts_and_caches_then_works_offline(zoo):
    server, _ = zoo
    model = vtx.load(TINY, quiet=True)
    assert [path for path, _ in server.requests] == ['/' + os.path.basename(OFFICIAL_URL)]
    folder = os.path.join(hub.cache_dir(), 'converted', TINY)
    assert checkpoint.read_params_metadata(folder)['zoo'] == TINY
    # The converted model is the official one: its logits on the case input are the official.
    logits = model.apply(_official_input())
    np.testing.assert_allclose(logits, np.load(os.path.join(CASE, 'logits.npy')), atol=1e-5,
                               rtol=1e-4)
    os.environ[hub.MIRROR_ENV] = 'http://127.0.0.1:9'  # nothing listens: no network from here on
    again = vtx.load(TINY, quiet=True)
    np.testing.assert_array_equal(again.apply(_official_input()), logits)
    assert len(server.requests) == 1


def test_predict_and_embed_through_load(zoo, tmp_path):
    model = vtx.load(TINY, quiet=True)
    video = write_motion_mp4(str(tmp_path / 'right.mp4'), 1, size=(40, 48), num_frames=20)
    frames = np.random.default_rng(0).integers(0, 255, (20, 36, 36, 3), dtype=np.uint8)
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'not a video')
    results = model.predict([video, frames, str(broken)], top_k=3)
    assert [r.get('video') for r in results[:1]] == [video]
    assert len(results[1]['top_k']) == 3 and 'error' not in results[1]
    assert 'broken.mp4' in results[2]['error']
    scores = [t['score'] for t in results[0]['top_k']]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1

    embedding = model.embed([video, frames])
    width = _case_model_config()['hidden_size']
    assert embedding.shape == (2, width) and embedding.dtype == np.float32
    views = [video_views(v, model.config.data) for v in (video, frames)]
    np.testing.assert_allclose(embedding, model.view_features(views, 2), rtol=1e-6)
    with pytest.raises(vtx.errors.VtxError, match='broken.mp4'):
        model.embed([video, str(broken)])

    # The command line gives the same scores for the same file.
    folder = os.path.join(hub.cache_dir(), 'converted', TINY)
    cli = subprocess.run(
        [sys.executable, '-m', 'vtx.predict', '--config', os.path.join(vtx_config.config_dir(),
                                                                        TINY + '.py'),
         f'--checkpoint={folder}', '--json', '--top_k=3', video],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    expected = json.loads(cli.stdout)['predictions'][0]['top_k']
    assert [t['class'] for t in expected] == [t['class'] for t in results[0]['top_k']]
    np.testing.assert_allclose([t['score'] for t in expected], scores, rtol=1e-5)


def test_an_interrupted_download_resumes_on_the_next_load(zoo):
    server, _ = zoo
    server.break_after = 100_000
    with pytest.raises(hub.DownloadError, match='run again to resume'):
        vtx.load(TINY, quiet=True)
    assert not os.path.exists(os.path.join(hub.cache_dir(), 'converted', TINY))
    vtx.load(TINY, quiet=True)
    assert server.requests[-1][1] == 'bytes=100000-'


def test_a_checksum_mismatch_caches_nothing(zoo, monkeypatch):
    _, entry = zoo
    register(monkeypatch, dataclasses.replace(entry, sha256='f' * 64))
    with pytest.raises(hub.ChecksumError, match='expected f{64}'):
        vtx.load(TINY, quiet=True)
    assert not os.path.exists(os.path.join(hub.cache_dir(), 'converted'))
    assert os.listdir(os.path.join(hub.cache_dir(), 'downloads')) == [
        os.path.basename(OFFICIAL_URL) + '.rejected']


def test_a_damaged_cache_entry_is_made_again(zoo):
    server, _ = zoo
    reference = vtx.load(TINY, quiet=True).apply(_official_input())
    folder = os.path.join(hub.cache_dir(), 'converted', TINY)
    os.remove(os.path.join(folder, checkpoint.PARAMS_META))
    download = os.path.join(hub.cache_dir(), 'downloads', os.path.basename(OFFICIAL_URL))
    with open(download, 'r+b') as f:
        f.write(b'damaged')
    np.testing.assert_array_equal(vtx.load(TINY, quiet=True).apply(_official_input()), reference)
    assert len(server.requests) == 2  # the damaged download was fetched again


def test_a_browser_hosted_checkpoint_is_given_once_by_path(zoo, monkeypatch):
    _, entry = zoo
    register(monkeypatch, dataclasses.replace(entry, needs_browser=True))
    monkeypatch.delenv(hub.MIRROR_ENV)
    with pytest.raises(pretrained.ZooError, match=f'{OFFICIAL_URL}.*checkpoint=PATH'):
        vtx.load(TINY, quiet=True)
    vtx.load(TINY, checkpoint=os.path.join(CASE, 'checkpoint.pth'), quiet=True)
    vtx.load(TINY, quiet=True)  # cached from then on


def test_unknown_names_list_close_matches():
    with pytest.raises(pretrained.ZooError, match='close zoo names: xvit_k600'):
        vtx.load('xvit_k60')


def _wanted(config):
    from vtx.models import build_model
    model = build_model(config.model)
    d = config.data
    abstract = engine.abstract_params_of(model, jnp.zeros((1, d.num_frames, d.crop_size,
                                                           d.crop_size, 3)), train=False)
    return model, abstract


def test_fine_tuning_from_a_zoo_model_reinitialises_only_the_classifier(zoo):
    config = vtx_config.load(TINY, {'model.num_classes': 4, 'data.num_classes': 4})
    model, abstract = _wanted(config)
    config.init_from = TINY
    lines = []
    params = engine.flatten_params(finetune.initial_params(config, model, abstract, log=lines.append))
    official = engine.flatten_params(checkpoint.load_params(
        os.path.join(hub.cache_dir(), 'converted', TINY))[0])
    width = _case_model_config()['hidden_size']
    assert lines[0].startswith('conversion OK')  # the first use converted, with the strict report
    assert lines[1:] == [f'init_from {TINY}: head/bias: (10,) in {TINY}, (4,) here: re-initialised '
                     f'(zeros, as VisionTransformer(zero_head=True)); head/kernel: ({width}, 10) in '
                     f'{TINY}, ({width}, 4) here: re-initialised (zeros, as '
                     'VisionTransformer(zero_head=True))']
    assert not params['head/kernel'].any()
    for path in official:
        if not path.startswith('head/'):
            np.testing.assert_array_equal(params[path], official[path])

    config.init_reinit = r'layer_2/.*'
    lines.clear()
    params = engine.flatten_params(finetune.initial_params(config, model, abstract, log=lines.append))
    assert sum('(config.init_reinit)' in part for part in lines[0].split('; ')) == len(
        [p for p in official if p.startswith('layer_2/')])
    assert not np.array_equal(params['layer_2/ffn/fc1/kernel'], official['layer_2/ffn/fc1/kernel'])


def test_fine_tuning_refuses_a_backbone_that_does_not_fit(zoo):
    config = vtx_config.load(TINY, {'model.num_layers': 2})
    model, abstract = _wanted(config)
    config.init_from = TINY
    with pytest.raises(finetune.InitError, match='has layer_2/.*which the model does not'):
        finetune.initial_params(config, model, abstract, log=None)


def test_the_documented_ssv2_path_official_kinetics_swin_to_other_classes():
    """configs/swin_base_patch244_window1677_sthv2.py: an official mmaction Video Swin checkpoint
    (here the tiny parity case) starts a model with another class count; the I3D head is
    re-initialised as normal(0, 0.01), every backbone tensor is the official one."""
    case = os.path.join(CASES, 'video_swin_ssv2_style')
    with open(os.path.join(case, 'manifest.json')) as f:
        manifest = json.load(f)
    from vtx.convert import video_swin
    model_config = video_swin.model_config_from_manifest(manifest)
    shape = manifest['input']['shape']
    config = vtx_config.defaults()
    config.model = vtx_config.model_defaults('video_swin')
    config.model.update({**model_config, 'num_classes': 7})
    config.data.update(num_classes=7, num_frames=shape[2], crop_size=shape[3])
    model, abstract = _wanted(config)
    config.init_from = os.path.join(case, 'checkpoint.pth')
    lines = []
    params = engine.flatten_params(finetune.initial_params(config, model, abstract, log=lines.append))
    assert 'head/kernel' in lines[0] and 'normal(0, 0.01)' in lines[0] and lines[0].count(
        're-initialised') == 2
    official_config = dict(model_config)
    _, official_abstract = _wanted(_config_like(config, official_config))
    official = engine.flatten_params(engine.convert(
        engine.load_checkpoint(config.init_from), video_swin.table(official_config),
        official_abstract, log=None))
    assert params['head/kernel'].shape[-1] == 7 and 0 < params['head/kernel'].std() < 0.02
    for path, value in official.items():
        if not path.startswith('head/'):
            np.testing.assert_array_equal(params[path], value)


def _config_like(config, model_config):
    other = vtx_config.defaults()
    other.model = vtx_config.model_defaults(model_config['name'])
    other.model.update(model_config)
    other.data.update(num_classes=model_config['num_classes'], num_frames=config.data.num_frames,
                      crop_size=config.data.crop_size)
    return other


def test_fine_tune_end_to_end_from_a_zoo_name(zoo, tmp_path):
    """`--config.init_from=<zoo name>` with another class count trains, from the command line."""
    from vtx import train
    config = vtx_config.load(TINY, {
        'init_from': TINY, 'model.num_classes': 4, 'data.num_classes': 4,
        'data.train_shards': str(tmp_path / 'data' / 'train-*-of-*'),
        'data.eval_shards': str(tmp_path / 'data' / 'eval-*-of-*'),
        'data.synthetic_num_train': 16, 'data.synthetic_num_eval': 4,
        'train.batch_size': 4, 'train.eval_batch_size': 4, 'train.num_steps': 2,
        'train.log_every_steps': 1})
    metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert metrics['num_videos'] == 4 and np.isfinite(metrics['loss'])


def test_the_readme_walkthrough_fine_tunes_a_zoo_model_on_a_folder_of_videos(zoo, tmp_path):
    """vtx-shards-from-folder, then vtx-train with init_from=<zoo name> and data.dataset, then
    predictions named by the folder's classes (README: "Fine-tune a zoo model on a folder")."""
    from vtx import train
    from vtx.data import build_from_folder
    root = tmp_path / 'my_videos'
    classes = ['left', 'right', 'up']
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(3):
            write_motion_mp4(str(root / name / f'{k}.mp4'), label, size=(32, 32), seed=k)
    (root / 'up' / 'broken.mp4').write_bytes(b'not a video')
    shards = tmp_path / 'my_shards'
    dataset = build_from_folder.main(['--root', str(root), '--output_dir', str(shards),
                                      '--short_side', '32', '--workers', '1'])
    assert dataset['num_classes'] == 3 and dataset['train']['videos'] + dataset['val']['videos'] == 9
    assert (shards / 'labels.txt').read_text().split('\n')[:3] == classes

    overrides = {'init_from': TINY, 'data.dataset': str(shards), 'train.batch_size': 2,
                 'train.eval_batch_size': 2, 'train.num_steps': 2}
    config = vtx_config.load(TINY, overrides)
    assert (config.model.num_classes, config.data.num_classes) == (3, 3)
    metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert metrics['num_videos'] == dataset['val']['videos']

    model = vtx.load(str(tmp_path / 'run'), config=TINY, overrides={'data.dataset': str(shards)})
    result, = model.predict([str(root / 'up' / '0.mp4')], top_k=3)
    assert sorted(t['label'] for t in result['top_k']) == sorted(classes)

"""vtx-plot: a demo-like pair of runs (metrics.jsonl written here, as vtx-train writes it) drawn
into one PNG; bad workdirs are one error line."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO
from vtx import plot
from vtx.errors import VtxError


def write_run(folder, learns: bool, steps=200, log_every=20):
    """A run shaped like the demo's: train records every `log_every` steps, one eval at the end,
    a repeated step (a resume) and a final line cut short (killed mid-write)."""
    os.makedirs(folder)
    lines = []
    for step in range(log_every, steps + 1, log_every):
        progress = step / steps
        lines.append({'step': step, 'split': 'train', 'grad_norm': 1.0,
                      'loss': 1.386 * (1 - 0.9 * progress if learns else 1),
                      'lr': 1e-3 * (1 - progress),
                      'top1': 0.25 + (0.7 * progress if learns else 0), 'top5': 1.0,
                      'clips_per_sec': 150.0})
    lines.insert(2, dict(lines[2], loss=9.0))  # step 60 logged twice: the later record counts
    lines.append({'step': steps, 'split': 'eval', 'loss': 0.2 if learns else 1.386,
                  'top1': 0.98 if learns else 0.26, 'top5': 1.0, 'num_videos': 400.0})
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in lines) + '{"step": 220, "spl')


def test_reads_the_last_record_of_a_step_and_skips_a_cut_final_line(tmp_path):
    write_run(tmp_path / 'run', learns=True)
    metrics = plot.read_metrics(str(tmp_path / 'run'))
    assert [r['step'] for r in metrics['train']] == list(range(20, 201, 20))
    assert metrics['train'][2]['loss'] != 9.0
    assert [r['top1'] for r in metrics['eval']] == [0.98]


def test_names_runs_by_folder_or_name():
    assert plot.named_runs(['a/token_shift', 'baseline=b/none']) == [
        ('token_shift', 'a/token_shift'), ('baseline', 'b/none')]


def test_cli_draws_two_runs_into_one_png(tmp_path):
    write_run(tmp_path / 'token_shift', learns=True)
    write_run(tmp_path / 'none', learns=False)
    out = tmp_path / 'curves.png'
    result = subprocess.run([sys.executable, '-m', 'vtx.plot', str(tmp_path / 'token_shift'),
                             f'video-ViT={tmp_path / "none"}', f'--out={out}'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(out) as png:
        assert png.format == 'PNG' and png.width > png.height


@pytest.mark.parametrize('content,message', [
    (None, 'no such file'), ('', 'no metrics recorded'),
    ('not json\n{"step": 1, "split": "train"}\n', 'metrics.jsonl:1: expected a JSON object')])
def test_bad_workdir_is_one_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / 'metrics.jsonl').write_text(content)
    with pytest.raises(VtxError, match=message):
        plot.read_metrics(str(tmp_path))


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'vtx.plot', str(tmp_path / 'missing')],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'vtx-plot: error: {tmp_path / "missing" / "metrics.jsonl"}: no such file (expected a '
        'vtx-train workdir)']

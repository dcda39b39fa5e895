"""Command line: training curves of one or more runs in one picture.

    vtx-plot WORKDIR [NAME=WORKDIR ...] [--out curves.png]

Reads each workdir's `metrics.jsonl` (one JSON object per logged step: train records carry
`loss, top1, lr, clips_per_sec`, eval records `loss, top1, num_videos`) and draws four panels
against the step: loss (train line, eval markers), top-1 (the same), learning rate and clips/s
(train). Runs are overlaid, one colour each, named by NAME or the workdir's folder name. A resumed
run that logged a step twice is drawn with the later record. Also `python -m vtx.plot`.
"""
import json
import os
from typing import Dict, List, Tuple

from absl import app, flags

from vtx import cli
from vtx.errors import VtxError

PANELS = (('loss', 'loss', True), ('top1', 'top-1', True), ('lr', 'learning rate', False),
          ('clips_per_sec', 'clips/s (train)', False))  # (field, title, eval drawn too)


def read_metrics(workdir: str) -> Dict[str, List[dict]]:
    """{'train': [...], 'eval': [...]} records of a workdir, by step, the last of a repeated step.
    A final line cut short (a run killed mid-write) is left out; any other bad line is an error."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise VtxError(f'{path}: no such file (expected a vtx-train workdir)')
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    by_split: Dict[str, Dict[int, dict]] = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            step, split = int(record['step']), str(record['split'])
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise VtxError(f'{path}:{number}: expected a JSON object with "step" and "split", '
                           f'got {line[:60]!r}') from None
        by_split.setdefault(split, {})[step] = record
    if not by_split:
        raise VtxError(f'{path}: no metrics recorded yet (the run logs every '
                       'train.log_every_steps steps)')
    return {split: [steps[s] for s in sorted(steps)] for split, steps in by_split.items()}


def named_runs(arguments) -> List[Tuple[str, str]]:
    """(name, workdir) of each WORKDIR or NAME=WORKDIR argument."""
    runs = []
    for argument in arguments:
        # A folder whose own name holds '=' (runs/lr=0.1) is a workdir, not NAME=WORKDIR.
        name, _, workdir = (('', '', argument) if os.path.isdir(argument) or '=' not in argument
                            else argument.partition('='))
        runs.append((name or os.path.basename(os.path.normpath(workdir)), workdir))
    return runs


def plot(runs: List[Tuple[str, str]], out: str) -> str:
    """Draws the runs' curves into `out` (PNG); returns it."""
    records = [(name, read_metrics(workdir)) for name, workdir in runs]
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.3))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, (name, splits) in enumerate(records):
        colour = colours[i % len(colours)]
        for ax, (field, title, with_eval) in zip(axes, PANELS):
            train = [r for r in splits.get('train', []) if field in r]
            ax.plot([r['step'] for r in train], [r[field] for r in train], color=colour,
                    lw=1.2, label=f'{name} train' if with_eval else name)
            evaluated = [r for r in splits.get('eval', []) if field in r] if with_eval else []
            if evaluated:
                ax.plot([r['step'] for r in evaluated], [r[field] for r in evaluated], color=colour,
                        ls='--', marker='o', ms=6, label=f'{name} eval')
            ax.set_title(title, fontsize=10)
            ax.set_xlabel('step', fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    axes[PANELS.index(('lr', 'learning rate', False))].ticklabel_format(
        axis='y', style='sci', scilimits=(-2, 3))
    axes[0].legend(fontsize=8)
    axes[1].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def define_flags():
    flags.DEFINE_string('out', 'curves.png', 'The PNG to write.')


def main(argv):
    if len(argv) < 2:
        raise app.UsageError('give one or more training workdirs (WORKDIR or NAME=WORKDIR)')
    try:
        print(f'wrote {plot(named_runs(argv[1:]), flags.FLAGS.out)}')
    except VtxError as e:
        cli.fail(e)


def run():
    cli.run(main, 'vtx-plot', define_flags)


if __name__ == '__main__':
    run()

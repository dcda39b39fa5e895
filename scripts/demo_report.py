"""Trains the demo twice — TokShift and the video-ViT baseline — and prints a markdown table of
final eval top-1 and wall time (the numbers quoted in the README).

    python scripts/demo_report.py [--workdir_root workdirs/demo_report] [extra --config.* flags]
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = (('TokShift (`configs/demo.py`)', 'token_shift'),
            ('video-ViT baseline (`--config.model.temporal=none`)', 'none'))


def main():
    parser = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    parser.add_argument('--workdir_root', default=os.path.join(REPO, 'workdirs', 'demo_report'))
    args, extra = parser.parse_known_args()
    os.makedirs(args.workdir_root, exist_ok=True)
    rows = []
    for title, temporal in VARIANTS:
        workdir = os.path.join(args.workdir_root, temporal)
        if os.path.exists(workdir):
            sys.exit(f'{workdir} exists: remove it or pass another --workdir_root')
        start = time.time()
        subprocess.run([sys.executable, '-m', 'vtx.main', '--config', 'configs/demo.py',
                        f'--workdir={workdir}', f'--config.model.temporal={temporal}', *extra],
                       cwd=REPO, check=True)
        wall = time.time() - start
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            final = [json.loads(line) for line in f if '"eval"' in line][-1]
        rows.append(f"| {title} | {final['top1']:.3f} | {int(final['num_videos'])} | "
                    f"{final['step']} | {wall / 60:.1f} min |")
    print('| model | eval top-1 | eval videos | steps | wall time (incl. start-up) |')
    print('|---|---|---|---|---|')
    print('\n'.join(rows))


if __name__ == '__main__':
    main()

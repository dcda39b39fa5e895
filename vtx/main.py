"""Command line: `python -m vtx.main --config configs/X.py --workdir DIR [--config.a.b=v] [--mode=...]`.

A run started on a workdir that holds a checkpoint resumes from it. Errors in the config, paths,
data or checkpoints are printed as one paragraph naming the culprit (exit status 2).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only the input pipeline here

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to an ml_collections config file (get_config()).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics.jsonl and TensorBoard events.')
flags.DEFINE_enum('mode', 'train_and_eval', ['train_and_eval', 'train', 'eval'], 'What to run.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for multi-process runs (implies config.distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    logging.set_verbosity(logging.WARNING)
    try:
        config = FLAGS.config
        config.model  # a config file that failed to load raises on first use
    except OSError as e:
        print(f"vtx: error: --config: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    import jax
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif config.distributed:
        jax.distributed.initialize()  # TPU pods, SLURM and similar clusters auto-detect

    from vtx import train
    from vtx.errors import VtxError
    try:
        train.train_and_evaluate(config, FLAGS.workdir, FLAGS.mode)
    except VtxError as e:
        print(f'vtx: error: {e}', file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl flag parsing, with a bad flag or `--config.*` override reported in one paragraph."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        detail = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').split())
        detail = detail.replace("''", "'").rstrip("'") if detail.startswith("''") else detail
        overrides = ' '.join(a for a in argv[1:] if a.startswith('--config.')) or 'none'
        print(f'vtx: error: bad command line: {detail}. The --config.* overrides given were: '
              f'{overrides}. Each must name a field that exists in the config file (shared fields '
              'are listed in configs/base.py) and give a value of that field\'s type.',
              file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)

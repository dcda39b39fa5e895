"""Command line: `vtx-train --config NAME|FILE --workdir DIR [--config.a.b=v] [--mode=...]`
(also `python -m vtx.main`).

`--config` is a zoo config name (`xvit_k600`, `demo`) or a config file. A run started on a workdir
that holds a checkpoint resumes from it. Errors in the config, paths, data or checkpoints are
printed as one paragraph naming the culprit (exit status 2).
"""
from absl import app, flags, logging
from ml_collections import config_flags

from vtx import cli, xla_flags

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file('config', None, 'A zoo config name (e.g. xvit_k600) or a config '
                                    'file with get_config().', lock_config=True)
    flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics.jsonl and TensorBoard '
                        'events.')
    flags.DEFINE_enum('mode', 'train_and_eval', ['train_and_eval', 'train', 'eval'], 'What to run.')
    flags.DEFINE_string('coordinator_address', None,
                        'host:port of process 0 for multi-process runs (implies config.distributed).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).',
                         lower_bound=1)
    flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).',
                         lower_bound=0)
    flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    logging.set_verbosity(logging.WARNING)
    from vtx.errors import VtxError
    try:
        config = FLAGS.config
        config.model  # a config file that failed to load raises on first use
    except OSError as e:
        cli.fail(f"--config: {' '.join(str(e).split())}")
    import jax
    xla_flags.enable_compilation_cache()
    if FLAGS.coordinator_address:
        if None not in (FLAGS.num_processes, FLAGS.process_id) and (
                FLAGS.process_id >= FLAGS.num_processes):
            cli.fail(f'--process_id {FLAGS.process_id}: processes are numbered 0 to '
                     f'--num_processes - 1 ({FLAGS.num_processes - 1})')
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif config.distributed:
        jax.distributed.initialize()  # TPU pods, SLURM and similar clusters auto-detect

    from vtx import train
    try:
        train.train_and_evaluate(config, FLAGS.workdir, FLAGS.mode)
    except VtxError as e:
        cli.fail(e)


def run():
    cli.run(main, 'vtx-train', define_flags)


if __name__ == '__main__':
    run()

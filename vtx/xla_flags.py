"""XLA settings of the host process: how many threads XLA:CPU may use, and vtx's default XLA flags.

Both act only before JAX creates its backends (the first `jax.devices()` or computation):
XLA:CPU sizes its thread pools from the process's CPU affinity at that moment, and XLA reads
XLA_FLAGS once.
"""
import os
import sys

from vtx.errors import VtxError

# Flags `import vtx` adds to XLA_FLAGS unless the user's XLA_FLAGS already names them. Each
# backend reads only its own (xla_cpu_*, xla_gpu_*, ...). No xla_cpu_* option beat XLA:CPU's own
# defaults in the measurements of docs/performance.md ("XLA:CPU options"), so none is set. On GPUs
# the latency-hiding scheduler overlaps a step's collectives (gradient all-reduce, FSDP
# all-gathers) with its compute, as NVIDIA's JAX containers do.
DEFAULT_FLAGS = {'xla_gpu_enable_latency_hiding_scheduler': 'true'}


def backends_started() -> bool:
    bridge = sys.modules.get('jax._src.xla_bridge')
    return bridge is not None and bridge.backends_are_initialized()


def apply_defaults(flags: dict[str, str] = DEFAULT_FLAGS) -> list[str]:
    """Adds to XLA_FLAGS each `--name=value` of `flags` whose name the user's XLA_FLAGS lacks, and
    returns those added. Once JAX has started its backends XLA no longer reads XLA_FLAGS, so then
    nothing is added."""
    current = os.environ.get('XLA_FLAGS', '')
    named = {part.split('=')[0].lstrip('-') for part in current.split()}
    added = [f'--{name}={value}' for name, value in flags.items() if name not in named]
    if not added or backends_started():
        return []
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
    return added


def pin_threads(threads: int) -> list[int]:
    """Restricts this process to its first `threads` CPUs, so that XLA:CPU's thread pools (sized
    from the CPU affinity when JAX starts) and torch's use that many. Returns the CPUs kept."""
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(available):
        raise VtxError(f'--threads {threads}: this process may use 1 to {len(available)} CPUs')
    if backends_started() and threads != len(available):
        raise VtxError(f'--threads {threads}: JAX has already started its backends with '
                       f'{len(available)} threads; pin before the first JAX computation')
    # Linux gives a thread's affinity to the threads it starts later: XLA's pools among them.
    os.sched_setaffinity(0, available[:threads])
    return available[:threads]


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    except OSError:
        names = []
    return names[0] if names else 'unknown CPU'


def host() -> dict:
    """The compute resources of this process, for a benchmark's record."""
    return {'cpu_model': cpu_model(), 'cpus_online': os.cpu_count(),
            'threads': len(os.sched_getaffinity(0)), 'xla_flags': os.environ.get('XLA_FLAGS', '')}

"""XLA settings of the host process: how many threads XLA:CPU may use, vtx's default XLA flags,
how glibc's malloc gives XLA:CPU its memory, and where compiled programs are kept.

All act only before JAX creates its backends (the first `jax.devices()` or computation):
XLA:CPU sizes its thread pools from the process's CPU affinity at that moment, XLA reads
XLA_FLAGS once, glibc reads GLIBC_TUNABLES when the process starts, and JAX decides on its
compilation cache at the first compilation.
"""
import functools
import hashlib
import os
import platform
import re
import sys

from vtx.errors import VtxError

# Flags `import vtx` adds to XLA_FLAGS unless the user's XLA_FLAGS already names them. Each
# backend reads only its own (xla_cpu_*, xla_gpu_*, ...). No xla_cpu_* flag beat XLA:CPU's own
# defaults for every program in the measurements of docs/performance.md ("XLA:CPU options"), so
# none is set here; the forward programs' compile options are the one exception (below). On GPUs
# the latency-hiding scheduler overlaps a step's collectives (gradient all-reduce, FSDP
# all-gathers) with its compute, as NVIDIA's JAX containers do.
DEFAULT_FLAGS = {'xla_gpu_enable_latency_hiding_scheduler': 'true'}


# Compile options of the programs that run a model forward only (eval, predict, the benchmark's
# forward): where XLA:CPU runs on an x86-64 CPU with AVX-512, each matmul goes to a oneDNN matmul
# of its own instead of a YNNPACK fusion. Measured on 2 cores, each program compiled both ways in
# one process and alternated (docs/performance.md, "oneDNN for the forward programs"): on an AMD
# EPYC (Zen 5) TPS-T's eval 0.485 -> 0.445 s median and the other five families' level to 4%
# faster; on an Intel Xeon Video Swin-T's eval level to 3% faster; on the EPYC every zoo config
# 0.97-1.16x (`scripts/forward_options.py`, which checks this on any CPU). Train steps keep XLA's
# defaults (Video Swin-T's 4.3 -> 6.0 s with it on the Xeon), as do CPUs without AVX-512: XLA's
# oneDNN fusion of a dot with its neighbours killed the process (SIGILL) on an AVX2 host, and
# this form was measured on AVX-512 hosts only. A user's XLA_FLAGS naming either option wins
# (`--xla_cpu_use_onednn=false` turns it off).
FORWARD_CPU_OPTIONS = {'xla_cpu_use_onednn': True,
                       'xla_cpu_experimental_onednn_fusion_type':
                           'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def _cpuinfo(key: str) -> str | None:
    """The first CPU's `key` line of /proc/cpuinfo ('model name', 'flags'), or None."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(key):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The instruction-set flags /proc/cpuinfo lists for the first CPU (empty where it has none)."""
    return set((_cpuinfo('flags') or '').split())


def _xla_flags_named() -> set[str]:
    """The flag names the user's XLA_FLAGS sets."""
    return {part.split('=')[0].lstrip('-') for part in os.environ.get('XLA_FLAGS', '').split()}


@functools.cache
def _compiler_takes(options: tuple) -> bool:
    """Whether this jaxlib's CPU compiler accepts `options` (a tuple of items): their names and
    values are XLA's, which a later release may rename."""
    import jax
    import jax.numpy as jnp
    try:
        x = jnp.ones((8, 8), jnp.float32)
        jax.jit(jnp.matmul).lower(x, x).compile(compiler_options=dict(options))
    except Exception:  # noqa: BLE001 - any refusal means: compile without them
        return False
    return True


def forward_compiler_options() -> dict:
    """FORWARD_CPU_OPTIONS where JAX's default backend is the CPU, the CPU has AVX-512, the user's
    XLA_FLAGS names none of them and this jaxlib takes them; else no options. For `jax.jit`'s
    `compiler_options` of programs without a backward pass."""
    import jax
    if (jax.default_backend() != 'cpu' or 'avx512f' not in cpu_flags()
            or _xla_flags_named() & set(FORWARD_CPU_OPTIONS)
            or not _compiler_takes(tuple(FORWARD_CPU_OPTIONS.items()))):
        return {}
    return dict(FORWARD_CPU_OPTIONS)


def backends_started() -> bool:
    bridge = sys.modules.get('jax._src.xla_bridge')
    return bridge is not None and bridge.backends_are_initialized()


def apply_defaults(flags: dict[str, str] = DEFAULT_FLAGS) -> list[str]:
    """Adds to XLA_FLAGS each `--name=value` of `flags` whose name the user's XLA_FLAGS lacks, and
    returns those added. Once JAX has started its backends XLA no longer reads XLA_FLAGS, so then
    nothing is added."""
    current = os.environ.get('XLA_FLAGS', '')
    named = _xla_flags_named()
    added = [f'--{name}={value}' for name, value in flags.items() if name not in named]
    if not added or backends_started():
        return []
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
    return added


# XLA:CPU allocates each run's temporaries (GBs for a full-size train step) with posix_memalign,
# and with JAX's asynchronous dispatch from a worker thread of its CPU client. glibc serves a thread
# arena's request larger than its 64 MiB heap from a mapping of its own, whatever the tunables
# say, and unmaps it when freed, so every step touches its working memory anew, one 4 KiB page
# fault at a time: 740k faults and 1.8 s of kernel time per 5.2 s TPS train step on a 2-core host.
# Two settings end that (docs/performance.md, "Who allocates a step's temporaries"):
# - GLIBC_TUNABLES below: `hugetlb=1` (glibc >= 2.35) makes malloc ask for transparent huge
#   pages, which Linux's default THP mode ('madvise') grants only when asked; `mmap_max=0` serves
#   large requests of the main thread from the main arena's heap instead of fresh mappings, and
#   the 64 GiB `trim_threshold` keeps freed memory there for the next step to reuse.
# - synchronous dispatch of CPU programs (`jax_cpu_enable_async_dispatch`, read when JAX creates
#   its CPU client), so the main thread, not a worker, runs each step and allocates from that
#   arena. Programs spanning several devices dispatch asynchronously whatever it says.
# Together, on a quiet 2-core Xeon: STTS-MViT's train step 2.2 s -> 1.6 s, its kernel time 0.9 s
# -> 0.03 s a step.
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
KEEP_MEMORY_TUNABLES = {'glibc.malloc.mmap_max': '0',
                        'glibc.malloc.trim_threshold': str(64 << 30)}   # glibc >= 2.26
HUGE_PAGES_TUNABLES = {'glibc.malloc.hugetlb': '1'}                     # glibc >= 2.35


def glibc_version() -> tuple[int, int] | None:
    try:
        found = re.fullmatch(r'glibc (\d+)\.(\d+).*', os.confstr('CS_GNU_LIBC_VERSION') or '')
    except (ValueError, OSError, AttributeError):   # not Linux, or another C library
        return None
    return (int(found[1]), int(found[2])) if found else None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """Linux's transparent-huge-page mode ('always', 'madvise' or 'never'), None if unknown."""
    try:
        with open(path) as f:
            found = re.search(r'\[(\w+)\]', f.read())
    except OSError:
        return None
    return found[1] if found else None


def tunables(environ=None) -> dict[str, str]:
    """The glibc tunables GLIBC_TUNABLES of `environ` (default os.environ) sets, by name."""
    environ = os.environ if environ is None else environ
    pairs = [part.split('=', 1) for part in environ.get('GLIBC_TUNABLES', '').split(':')]
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def malloc_environment(environ=None, glibc: tuple[int, int] | None = None,
                       mode: str | None = None) -> dict | None:
    """`environ` (default os.environ; `glibc` and `mode` default to this host's) with GLIBC_TUNABLES
    set to vtx's malloc tunables, or None where vtx leaves malloc alone: no glibc or one older than
    2.26, or GLIBC_TUNABLES already set, even empty (the user's choice; naming a tunable, even with
    its documented default, also turns off glibc's adaptive thresholds, so vtx adds none to it).
    The huge-page tunable applies from glibc 2.35 where the THP mode is 'madvise' ('always' gives
    large mappings huge pages unasked, 'never' gives none)."""
    environ = dict(os.environ if environ is None else environ)
    glibc = glibc_version() if glibc is None else glibc
    mode = thp_mode() if mode is None else mode
    if glibc is None or glibc < (2, 26) or 'GLIBC_TUNABLES' in environ:
        return None
    wanted = dict(KEEP_MEMORY_TUNABLES)
    if glibc >= (2, 35) and mode == 'madvise':
        wanted.update(HUGE_PAGES_TUNABLES)
    environ['GLIBC_TUNABLES'] = ':'.join(f'{name}={value}' for name, value in wanted.items())
    return environ


def keeps_memory(environ=None) -> bool:
    """Whether the main thread's large blocks stay in its heap (GLIBC_TUNABLES sets mmap_max=0),
    which is when running CPU programs on it pays."""
    return tunables(environ).get('glibc.malloc.mmap_max') == '0'


def configure_host_memory() -> None:
    """vtx's commands call this before JAX starts: `restart_with_malloc_tunables()`, then
    `dispatch_for_host_memory()`. A program importing vtx can do the same itself; a user opts out
    by setting GLIBC_TUNABLES, even empty (`GLIBC_TUNABLES= vtx-train ...`): glibc's defaults and
    asynchronous dispatch."""
    restart_with_malloc_tunables()
    dispatch_for_host_memory()


def restart_with_malloc_tunables() -> None:
    """Re-executes the process once, with the same interpreter, options and arguments
    (`sys.orig_argv`), under `malloc_environment()` where that is not None and JAX has not
    started. Whatever ran before it runs again, so a command calls it first; it imports nothing."""
    argv = getattr(sys, 'orig_argv', [])
    environ = malloc_environment()
    if environ is None or len(argv) < 2 or backends_started():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
    except OSError:
        pass   # run on, with glibc's defaults


def dispatch_for_host_memory() -> None:
    """Where the main thread keeps its memory (`keeps_memory`) and JAX has not started, makes JAX
    dispatch CPU programs synchronously. Imports JAX."""
    if keeps_memory() and not backends_started():
        import jax
        jax.config.update('jax_cpu_enable_async_dispatch', False)


def cpu_dispatch() -> str:
    """'sync' or 'async': how JAX dispatches single-device CPU programs in this process."""
    import jax
    return 'async' if jax.config.read('jax_cpu_enable_async_dispatch') else 'sync'


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
    name = _cpuinfo('model name')
    return 'unknown CPU' if name is None else name


def host() -> dict:
    """The compute resources of this process, for a benchmark's record. `cpu_dispatch` and
    `native_window_attention` (the build of vtx's native kernel that runs Video Swin's window
    attention in eval, 'avx512' or 'avx2', or None: `vtx.kernels.native`) are None where JAX's
    default backend is not the CPU: they then touch no program timed; `forward_compiler_options`
    are those of its forward programs."""
    import jax

    from vtx.kernels import native
    on_cpu = jax.default_backend() == 'cpu'
    return {'cpu_model': cpu_model(), 'cpus_online': os.cpu_count(),
            'threads': len(os.sched_getaffinity(0)), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''), 'thp_mode': thp_mode(),
            'cpu_dispatch': cpu_dispatch() if on_cpu else None,
            'forward_compiler_options': forward_compiler_options(),
            'native_window_attention': native.window_attention_build() if on_cpu else None}


# vtx's commands that compile a model (vtx-train, vtx-predict) keep the compiled XLA programs in
# JAX's persistent compilation cache, so a rerun, a resumed run or another prediction with the
# same model and shapes loads them instead of compiling again: Video Swin-T's train step compiled
# in 11.5 s and loaded in 1.2 s on 2 cores (docs/performance.md). Timing tools (vtx-benchmark, the
# scripts) do not use it, so the compile times they report are compilations.
COMPILATION_CACHE_ENV = 'VTX_COMPILATION_CACHE'
COMPILATION_CACHE_MAX_BYTES = 4 << 30   # least recently used programs are deleted beyond it
_OFF = ('', '0', 'off', 'false', 'none')


def machine_id() -> str:
    """This machine's architecture and CPU, as a folder name: XLA:CPU compiles for the host's
    instruction set and rejects a program built on a CPU with features this one lacks."""
    try:
        with open('/proc/cpuinfo') as f:
            features = sorted({line for line in f if line.startswith(('model name', 'flags'))})
    except OSError:
        features = [platform.processor()]
    digest = hashlib.sha256(''.join(features).encode()).hexdigest()[:12]
    return f'{platform.machine() or "unknown"}-{digest}'


def compilation_cache_dir() -> str | None:
    """Where vtx's commands keep compiled programs: under $VTX_COMPILATION_CACHE (empty, 0 or off:
    nowhere) or else <vtx cache>/xla, in a folder per machine (`machine_id`), so that machines
    sharing a home folder do not load each other's CPU programs. None when turned off."""
    root = os.environ.get(COMPILATION_CACHE_ENV)
    if root is not None and root.strip().lower() in _OFF:
        return None
    if root is None:
        from vtx import hub
        root = os.path.join(hub.cache_dir(), 'xla')
    return os.path.join(os.path.abspath(os.path.expanduser(root)), machine_id())


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache in `compilation_cache_dir()` (capped at
    COMPILATION_CACHE_MAX_BYTES) and returns the folder in use, or None when it is off. A cache
    the user set up through JAX itself (JAX_COMPILATION_CACHE_DIR, `jax.config`) is kept as it
    is. Call it before the first compilation; `vtx.load` users may call it too."""
    import jax
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = compilation_cache_dir()
    if folder is not None:
        jax.config.update('jax_compilation_cache_dir', folder)
        if jax.config.jax_compilation_cache_max_size == -1:   # JAX's default: unlimited
            jax.config.update('jax_compilation_cache_max_size', COMPILATION_CACHE_MAX_BYTES)
    return folder

"""vtx's own XLA:CPU kernels in C++ (`window_attention.cc`), built on first use and called through
JAX's FFI.

The source ships with the package and is compiled by the host's C++ compiler (`$CXX`, else `g++`
or `c++`) against the FFI headers of the installed jaxlib, into `$VTX_CACHE_DIR/kernels/` under
a name that hashes the source, the jaxlib version and the flags: a later process loads it
without compiling. It is written for AVX-512F and for AVX2 with FMA: the AVX-512 build runs
where the CPU has AVX-512F, the AVX2 build where `VTX_NATIVE_KERNELS=avx2` asks for it (see
DEFAULT_BUILD). Where none runs (another CPU, no compiler, a failed build, or
`VTX_NATIVE_KERNELS=0`) `window_attention_available()` is False and vtx computes the same
attention with XLA's own kernels: the native kernel is a speed-up, never a requirement.
"""
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from vtx import hub, xla_flags
from vtx.errors import VtxError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'window_attention.cc')
TARGET = 'vtx_window_attention'   # registered as TARGET_<build>
ENV = 'VTX_NATIVE_KERNELS'
MAX_HEAD_DIM = 64
# Each build: the CPU flags (/proc/cpuinfo) it needs and the compiler flags that select its
# vector extension. Plain -mavx512f / -mavx2 rather than -march=native, so one build serves every
# CPU with that extension.
BUILDS = {'avx512': ({'avx512f'}, ('-mavx512f', '-mfma')),
          'avx2': ({'avx2', 'fma'}, ('-mavx2', '-mfma'))}
# The build `VTX_NATIVE_KERNELS=1` (the default) picks where the CPU has it. The AVX2 build is
# asked for by name only: on 2 cores of an AMD EPYC (Zen 5) with XLA held to AVX2
# (--xla_cpu_max_isa=AVX2, ONEDNN_MAX_CPU_ISA=AVX2) it ran Video Swin-T's window attention
# 1.2-1.4x faster than XLA's kernels, but the whole eval level (0.905 against 0.908 s), and no CPU
# without AVX-512 was at hand to measure it where it would run (docs/performance.md, "The
# window attention kernel's AVX2 build").
DEFAULT_BUILD = 'avx512'
# -w: GCC warns about its own intrinsics' headers.
FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC', '-w')

log = logging.getLogger(__name__)


def _compiler() -> str | None:
    return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def _flags(build: str) -> tuple:
    return (*FLAGS, *BUILDS[build][1])


def _library_path(compiler: str, build: str) -> str:
    with open(SOURCE, 'rb') as f:
        key = hashlib.sha256(f.read())
    key.update(f'{jaxlib.__version__} {compiler} {" ".join(_flags(build))}'.encode())
    return os.path.join(hub.cache_dir(), 'kernels',
                        f'window_attention-{build}-{key.hexdigest()[:16]}.so')


def _build(compiler: str, build: str, path: str):
    """Compiles SOURCE into `path` (written under a temporary name and renamed, so a concurrent
    process or a killed build never leaves a partial library there)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    try:
        subprocess.run([compiler, *_flags(build), f'-I{jax.ffi.include_dir()}', SOURCE, '-o',
                        partial], check=True, capture_output=True, text=True, timeout=300)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _wanted_build() -> str | None:
    """The build `VTX_NATIVE_KERNELS` and the CPU call for: None for 0, or for 1 (the default) on
    a CPU without DEFAULT_BUILD's extension."""
    wanted = os.environ.get(ENV, '1')
    if wanted not in ('0', '1', *BUILDS):
        raise VtxError(f'{ENV}={wanted!r}: expected 0 (XLA\'s kernels only), 1 (the default: the '
                       f'{DEFAULT_BUILD} build where the CPU has it) or a build: '
                       f'{", ".join(BUILDS)}')
    if wanted == '0':
        return None
    build = DEFAULT_BUILD if wanted == '1' else wanted
    lacks = BUILDS[build][0] - xla_flags.cpu_flags()   # all of them where the CPU is not x86-64
    if lacks and wanted != '1':
        log.warning('vtx: %s=%s, but this CPU lacks %s; window attention runs on XLA\'s kernels',
                    ENV, wanted, ', '.join(sorted(lacks)))
    return None if lacks else build


@functools.cache
def window_attention_build() -> str | None:
    """The build of `window_attention` that runs here ('avx512' or 'avx2'; see BUILDS), built or
    found built and registered with XLA; None where none can (`_wanted_build`, no compiler, a
    failed build). A failed build is logged once, with the compiler's message, and vtx goes on
    with XLA's kernels."""
    build = _wanted_build()
    if build is None:
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning('vtx: no C++ compiler (set $CXX), so window attention runs on XLA\'s kernels')
        return None
    try:
        path = _library_path(compiler, build)
        if not os.path.exists(path):
            _build(compiler, build, path)
        library = ctypes.cdll.LoadLibrary(path)
        jax.ffi.register_ffi_target(f'{TARGET}_{build}',
                                    jax.ffi.pycapsule(library.VtxWindowAttention), platform='cpu')
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, 'stderr', '') or ''
        log.warning('vtx: building or loading %s with %s failed (%s%s); window attention runs '
                    'on XLA\'s kernels', SOURCE, compiler, e,
                    f': {detail[-2000:]}' if detail else '')
        return None
    return build


def window_attention_available() -> bool:
    """Whether `window_attention` can run here (`window_attention_build()`)."""
    return window_attention_build() is not None


def window_attention(qkv, bias, period: int = 1, ids=None, mask_value=None):
    """softmax(q k^T / sqrt(head_dim) + bias + mask) v for packed qkv [windows, tokens, 3, heads,
    head_dim] (head_dim <= MAX_HEAD_DIM), float32 -> [windows, tokens, heads, head_dim]; needs
    `window_attention_available()`.

    `bias` [count, heads, tokens, tokens]: window w takes bias (w // period) % count (count 1: one
    bias for all windows). `ids`: None (no mask) or the (query, key) regions, each [rows, tokens]
    int32: window w takes row w % rows, and `mask_value` is added where a query's and a key's
    regions differ.
    """
    windows, tokens, _, heads, head_dim = qkv.shape
    if ids is None:
        empty = jnp.zeros((0, tokens), jnp.int32)
        ids, mask_value = (empty, empty), jnp.zeros((), jnp.float32)
    call = jax.ffi.ffi_call(f'{TARGET}_{window_attention_build()}',
                            jax.ShapeDtypeStruct((windows, tokens, heads, head_dim), qkv.dtype),
                            vmap_method='sequential')
    return call(qkv, bias, *(x.astype(jnp.int32) for x in ids),
                jnp.reshape(mask_value, (1,)).astype(jnp.float32), period=np.int64(period))


def window_attention_macs(qkv_shape) -> int:
    """The multiply-accumulates of `window_attention` on qkv of `qkv_shape`: its two products."""
    windows, tokens, _, heads, head_dim = qkv_shape
    return 2 * windows * heads * tokens * tokens * head_dim

"""vtx's own XLA:CPU kernels in C++ (`window_attention.cc`), built on first use and called through
JAX's FFI.

The source ships with the package and is compiled by the host's C++ compiler (`$CXX`, else `g++`
or `c++`) against the FFI headers of the installed jaxlib, into `$VTX_CACHE_DIR/kernels/` under
a name that hashes the source, the jaxlib version and the flags: a later process loads it
without compiling. Where a kernel cannot run (no AVX-512F, no compiler, a failed build, or
`VTX_NATIVE_KERNELS=0`) `window_attention_available()` is False and vtx computes the same
attention with XLA's own kernels: the native kernel is a speed-up, never a requirement.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from vtx import hub, xla_flags

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'window_attention.cc')
TARGET = 'vtx_window_attention'
ENV = 'VTX_NATIVE_KERNELS'
MAX_HEAD_DIM = 64
# AVX-512F only (the kernel's intrinsics), so one build serves every AVX-512 CPU; -w: GCC warns
# about its own intrinsics' headers.
FLAGS = ('-O3', '-mavx512f', '-mfma', '-std=c++17', '-shared', '-fPIC', '-w')

log = logging.getLogger(__name__)


def _compiler() -> str | None:
    return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def _library_path(compiler: str) -> str:
    with open(SOURCE, 'rb') as f:
        key = hashlib.sha256(f.read())
    key.update(f'{jaxlib.__version__} {compiler} {" ".join(FLAGS)}'.encode())
    return os.path.join(hub.cache_dir(), 'kernels', f'window_attention-{key.hexdigest()[:16]}.so')


def _build(compiler: str, path: str):
    """Compiles SOURCE into `path` (written under a temporary name and renamed, so a concurrent
    process or a killed build never leaves a partial library there)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, f'-I{jax.ffi.include_dir()}', SOURCE, '-o', partial],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


@functools.cache
def window_attention_available() -> bool:
    """Whether `window_attention` can run here: an x86-64 CPU with AVX-512F, the kernel built (or
    found built) and registered with XLA, and `VTX_NATIVE_KERNELS` not 0. A failed build is
    logged once, with the compiler's message, and vtx goes on with XLA's kernels."""
    if os.environ.get(ENV, '1') == '0':
        return False
    if platform.machine() not in ('x86_64', 'AMD64') or 'avx512f' not in xla_flags.cpu_flags():
        return False
    compiler = _compiler()
    if compiler is None:
        log.warning('vtx: no C++ compiler (set $CXX), so window attention runs on XLA\'s kernels')
        return False
    try:
        path = _library_path(compiler)
        if not os.path.exists(path):
            _build(compiler, path)
        library = ctypes.cdll.LoadLibrary(path)
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.VtxWindowAttention),
                                    platform='cpu')
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, 'stderr', '') or ''
        log.warning('vtx: building or loading %s with %s failed (%s%s); window attention runs '
                    'on XLA\'s kernels', SOURCE, compiler, e,
                    f': {detail[-2000:]}' if detail else '')
        return False
    return True


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
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((windows, tokens, heads, head_dim),
                                                         qkv.dtype),
                            vmap_method='sequential')
    return call(qkv, bias, *(x.astype(jnp.int32) for x in ids),
                jnp.reshape(mask_value, (1,)).astype(jnp.float32), period=np.int64(period))


def window_attention_macs(qkv_shape) -> int:
    """The multiply-accumulates of `window_attention` on qkv of `qkv_shape`: its two products."""
    windows, tokens, _, heads, head_dim = qkv_shape
    return 2 * windows * heads * tokens * tokens * head_dim

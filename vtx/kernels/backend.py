"""The one switch between the kernels' CPU forms and the forms accelerators run."""
import contextlib

import jax

_accelerator_forms = False   # set by `accelerator_forms`


@contextlib.contextmanager
def accelerator_forms():
    """Within it, every kernel is traced in the form an accelerator runs, on any backend (e.g. to
    read an accelerator step's memory off a CPU compilation): attention whole, patch embeddings
    as convolutions."""
    global _accelerator_forms
    before, _accelerator_forms = _accelerator_forms, True
    try:
        yield
    finally:
        _accelerator_forms = before


def cpu_forms() -> bool:
    """Whether kernels take their CPU-only forms (attention in chunks and d-major products, patch
    embeddings as matmuls): on CPU, outside `accelerator_forms`."""
    return not _accelerator_forms and jax.default_backend() == 'cpu'

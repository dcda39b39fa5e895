"""Host batches put on the devices ahead of use, so that the copy overlaps the step.

`DevicePrefetch` keeps `size` global batches in flight (2: double buffering, as big_vision's
prefetch does): while the step runs on batch i, batch i+1 is already being transferred, because
`jax.make_array_from_process_local_data` returns as soon as the copy is enqueued. It also
measures how long the loop waited for the host input, which tells input-bound from
compute-bound runs (`data_time` in metrics.jsonl).
"""
import collections
import time
from typing import Iterator

import jax

from vtx import sharding
from vtx.errors import VtxError


def global_batch(local, mesh):
    """This process's batch (numpy leaves) as global arrays split over the mesh's 'data' axis."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x),
        local)


class DevicePrefetch:
    """Iterates `global_batch(b, mesh)` for b in `local_batches`, `size` batches ahead.

    `data_time` is the total seconds spent in `next(local_batches)` (the host pipeline), the
    part of the loop an input-bound run waits on; the caller reads and resets it per log period.
    """

    def __init__(self, local_batches: Iterator, mesh, size: int = 2):
        if size < 1:
            raise VtxError(f'device prefetch size {size}: expected at least 1')
        self._local = local_batches
        self._mesh = mesh
        self._size = size
        self._queue = collections.deque()
        self.data_time = 0.0

    def _enqueue(self):
        start = time.perf_counter()
        try:
            local = next(self._local)
        except StopIteration:
            return
        finally:
            self.data_time += time.perf_counter() - start
        self._queue.append(global_batch(local, self._mesh))

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._queue) < self._size:
            filled = len(self._queue)
            self._enqueue()
            if len(self._queue) == filled:
                break
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()

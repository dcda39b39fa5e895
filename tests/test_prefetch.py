"""Device prefetch (`vtx.prefetch`): the same batches, in the same order and placement as putting
each host batch on the devices when it is used, with `size` batches in flight."""
import time

import jax
import numpy as np
import pytest

from vtx import prefetch, sharding
from vtx.errors import VtxError


class CountingSource:
    """Host batches 0, 1, 2, ... (image [4, 2], label [4]); counts how many were drawn."""

    def __init__(self, count, delay=0.0):
        self.count, self.delay, self.drawn = count, delay, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.drawn == self.count:
            raise StopIteration
        time.sleep(self.delay)
        i = self.drawn
        self.drawn += 1
        return {'image': np.full((4, 2), i, np.float32), 'label': np.arange(4, dtype=np.int32) + i}


def test_same_batches_order_and_sharding_with_two_in_flight():
    mesh = sharding.make_mesh(type('MeshConfig', (), {'model_axis_size': 1}))
    source = CountingSource(5)
    batches = prefetch.DevicePrefetch(source, mesh, size=2)
    first = next(batches)
    assert source.drawn == 2, 'the next batch must be on its way while the first is used'
    got = [first] + list(batches)
    assert len(got) == 5
    for i, batch in enumerate(got):
        np.testing.assert_array_equal(batch['image'], np.full((4, 2), i))
        np.testing.assert_array_equal(batch['label'], np.arange(4) + i)
        for leaf in jax.tree.leaves(batch):
            assert leaf.sharding.is_equivalent_to(sharding.batch_sharding(mesh, leaf.ndim), leaf.ndim)


def test_data_time_is_the_wait_for_host_input():
    mesh = sharding.make_mesh(type('MeshConfig', (), {'model_axis_size': 1}))
    batches = prefetch.DevicePrefetch(CountingSource(3, delay=0.05), mesh)
    list(batches)
    assert 0.15 <= batches.data_time < 1.0


def test_size_below_one_is_an_error():
    with pytest.raises(VtxError, match='prefetch size 0'):
        prefetch.DevicePrefetch(CountingSource(1), None, size=0)

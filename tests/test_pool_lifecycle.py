"""A pool dropped without close() is freed by reference counting alone, as any Python object is:
no reference cycle runs through the core's callables (errors, growth) back to the pool."""

from __future__ import annotations

import gc
import os
import weakref

import pytest

from fastalloc_shm import FixedPool, GrowingPool, GrowthStrategy, ThreadLocalPool, attach

# More than the client table holds (256 entries): a pool that is never freed keeps its entry.
DROPS = 300


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_gc():
    """Reference counting alone: the cycle collector does not run during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", [FixedPool, GrowingPool, ThreadLocalPool])
def test_a_dropped_pool_is_freed_without_the_cycle_collector(pool_name, no_gc, kind):
    extra = {"growth_strategy": GrowthStrategy.linear(4), "max_capacity": 64} if kind is not FixedPool else {}
    with kind.create(pool_name, capacity=4, slot_size=64, **extra) as owner:
        fds = _open_fds()
        for _ in range(DROPS):
            p = attach(pool_name)
            p.release(p.allocate({"x": 1}))
            del p
        assert _open_fds() == fds, "file descriptors leak with every pool dropped without close()"
        last = attach(pool_name)  # the client table still has room: every dropped pool gave its entry back
        assert last.get(last.allocate("still works")) == "still works"
        last.close()
        assert len(owner.clients()) == 1


def test_dropping_the_last_reference_closes_the_pool(pool_name, no_gc):
    with FixedPool.create(pool_name, capacity=4, slot_size=64, growth_strategy=GrowthStrategy.none()) as owner:
        p = attach(pool_name)
        ref = weakref.ref(p)
        del p
        assert ref() is None
        assert len(owner.clients()) == 1


def test_a_bound_method_outliving_its_pool_keeps_the_attachment_until_it_goes(pool_name, no_gc):
    """A hot method is the core's own callable: held after its pool object is gone, it keeps the
    attachment open (it works, and the client stays registered); dropped, the attachment goes."""
    with FixedPool.create(pool_name, capacity=4, slot_size=64) as owner:
        p = attach(pool_name)
        allocate = p.allocate
        del p
        handle = allocate("x")
        assert owner.get(handle) == "x" and len(owner.clients()) == 2
        del allocate
        assert len(owner.clients()) == 1
        owner.release(handle)


def test_a_pool_nobody_keeps_still_answers_the_call_made_on_it(pool_name):
    """`attach(name).get(h)`: the pool object is gone before its hot method (the core's own
    callable) runs; the call still works, and once it is done the attachment lets go of
    everything: its client entry, its file descriptor, its mapping."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        gc.collect()
        fds = len(os.listdir("/proc/self/fd"))
        handle = attach(pool_name).allocate({"x": 1})
        assert attach(pool_name).get(handle) == {"x": 1}
        attach(pool_name).release(handle)
        gc.collect()
        assert len(pool) == 0 and len(pool.clients()) == 1
        assert len(os.listdir("/proc/self/fd")) == fds

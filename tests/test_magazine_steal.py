"""A ThreadLocalPool's magazine never hides a free slot (issue 18).

Slots released into a process's magazine stay CACHED by that process; an
allocator that finds the free lists empty steals them by compare-and-swap, and
a release into a magazine wakes an allocator that waits. Real processes only.
"""

from __future__ import annotations

import multiprocessing as mp
import time

from fastalloc_shm import GrowingPool, GrowthStrategy, PoolExhausted, ThreadLocalPool, attach

CAPACITY = 64
WAIT = 30


def _consumer(name: str, handles: mp.Queue, done: mp.Queue) -> None:
    """Release every handle of each batch it is given, then say how many."""
    pool = attach(name)
    while (batch := handles.get(timeout=WAIT)) is not None:
        for handle in batch:
            pool.release(handle)
        done.put(len(batch))
    pool.close()


def _cache_one_and_wait(name: str, handle: int, cached: mp.Event, finish: mp.Event) -> None:
    """Release `handle` into this process's magazine and stay alive (so the slot stays cached here)."""
    pool = attach(name)
    pool.release(handle)
    assert pool._core.cached == 1
    cached.set()
    finish.wait(WAIT)
    pool.close()


def test_a_producer_never_sees_a_full_pool_while_consumers_hold_its_free_slots(pool_name):
    """1 producer allocating, 2 consumers releasing: 1,000 rounds of the whole capacity, no PoolExhausted."""
    ctx = mp.get_context("fork")
    with ThreadLocalPool.create(pool_name, capacity=CAPACITY, slot_size=128, batch_size=32) as pool:
        queues = [ctx.Queue() for _ in range(2)]
        done = ctx.Queue()
        consumers = [ctx.Process(target=_consumer, args=(pool_name, q, done)) for q in queues]
        for c in consumers:
            c.start()
        try:
            for _ in range(1000):
                assert len(pool) == 0
                handles = [pool.allocate(b"x" * 100) for _ in range(CAPACITY)]  # PoolExhausted fails the test
                queues[0].put(handles[::2])
                queues[1].put(handles[1::2])
                assert done.get(timeout=WAIT) + done.get(timeout=WAIT) == CAPACITY
        finally:
            for q in queues:
                q.put(None)
            for c in consumers:
                c.join(WAIT)
        assert [c.exitcode for c in consumers] == [0, 0]
        stats = pool.statistics()
        assert stats.steals > 0  # the slots came back through the consumers' magazines
        assert stats.allocation_failures == 0
        assert stats.total_allocations == 1000 * CAPACITY


def _held_by_another_magazine(pool, ctx):
    """Fill the pool; a child releases one handle into its magazine and stays alive."""
    handles = [pool.allocate(i) for i in range(pool.capacity)]
    cached, finish = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_cache_one_and_wait, args=(pool.name, handles[0], cached, finish))
    child.start()
    assert cached.wait(WAIT)
    return child, finish


def test_allocate_takes_the_only_free_slot_from_another_live_processs_magazine(pool_name):
    ctx = mp.get_context("fork")
    with ThreadLocalPool.create(pool_name, capacity=4, batch_size=2) as pool:
        child, finish = _held_by_another_magazine(pool, ctx)
        try:
            assert len(pool) == 3
            h = pool.allocate("stolen")  # no timeout: the free slot is there, in the child's magazine
            assert pool.get(h) == "stolen"
            assert pool.statistics().steals == 1
            try:
                pool.allocate("none left")
                raise AssertionError("a fifth slot was handed out")
            except PoolExhausted:
                pass
        finally:
            finish.set()
            child.join(WAIT)
        assert child.exitcode == 0


def _release_later(name: str, handle: int, delay: float) -> None:
    pool = attach(name)
    time.sleep(delay)
    pool.release(handle)
    time.sleep(2)  # alive, the slot in its magazine, while the waiter takes it
    pool.close()


def test_a_waiting_allocate_sees_a_release_into_another_magazine_within_a_second(pool_name):
    ctx = mp.get_context("fork")
    with ThreadLocalPool.create(pool_name, capacity=4, batch_size=2) as pool:
        handles = [pool.allocate(i) for i in range(4)]
        child = ctx.Process(target=_release_later, args=(pool_name, handles[0], 0.5))
        child.start()
        try:
            started = time.monotonic()
            h = pool.allocate("after the release", timeout=5)
            waited = time.monotonic() - started
            assert pool.get(h) == "after the release"
            assert waited < 1.5, waited  # the release is at 0.5 s; seen within a second of it
        finally:
            child.join(WAIT)
        assert child.exitcode == 0


def test_a_growing_threadlocal_pool_steals_before_it_grows(pool_name):
    ctx = mp.get_context("fork")
    with ThreadLocalPool.create(pool_name, capacity=4, batch_size=2, max_capacity=64,
                                growth_strategy=GrowthStrategy.linear(4)) as pool:
        child, finish = _held_by_another_magazine(pool, ctx)
        try:
            pool.allocate("stolen, not grown")
            assert pool.capacity == 4 and pool.statistics().growth_count == 0
            pool.allocate("grown now")
            assert pool.capacity == 8
        finally:
            finish.set()
            child.join(WAIT)


def test_other_kinds_count_no_steals(pool_name):
    with GrowingPool.create(pool_name, capacity=2) as pool:
        pool.release(pool.allocate(1))
        assert pool.statistics().steals == 0

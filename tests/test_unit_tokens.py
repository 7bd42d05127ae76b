"""Unit: tokens.c, the free-slot semaphore in front of the free lists.

Its invariant (the top of tokens.c): the count is derived state, the free lists
under the mutex are the truth. A count too low or too high only heals, and
recovery re-derives it (tokens_derive) from the slots free; a timed allocate
sleeps on it for a release, with signals running meanwhile.
"""

from __future__ import annotations

import threading
import time

import posix_ipc
import pytest

from fastalloc_shm import FixedPool, PoolExhausted

from .alarms import Interrupted, interrupted_after


@pytest.fixture
def pool(pool_name):
    with FixedPool.create(pool_name, capacity=8) as p:
        yield p


def skew(pool, delta: int) -> None:
    sem = posix_ipc.Semaphore(pool._sem_name)
    try:
        for _ in range(abs(delta)):
            sem.release() if delta > 0 else sem.acquire(0)
    finally:
        sem.close()


@pytest.mark.parametrize("delta", [+5, -3, -6])
def test_recover_re_derives_the_count_from_the_free_slots(pool, delta):
    handles = [pool.allocate(i) for i in range(2)]
    assert pool._core.semaphore_value == 6
    skew(pool, delta)
    assert pool._core.semaphore_value == 6 + delta
    report = pool.recover()
    assert not report.free_list_rebuilt  # nothing to repair but the count
    assert pool._core.semaphore_value == 6
    pool.release(handles[0])
    assert pool._core.semaphore_value == 7


def test_a_count_too_low_does_not_hide_a_free_slot(pool):
    skew(pool, -8)
    assert pool._core.semaphore_value == 0
    handles = [pool.allocate(i) for i in range(8)]  # slots without tokens: found in the free lists
    with pytest.raises(PoolExhausted):
        pool.allocate("ninth")
    for h in handles:
        pool.release(h)
    assert pool._core.semaphore_value == 8


def test_a_count_too_high_does_not_invent_a_slot(pool):
    handles = [pool.allocate(i) for i in range(8)]
    skew(pool, +3)
    with pytest.raises(PoolExhausted):
        pool.allocate("none free", timeout=0.2)
    assert [pool.get(h) for h in handles] == list(range(8))


def test_a_timed_allocate_waits_for_a_release(pool):
    handles = [pool.allocate(i) for i in range(8)]
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.allocate("late", timeout=0.15)
    assert time.monotonic() - started >= 0.14
    threading.Timer(0.2, pool.release, (handles[3],)).start()
    h = pool.allocate("woken", timeout=5)
    assert pool.get(h) == "woken" and time.monotonic() - started < 5



def test_a_signal_handler_runs_during_a_wait(pool):
    for i in range(8):
        pool.allocate(i)

    with interrupted_after(0.15), pytest.raises(Interrupted):
        pool.allocate("never", timeout=30)
    assert len(pool) == 8 and pool._core.semaphore_value == 0

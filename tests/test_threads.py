"""Threads of one process on one pool while other processes contend for its lock.

A thread that waits for the lock lets the GIL go, so other threads of its process run
meanwhile: magazines, batches and close() must all stay sound across such waits
(`make test-asan` runs this file, so an overflow of a process's magazine fails there)."""

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from fastalloc_shm import FixedPool, PoolExhausted, ThreadLocalPool, ThreadSafePool

from .alarms import Interrupted, interrupted_after
from .invariants import check_invariants
from .test_crash import Child

FORK = mp.get_context("fork")


def _contend(name: str, stop, cls) -> None:
    """Another process: batches under the lock, as fast as it can, until told to stop."""
    pool = cls.attach(name)
    while not stop.is_set():
        try:
            pool.release_many(pool.allocate_many(range(6)))
        except PoolExhausted:
            time.sleep(0.0005)
    pool.close()


@pytest.mark.parametrize("cls", [ThreadLocalPool, ThreadSafePool, FixedPool])
def test_threads_and_a_contending_process_lose_and_corrupt_nothing(pool_name, cls):
    extra = {"batch_size": 4} if cls is ThreadLocalPool else {}
    with cls.create(pool_name, capacity=96, slot_size=64, **extra) as pool:
        stop = FORK.Event()
        other = FORK.Process(target=_contend, args=(pool_name, stop, cls))
        other.start()
        errors: list[str] = []

        def churn(t: int) -> None:
            held = []
            for n in range(3000):
                try:
                    held.append((pool.allocate({"t": t, "n": n}), n))
                except PoolExhausted:
                    pass
                if len(held) > 5 or (held and n % 3 == 0):
                    h, m = held.pop(0)
                    if pool.get(h) != {"t": t, "n": m}:
                        errors.append(f"thread {t} read back a wrong value")
                    pool.release(h)
            for h, m in held:
                if pool.get(h) != {"t": t, "n": m}:
                    errors.append(f"thread {t} read back a wrong value")
                pool.release(h)

        threads = [threading.Thread(target=churn, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        stop.set()
        other.join(60)
        assert other.exitcode == 0
        assert not errors, errors[:3]
        assert len(pool) == 0
        counts = check_invariants(pool)
        assert counts["allocated"] == counts["writing"] == 0


def test_close_waits_for_another_thread_waiting_inside_the_pool(pool_name):
    with FixedPool.create(pool_name, capacity=1, lock_timeout=5) as pool:
        pool.allocate("the only slot")
        got = []
        waiter = threading.Thread(target=lambda: got.append(pool.try_allocate("waits", timeout=1.0)))
        waiter.start()
        deadline = time.monotonic() + 5
        while pool._core.operations == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pool._core.operations == 1  # the waiter is inside the core, waiting without the GIL
        started = time.monotonic()
        pool.close()  # returns once the waiter's allocate has timed out and left
        assert time.monotonic() - started >= 0.5
        waiter.join(10)
        assert got == [None]
    assert pool._closed


def test_an_enormous_lock_timeout_waits_like_any_other(tmp_path, pool_name):
    """lock_timeout=1e300 is finite, so it is accepted; its deadline must still be a time the kernel takes."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=1e300) as pool:
        child = Child(tmp_path, pool_name, "allocate", "alloc.popped", action="stop")  # holds the lock, stopped
        try:
            got = []
            waiter = threading.Thread(target=lambda: got.append(pool.allocate("after the holder")))
            waiter.start()
            time.sleep(0.2)
            assert waiter.is_alive(), "the waiter should still be waiting for the stopped holder"
            os.kill(child.proc.pid, signal.SIGCONT)
            waiter.join(30)
            assert got and pool.get(got[0]) == "after the holder"
        finally:
            os.kill(child.proc.pid, signal.SIGCONT)
            child.proc.communicate(timeout=30)
        assert child.proc.returncode == 0



def test_a_signal_handler_runs_while_a_call_waits_for_the_lock(tmp_path, pool_name):
    """Waits are sliced, with signals checked between slices: a handler's exception arrives while the
    holder is still stopped, long before lock_timeout, and the pool is whole afterwards."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=30) as pool:
        child = Child(tmp_path, pool_name, "allocate", "alloc.popped", action="stop")
        try:
            started = time.monotonic()
            with interrupted_after(0.2), pytest.raises(Interrupted):
                pool.allocate("waits for a stopped holder")
            assert time.monotonic() - started < 10, "the handler ran only when the wait was over"
        finally:
            os.kill(child.proc.pid, signal.SIGCONT)
            child.proc.communicate(timeout=30)
        h = pool.allocate("after")
        assert pool.get(h) == "after" and len(pool) == 2  # the child's allocation and this one

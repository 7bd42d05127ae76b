"""A fork() while another thread grows the pool: the child inherits no growth lock.

A growth holds an exclusive flock of the main segment; a flock belongs to the open
file description, which fork() shares. The child closes the fds of growths in
flight in its parent's other threads, so once the parent's growth ends, the next
growth (of any process) is not kept waiting for the child to exit.
"""

from __future__ import annotations

import os
import threading

import pytest

from fastalloc_shm import GrowingPool, GrowthStrategy, _growth

HOLD = 10.0  # seconds an event wait may take before the test is declared stuck


@pytest.fixture
def held_growth(monkeypatch):
    """Makes this process's next growth stop, holding the growth flock, until `finish` is set."""
    inside, finish = threading.Event(), threading.Event()
    add_extent = _growth._add_extent

    def held(pool):
        inside.set()
        assert finish.wait(HOLD), "the test never let the growth finish"
        return add_extent(pool)

    monkeypatch.setattr(_growth, "_add_extent", held)
    yield inside, finish
    finish.set()


def _fork_a_child_that_lives() -> tuple[int, int]:
    """Fork a child that lives until the returned pipe's write end is closed; (pid, write end)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's word, touch nothing
        try:
            os.close(write_end)
            os.read(read_end, 1)
        finally:
            os._exit(0)
    os.close(read_end)
    return pid, write_end


def test_a_child_forked_during_a_growth_does_not_keep_the_growth_lock(pool_name, held_growth, monkeypatch):
    inside, finish = held_growth
    with GrowingPool.create(pool_name, capacity=2, slot_size=64, max_capacity=64,
                            growth_strategy=GrowthStrategy.linear(2), lock_timeout=0.5) as pool:
        handles = [pool.allocate(i) for i in range(2)]
        grower = threading.Thread(target=lambda: handles.append(pool.allocate("grows")))
        grower.start()
        assert inside.wait(HOLD), "the growth never started"
        pid, keep_alive = _fork_a_child_that_lives()  # while the other thread holds the growth's flock
        try:
            monkeypatch.undo()  # later growths are not held
            finish.set()
            grower.join(HOLD)
            assert pool.capacity == 4
            handles.append(pool.allocate("fills the pool"))
            assert len(pool) == pool.capacity
            handles.append(pool.allocate("the next growth, while the child lives"))
            assert pool.capacity == 6
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the child ended before the second growth"
        finally:
            os.close(keep_alive)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        pool.release_many(handles)


def test_a_fork_outside_any_growth_leaves_growth_alone(pool_name):
    with GrowingPool.create(pool_name, capacity=1, slot_size=64, max_capacity=8,
                            growth_strategy=GrowthStrategy.linear(1), lock_timeout=0.5) as pool:
        pid, keep_alive = _fork_a_child_that_lives()
        try:
            handles = [pool.allocate(i) for i in range(3)]
            assert pool.capacity == 3
        finally:
            os.close(keep_alive)
            os.waitpid(pid, 0)
        pool.release_many(handles)
        assert not _growth._in_flight


def test_no_growth_fd_is_left_recorded_after_a_growth_fails(pool_name, monkeypatch):
    def refuse(pool):
        raise OSError("no room")

    monkeypatch.setattr(_growth, "_add_extent", refuse)
    with GrowingPool.create(pool_name, capacity=1, slot_size=64, max_capacity=8,
                            growth_strategy=GrowthStrategy.linear(1), lock_timeout=0.5) as pool:
        h = pool.allocate(0)
        with pytest.raises(OSError):
            pool.allocate(1)
        assert not _growth._in_flight
        pool.release(h)


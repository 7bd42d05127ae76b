"""Unit coverage, round 2: channels.c when the lock cannot be had, and a wait that a signal ends (issue 22, item 7).

Pinned: opening a channel and put_handle wait for the pool lock like any
operation: with another process stopped holding it they raise LockTimeout
naming it and change nothing (no channel entry, the handle still the caller's);
put_many waiting for room on a full pool gives back every token it held when a
signal handler's exception ends the wait, and puts nothing.
"""

from __future__ import annotations

import time

import pytest

from fastalloc_shm import FixedPool, LockTimeout

from .alarms import Interrupted, interrupted_after
from .test_unit_lock import Holder


def test_opening_a_channel_and_put_handle_time_out_on_a_held_lock_and_change_nothing(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=0.2) as pool:
        h = pool.allocate("mine")
        jobs = pool.channel("jobs")
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            with pytest.raises(LockTimeout, match=f"held by pid {holder.pid} "):
                pool.channel("other")
            with pytest.raises(LockTimeout, match=f"held by pid {holder.pid} "):
                jobs.put_handle(h)
            assert pool.get(h) == "mine"
        finally:
            holder.kill()
        assert [name for name in pool._core.channels() if name] == ["jobs"]
        assert jobs.statistics()["length"] == 0
        jobs.put_handle(h)
        assert jobs.get(timeout=5) == "mine"



def test_a_signal_ending_put_manys_wait_gives_its_tokens_back(pool_name):
    """Capacity 4 with 3 held: put_many of 2 waits for room holding the one free slot's token; a
    SIGALRM handler's exception ends the wait: it comes out, the token is back, nothing was put."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        held = [pool.allocate(i) for i in range(3)]
        jobs = pool.channel("jobs")
        assert pool._core.semaphore_value == 1

        started = time.monotonic()
        with interrupted_after(0.3), pytest.raises(Interrupted):
            jobs.put_many(["a", "b"], timeout=30)
        assert time.monotonic() - started < 10
        assert pool._core.semaphore_value == 1, "a token the wait held was not given back"
        assert jobs.statistics()["length"] == 0 and len(pool) == 3
        jobs.put_many(["a"])
        assert jobs.get(timeout=5) == "a"
        for h in held:
            pool.release(h)


def test_a_channel_item_whose_bytes_do_not_decode_is_a_serialization_error(pool_name):
    """get()/get_many() of an item whose slot bytes are not msgpack raise SerializationError saying
    it is a channel's item (it has no handle any more: get freed its slot), not a formatting TypeError."""
    import pytest

    from fastalloc_shm import FixedPool, SerializationError

    with FixedPool.create(pool_name, capacity=4) as pool:
        todo = pool.channel("todo")
        for take in (lambda: todo.get(timeout=1), lambda: todo.get_many(4, timeout=1)):
            h = pool.allocate("hello world")  # 12 bytes of msgpack
            with pool.buffer(h) as view:
                view[:12] = b"\xc1" * 12  # 0xc1: never used in msgpack
            todo.put_handle(h)
            with pytest.raises(SerializationError, match="a channel's item is not valid msgpack"):
                take()
        assert len(pool) == 0

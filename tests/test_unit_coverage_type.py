"""Unit coverage: type.c's lifetime paths (issue 22, item 7).

The Core is closed until __init__ succeeds; every way __init__ can fail leaves a
closed Core that releases what it took; close() is idempotent, refuses while a
buffer() view is exported, waits for other threads' operations up to
lock_timeout and refuses from inside an operation of its own thread; a closed
Core refuses every operation; a SlotExport refuses a new view once its pool is
closed; a Core is not picklable (a pool is: it re-attaches by name).
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time

import pytest

from fastalloc_shm import FastallocError, FixedPool, PoolExhausted, ThreadLocalPool, _core, attach
from fastalloc_shm import pool as pool_module

from .alarms import interrupted_after


@pytest.fixture
def core_arguments(pool_name, monkeypatch):
    """(pool, args, kwargs) the pool's Core was built with: recorded as the pool builds it."""
    seen = []
    real = _core.Core

    def recording(*args, **kwargs):
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(pool_module._core, "Core", recording)
    pool = FixedPool.create(pool_name, capacity=4)
    monkeypatch.setattr(pool_module._core, "Core", real)
    try:
        yield pool, *seen[0]
    finally:
        pool.close()
        pool.unlink()


def fresh_core(args, kwargs, **changes):
    """A Core built by hand from the pool's arguments with `changes`: (core, the exception or None)."""
    core = _core.Core.__new__(_core.Core)
    kwargs = dict(kwargs, **{k: v for k, v in changes.items() if k in kwargs})
    args = list(args)
    for position, name in enumerate(("buffer", "sem_name", "segment_path", "extent_prefix")):
        if name in changes:
            args[position] = changes[name]
    try:
        core.__init__(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - returned for the test to judge
        return core, exc.with_traceback(None)  # its frames would keep the core (and its view) alive
    return core, None


def test_a_second_core_on_the_same_segment_works_and_closes(core_arguments):
    """A Core built again from the pool's own arguments is a second client of the pool: it
    sees the pool's values and leaves the client table when closed (twice is a no-op)."""
    pool, args, kwargs = core_arguments
    h = pool.allocate("shared")
    core, exc = fresh_core(args, kwargs, creating=False)
    assert exc is None and not core.closed and core.entry >= 0 and core.entry != pool._core.entry
    assert core.get(h) == "shared"
    entries = {row.entry for row in pool.clients()}
    assert core.entry in entries
    core.close()
    core.close()
    assert core.closed and core.entry not in {row.entry for row in pool.clients()}


# Before the callables are kept (the trusted uids are read first) a refusal cannot name the
# pool: "never initialized"; after, the pool's errors callable says "closed".
NEVER = (RuntimeError, "this Core was never initialized")
CLOSED = (FastallocError, "is closed in this process")


@pytest.mark.parametrize("change, error, words, refusal", [
    ({"trusted": 5}, TypeError, None, NEVER),
    ({"trusted": ("root",)}, TypeError, None, NEVER),
    ({"trusted": (-1,)}, OverflowError, None, NEVER),
    ({"buffer": b"read-only bytes"}, BufferError, None, CLOSED),
    ({"buffer": bytearray(4096)}, FastallocError, "the pool header does not match its segment", CLOSED),
    ({"sem_name": "/fastalloc.no-such-semaphore"}, FastallocError, "cannot open the pool's free-slot semaphore", CLOSED),
])
def test_a_failed_init_leaves_a_closed_core(core_arguments, change, error, words, refusal):
    """__init__ that fails (a trusted list that is not uids, a buffer that is read-only or not a
    pool header, a semaphore that does not exist) raises that error and leaves a Core that is
    closed, refuses operations, cannot be initialised again and is collected without harm."""
    pool, args, kwargs = core_arguments
    core, exc = fresh_core(args, kwargs, **change)
    assert isinstance(exc, error), exc
    if words:
        assert words in str(exc)
    assert core.closed and core.semaphore_value == -1
    with pytest.raises(refusal[0], match=refusal[1]):
        core.allocate(1)
    with pytest.raises(RuntimeError, match="initialized once"):
        core.__init__(*args, **kwargs)
    clients = len(pool.clients())
    del core, exc
    gc.collect()
    assert len(pool.clients()) == clients and pool.get(pool.allocate("alive")) == "alive"


def test_init_refuses_wrong_argument_types(core_arguments):
    """__init__ with a missing or ill-typed argument is a TypeError, and the Core may still be
    initialised after it (the arguments are parsed before it counts as initialised)."""
    pool, args, kwargs = core_arguments
    core = _core.Core.__new__(_core.Core)
    with pytest.raises(TypeError):
        core.__init__()
    with pytest.raises(TypeError):
        core.__init__(*args, **dict(kwargs, lock_timeout="slow"))
    core.__init__(*args, **dict(kwargs, creating=False))
    assert not core.closed
    core.close()


def test_every_operation_of_a_closed_core_says_closed(pool_name):
    """After close(), every method that touches a mapping raises FastallocError('... is closed
    in this process ...'); close() and after_fork() are no-ops; the getters still answer."""
    pool = FixedPool.create(pool_name, capacity=4)
    core = pool._core
    h = pool.allocate("x")
    pool.unlink()
    calls = [lambda: core.allocate(1), lambda: core.get(h), lambda: core.set(h, 1), lambda: core.release(h),
             lambda: core.allocate_many([1]), lambda: core.release_many([h]), lambda: core.buffer(h),
             lambda: core.recover(False, 1.0), lambda: core.commit_extent(1, 4), lambda: core.pre_initialize(1),
             core.take_slot, lambda: core.publish_slot(0, 1), lambda: core.unwind_slot(0), core.counters, core.len,
             core.reset_statistics, core.clients, core.slot_states, lambda: core.channel_open("c"), core.channels]
    for call in calls:
        with pytest.raises(FastallocError, match="is closed in this process"):
            call()
    assert core.close() is None and core.after_fork(0) is None
    assert (core.closed, core.operations, core.exports, core.cached, core.semaphore_value) == (True, 0, 0, 0, -1)
    assert core.extents == 0 or core.extents >= 1  # a getter, never raising


def test_after_fork_refuses_a_non_int(pool_name):
    """after_fork(start_ticks) takes an int: anything else is a TypeError and the entry stays."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        entry = pool._core.entry
        with pytest.raises(TypeError):
            pool._core.after_fork("soon")
        with pytest.raises(OverflowError):
            pool._core.after_fork(-1)
        assert pool._core.entry == entry


def test_close_refuses_while_a_view_is_exported_and_the_view_then_refuses_new_views(pool_name):
    """close() with a buffer() view out is BufferError naming how many; each view counts, and
    once every view is released close() works; afterwards the SlotExport behind an old view
    refuses a new memoryview with BufferError('the pool is closed in this process')."""
    pool = FixedPool.create(pool_name, capacity=4)
    try:
        h = pool.allocate(b"abc")
        first, second = pool.buffer(h), pool.buffer(h)
        assert pool._core.exports == 2 and bytes(first[:4]) == bytes(second[:4])
        with pytest.raises(BufferError, match="2 memoryview"):
            pool.close()
        assert not pool._core.closed
        exporter = first.obj
        first.release()
        with pytest.raises(BufferError, match="1 memoryview"):
            pool.close()
        second.release()
        assert pool._core.exports == 0
        pool.close()
        with pytest.raises(BufferError, match="the pool is closed in this process"):
            memoryview(exporter)
    finally:
        pool.close()
        pool.unlink()


def test_a_view_made_again_from_its_exporter_counts_and_blocks_release(pool_name):
    """memoryview(view.obj) is one more export of the same slot: it is counted, release() of
    the slot names the number of views, and it is uncounted when released."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        h = pool.allocate(b"abc")
        view = pool.buffer(h)
        again = memoryview(view.obj)
        assert pool._core.exports == 2
        with pytest.raises(BufferError, match=r"slot \d+ has 2 memoryview"):
            pool.release(h)
        again.release()
        view.release()
        pool.release(h)
        assert len(pool) == 0


def test_close_from_inside_an_operation_of_this_thread_raises(pool_name):
    """A signal handler that closes the pool while this thread waits inside allocate() gets
    FastallocError('close() was called from inside an operation ...'); the pool stays open and
    the allocate goes on to its own end (PoolExhausted at its timeout)."""
    with FixedPool.create(pool_name, capacity=1) as pool:
        h = pool.allocate("only")
        seen = []

        def close_now(signum, frame):
            try:
                pool._core.close()
            except FastallocError as exc:
                seen.append(str(exc))

        previous = signal.signal(signal.SIGALRM, close_now)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(PoolExhausted):
                pool.allocate("more", timeout=0.3)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert seen and "close() was called from inside an operation of this thread" in seen[0]
        assert not pool._core.closed and pool.get(h) == "only"


def test_close_waits_for_another_threads_operation_then_closes(pool_name):
    """close() while another thread waits inside allocate() waits for it to leave (new
    operations are refused meanwhile) and then closes; the other thread's call ends with its
    own result."""
    pool = FixedPool.create(pool_name, capacity=1, lock_timeout=5)
    try:
        pool.allocate("only")
        outcome = []

        def waiter():
            try:
                pool._core.allocate("more", timeout=0.3)
            except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
                outcome.append(type(exc))

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 5
        while pool._core.operations == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        started = time.monotonic()
        pool._core.close()
        t.join()
        assert outcome == [PoolExhausted] and pool._core.closed
        assert 0.1 < time.monotonic() - started < 5
    finally:
        pool.close()
        pool.unlink()


def test_close_gives_up_after_lock_timeout_while_another_thread_is_inside(pool_name):
    """close() while another thread stays inside an operation longer than lock_timeout raises
    FastallocError('another thread is still inside an operation ...') and leaves the pool open
    and usable."""
    pool = FixedPool.create(pool_name, capacity=1, lock_timeout=0.1)
    try:
        h = pool.allocate("only")
        t = threading.Thread(target=lambda: pytest.raises(PoolExhausted, pool._core.allocate, "more", timeout=1.0))
        t.start()
        deadline = time.monotonic() + 5
        while pool._core.operations == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(FastallocError, match="another thread is still inside an operation"):
            pool._core.close()
        assert not pool._core.closed and pool.get(h) == "only"
        t.join()
    finally:
        pool.close()
        pool.unlink()


def test_a_signal_handler_raising_while_close_waits_ends_the_close(pool_name):
    """close() waiting for another thread runs signal handlers: one that raises ends the
    close with its exception, and the pool stays open."""
    pool = FixedPool.create(pool_name, capacity=1, lock_timeout=5)
    try:
        h = pool.allocate("only")
        t = threading.Thread(target=lambda: pytest.raises(PoolExhausted, pool._core.allocate, "more", timeout=1.0))
        t.start()
        deadline = time.monotonic() + 5
        while pool._core.operations == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)

        with interrupted_after(0.05, KeyboardInterrupt("stop closing")), \
                pytest.raises(KeyboardInterrupt, match="stop closing"):
            pool._core.close()
        t.join()
        assert not pool._core.closed and pool.get(h) == "only"
    finally:
        pool.close()
        pool.unlink()


def test_a_core_does_not_pickle_but_a_pool_reattaches_by_name(pool_name):
    """pickle of a Core is a TypeError (it is a mapping of this process); a pool pickles as
    its name and unpickles as a new attachment with its own client entry."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        with pytest.raises(TypeError):
            pickle.dumps(pool._core)
        h = pool.allocate({"v": 1})
        copy = pickle.loads(pickle.dumps(pool))
        try:
            assert copy is not pool and copy.name == pool.name
            assert copy._core.entry != pool._core.entry and copy.get(h) == {"v": 1}
        finally:
            copy.close()


def test_repr_of_an_open_and_a_closed_pool(pool_name):
    """repr names the kind, the pool and its capacity and slot size; once closed, 'closed'."""
    pool = ThreadLocalPool.create(pool_name, capacity=4, slot_size=128)
    try:
        assert repr(pool) == f"ThreadLocalPool({pool_name!r}, capacity=4, slot_size=128)"
        other = attach(pool_name)
        other.close()
        other.close()
        assert repr(other) == f"ThreadLocalPool({pool_name!r}, closed)"
        assert "Core object" in repr(pool._core)
    finally:
        pool.close()
        pool.unlink()


def test_a_collected_pool_with_a_magazine_gives_its_slots_back(pool_name):
    """A ThreadLocalPool attachment dropped without close() (collected) leaves the client table
    and its magazine's cached slots go back to the free lists."""
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=4) as pool:
        other = attach(pool_name)
        other.release(other.allocate("x"))
        assert other._core.cached > 0
        entry = other._core.entry
        del other
        gc.collect()
        assert entry not in {row.entry for row in pool.clients()}
        handles = [pool.allocate(i) for i in range(8)]
        assert len(handles) == 8


def test_semaphore_value_follows_the_free_slots(pool_name):
    """semaphore_value is the free-slot token count: capacity when empty, one less per slot."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        assert pool._core.semaphore_value == 4
        hs = [pool.allocate(i) for i in range(3)]
        assert pool._core.semaphore_value == 1
        pool.release_many(hs)
        assert pool._core.semaphore_value == 4
        assert os.getpid() in {row.pid for row in pool.clients()}

"""Unit coverage, round 3: every operation of the core when memory runs out (issue 22, item 7).

CPython's `_testcapi.set_nomemory(start)` makes the Python allocators fail from the
start-th allocation on. Each test sweeps `start` over 0, 1, 2, ... for one operation of the
core until the call succeeds, and after every step (hooks removed) insists that the call
raised MemoryError or succeeded, never anything else (no SystemError from a leaked or
missing exception), and that the pool is sound: no slot lost or handed out twice, len()
right, every value reading back right (tests/invariants.py's assert_sound), no buffer
export or operation left in flight, and every channel item either still queued, in order,
or returned to the caller. An operation that failed changed nothing.

Not reachable this way: the core's C `malloc`/`calloc` (the recovery's channel map, a
growth's extent table); they are listed in tests/COVERAGE.md.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest

from fastalloc_shm import FixedPool, GrowingPool, ThreadLocalPool, _core, _names
from fastalloc_shm.pool import PoolErrors, _liveness_path, start_ticks

from .invariants import assert_sound
from .requirements import modules

# CPython's test module: part of a standard build (python3-dev's on Debian), not of every install.
(_testcapi,) = modules("_testcapi", reason="the allocation-failure hooks are _testcapi.set_nomemory")

FAILED = object()
LIMIT = 600  # starts tried before a sweep gives up: each operation here succeeds well before
# Containers are packed by msgspec, whose encoder (0.23.0) crashes when growing its output buffer
# fails (`_testcapi.set_nomemory(1, 2); msgspec.msgpack.Encoder().encode(["x" * 40])`: SIGSEGV):
# they stay under its first buffer (32 bytes). Strings and bytes of any length the core packs itself.
VALUE = {"job": [1, "two", 3.5]}
OTHER = {"n": [4, "five"]}
LONG = "a string the core packs and decodes by itself " * 2
KINDS = {"fixed": FixedPool, "threadlocal": ThreadLocalPool, "growing": GrowingPool}


def attempt(start, call, *args):
    """call(*args) with the Python allocators failing from the start-th allocation on: its result,
    or FAILED for a MemoryError (any other exception propagates)."""
    _testcapi.set_nomemory(start, 0)
    try:
        return call(*args)
    except MemoryError:
        return FAILED
    finally:
        _testcapi.remove_mem_hooks()


def sweep(call, *args, check):
    """call(*args) with the Python allocators failing from the start-th allocation on, for start =
    0, 1, ... until it succeeds; check(result), FAILED for a MemoryError, after each step with the
    allocators back. Returns how many steps raised MemoryError."""
    unraisable = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    gc.collect()
    gc.disable()
    try:
        for start in range(LIMIT):
            result = attempt(start, call, *args)
            assert not unraisable, f"start {start}: {[u.exc_value for u in unraisable]}"
            check(result)
            if result is not FAILED:
                return start
    finally:
        gc.enable()
        sys.unraisablehook = hook
    raise AssertionError(f"{call.__name__} never succeeded in {LIMIT} steps")


class Model:
    """What the pool must hold: values by handle, and each channel's queue in order."""

    def __init__(self, pool, channels=()):
        self.pool = pool
        self.core = pool._core
        self.held: dict[int, object] = {}
        self.channels = {name: pool.channel(name) for name in channels}
        self.queues: dict[str, list] = {name: [] for name in channels}

    def allocate(self, value):
        handle = self.pool.allocate(value)
        self.held[handle] = value
        return handle

    def put(self, name, *values):
        self.channels[name].put_many(list(values))
        self.queues[name].extend(values)

    def assert_sound(self):
        core = self.core
        assert core.exports == 0 and core.operations == 0
        queued = {}
        for name, ch in self.channels.items():
            length = len(ch)
            queued[name] = ch.get_many(length, timeout=0) if length else []
            assert queued[name] == self.queues[name], f"channel {name!r}"
        assert_sound(self.pool, self.held)
        for name, items in queued.items():
            if items:
                self.channels[name].put_many(items)
        assert len(self.pool) == len(self.held) + sum(map(len, self.queues.values()))


@pytest.fixture(params=sorted(KINDS))
def model(request, pool_name):
    kind = KINDS[request.param]
    extra = {"max_capacity": 16} if kind is GrowingPool else {}
    with kind.create(pool_name, capacity=8, batch_size=2, **extra) as pool:
        m = Model(pool, channels=("jobs",))
        m.allocate(VALUE)
        m.put("jobs", LONG, OTHER)
        yield m
        m.assert_sound()


# -- slots: allocate, get, set, release and their batches ---------------------------------


def test_allocate_out_of_memory_takes_nothing(model):
    def check(result):
        if result is not FAILED:
            assert model.pool.get(result) == OTHER
            model.held[result] = OTHER
        model.assert_sound()

    assert sweep(model.core.allocate, OTHER, check=check) > 0


def test_the_allocate_that_grows_the_pool_out_of_memory(pool_name):
    """A full GrowingPool: the allocate grows it (the Grower is Python code, the extent table C)."""
    with GrowingPool.create(pool_name, capacity=4, max_capacity=16, batch_size=2) as pool:
        m = Model(pool)
        for i in range(4):
            m.allocate(i)

        def check(result):
            if result is not FAILED:
                m.held[result] = LONG
            m.assert_sound()

        assert sweep(pool._core.allocate, LONG, check=check) > 0
        assert pool.capacity > 4


def test_get_out_of_memory_leaves_the_value(model):
    handle = next(iter(model.held))

    def check(result):
        if result is not FAILED:
            assert result == VALUE
        model.assert_sound()

    assert sweep(model.core.get, handle, check=check) > 0


def test_set_out_of_memory_keeps_the_old_value(model):
    handle = next(iter(model.held))

    def check(result):
        if result is not FAILED:
            model.held[handle] = OTHER
        model.assert_sound()

    assert sweep(model.core.set, handle, OTHER, check=check) > 0


def test_release_out_of_memory_keeps_the_slot_or_frees_it_once(model):
    handle = model.allocate(OTHER)

    def check(result):
        if result is not FAILED:
            del model.held[handle]
        model.assert_sound()

    sweep(model.core.release, handle, check=check)
    assert handle not in model.held


def test_allocate_many_out_of_memory_is_all_or_nothing(model):
    values = [OTHER, LONG, VALUE]

    def check(result):
        if result is not FAILED:
            assert [model.pool.get(h) for h in result] == values
            model.held.update(zip(result, values, strict=True))
        model.assert_sound()

    assert sweep(model.core.allocate_many, values, check=check) > 0


def test_release_many_out_of_memory_is_all_or_nothing(model):
    handles = [model.allocate(i) for i in range(3)]

    def check(result):
        if result is not FAILED:
            for h in handles:
                del model.held[h]
        model.assert_sound()

    assert sweep(model.core.release_many, handles, check=check) > 0


def test_buffer_out_of_memory_exports_nothing(model):
    handle = next(iter(model.held))
    views = []

    def check(result):
        if result is not FAILED:
            assert model.core.exports == 1
            views.append(result)
            result.release()
        model.assert_sound()

    assert sweep(model.core.buffer, handle, check=check) > 0
    assert len(views) == 1


# -- acquire's steps ------------------------------------------------------------------------


def test_take_slot_out_of_memory_takes_nothing(model):
    def check(result):
        if result is not FAILED:
            index, payload = result
            handle = model.core.publish_slot(index, "taken")
            model.held[handle] = "taken"
        model.assert_sound()

    sweep(model.core.take_slot, check=check)


def test_publish_slot_out_of_memory_keeps_the_slot_taken(model):
    index, _ = model.core.take_slot()

    def check(result):
        if result is FAILED:
            assert len(model.pool) == len(model.held) + 3  # two queued, and the one we took
        else:
            model.held[result] = OTHER
        if result is not FAILED:
            model.assert_sound()

    assert sweep(model.core.publish_slot, index, OTHER, check=check) > 0


def test_unwind_slot_out_of_memory(model):
    index, _ = model.core.take_slot()
    sweep(model.core.unwind_slot, index, check=lambda result: None)
    model.assert_sound()


def test_acquire_out_of_memory_leaks_no_slot(pool_name):
    with FixedPool.create(pool_name, capacity=8, reset=(list, "builtins:id")) as pool:
        m = Model(pool)
        m.allocate(VALUE)
        handle = m.allocate([1, 2])
        pool.release(handle)
        del m.held[handle]

        def check(result):
            if result is not FAILED:
                m.held[result] = pool.get(result)
            m.assert_sound()

        assert sweep(pool.acquire, check=check) > 0


# -- channels -------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "argument", "queued"), [
    ("channel_put", VALUE, [VALUE]),
    ("channel_put_many", [LONG, OTHER, VALUE], [LONG, OTHER, VALUE]),
], ids=["put", "put_many"])
def test_channel_put_out_of_memory_queues_all_or_nothing(model, operation, argument, queued):
    number = model.channels["jobs"]._number

    def check(result):
        if result is not FAILED:
            model.queues["jobs"].extend(queued)
        model.assert_sound()

    assert sweep(getattr(model.core, operation), number, argument, None, check=check) > 0


def test_channel_put_handle_out_of_memory_keeps_the_handle(model):
    number = model.channels["jobs"]._number
    handle = model.allocate("handed")

    def check(result):
        if result is not FAILED:
            del model.held[handle]
            model.queues["jobs"].append("handed")
        model.assert_sound()

    sweep(model.core.channel_put_handle, number, handle, check=check)


@pytest.mark.parametrize("name", ["channel_get", "channel_get_many"])
def test_channel_get_out_of_memory_loses_no_item(model, name):
    """Every step of a get/get_many failing: a MemoryError takes nothing (an item whose copy or
    list entry cannot be made stays at the head, not also on the free list; items whose decoding
    runs out of memory go back to the head in their order), and a get_many that took some items
    before a later one failed returns those (the rest stay queued). Found by this sweep: the
    free-list double and the dropped items of channel_take/decode_all, both fixed."""
    number = model.channels["jobs"]._number
    call = getattr(model.core, name)
    args = (number, 5, None) if name == "channel_get_many" else (number, None)
    model.put("jobs", {"first": [1, 2]}, LONG)

    def check(result):
        if result is not FAILED:
            got = result if name == "channel_get_many" else [result]
            assert got == model.queues["jobs"][:len(got)]
            del model.queues["jobs"][:len(got)]
        model.assert_sound()

    assert sweep(call, *args, check=check) > 0


def test_channel_get_handle_out_of_memory_leaves_the_item_queued(model):
    number = model.channels["jobs"]._number

    def check(result):
        if result is not FAILED:
            value = model.queues["jobs"].pop(0)
            assert model.pool.get(result) == value
            model.held[result] = value
        model.assert_sound()

    sweep(model.core.channel_get_handle, number, None, check=check)


def test_channel_open_and_channels_out_of_memory(model):
    def check(result):
        model.assert_sound()

    sweep(model.core.channel_open, "other", check=check)
    sweep(model.core.channels, check=check)
    sweep(model.core.channel_stats, model.channels["jobs"]._number, check=check)


# -- statistics and recovery ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["counters", "clients", "slot_states", "len", "reset_statistics"])
def test_statistics_out_of_memory(model, name):
    def check(result):
        model.assert_sound()

    sweep(getattr(model.core, name), check=check)


@pytest.mark.parametrize("reclaim", [False, True])
def test_recover_out_of_memory_leaves_the_pool_sound(model, reclaim):
    def check(result):
        model.assert_sound()

    assert sweep(model.core.recover, reclaim, 1.0, check=check) > 0


# -- a Core's construction --------------------------------------------------------------------


def test_core_init_out_of_memory_registers_nothing(model):
    """A second Core on the same segment, built as pool.py builds one: a failure leaves the client
    table as it was (one entry: the pool's own), and the Core that is built works and closes."""
    pool = model.pool
    segment = pool._segment
    kwargs = dict(
        main_uid=os.fstat(segment.fd).st_uid, kind=pool._policy.code, lock_timeout=pool.config.lock_timeout,
        batch=pool.config.batch_size, errors=PoolErrors(pool.name, pool.config, pool),
        **pool._codec.core_arguments(), grow=None, start_ticks=start_ticks(os.getpid()), creating=False,
        trusted=tuple(pool._trusted), reclaim=False,
    )
    args = (segment.mm, pool._sem_name, _liveness_path(segment), _names.extent_prefix(pool.name))
    built = []

    def check(result):
        gc.collect()
        if result is not FAILED:
            built.append(result)
            assert len(result.clients()) == 2
            result.close()
        assert len(model.core.clients()) == 1
        model.assert_sound()

    assert sweep(lambda: _core.Core(*args, **kwargs), check=check) > 0
    assert len(built) == 1


def test_a_threadlocal_pools_first_allocate_out_of_memory(pool_name):
    """The first allocate of a ThreadLocalPool's Core makes its magazine (PyMem) and refills it; the
    pool is audited through a second attachment, so each step's Core still has no magazine."""
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=2) as pool, \
            ThreadLocalPool.attach(pool_name) as other:
        m = Model(other)

        def check(result):
            if result is not FAILED:
                m.held[result] = LONG
            m.assert_sound()

        assert sweep(pool._core.allocate, LONG, check=check) > 0

"""The pool contract, once, for every backend: FixedPool, GrowingPool, ThreadLocalPool, ThreadSafePool, RedisPool.

Each test runs against every backend through the public API only (as py-lmdb's
parity tests run one suite over its C and CFFI builds), so a new core underneath
must keep passing it. Behaviour that belongs to one kind stays in its own file
(test_fixed_pool.py, test_kinds.py, test_redis_pool.py). The tests named
`test_item_N_...` are the deviations of issue 13, one each; each failed on the
code before its fix.
"""

from __future__ import annotations

import collections
import json
import math
import mmap
import os
import pickle
import subprocess
import sys
import textwrap
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

import fastalloc_shm
from fastalloc_shm import (
    ConfigError,
    FastallocError,
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    IncompatiblePool,
    InvalidHandle,
    PoolConfig,
    PoolExhausted,
    PoolExistsError,
    PoolNotFound,
    PoolStatistics,
    RecoveryReport,
    RedisPool,
    SerializationError,
    StaleHandle,
    ThreadLocalPool,
    ThreadSafePool,
    ValueTooLarge,
)
from fastalloc_shm.handle import MAX_GENERATION, pack, unpack

LAST_GENERATION = 2**31 - 1  # what every backend issues at most (DESIGN, "Handles")

ROOT = Path(__file__).resolve().parents[1]
CAPACITY, SLOT_SIZE = 8, 128
SHM_KINDS = (FixedPool, GrowingPool, ThreadLocalPool, ThreadSafePool)


# Callables a pool records by import path (module level, so other processes import them).
def new_list() -> list:
    return []


def append_one(previous: list) -> None:
    previous.append(1)


def failing_reset(previous: list) -> list:
    raise RuntimeError("reset failed")


class HandleLike(int):
    """An int subclass: not a handle, by the one rule (exactly int) every method applies."""


Point = collections.namedtuple("Point", "x y")


@dataclass
class Backend:
    """How to create and attach pools of one kind; `url` is set for RedisPool only."""

    cls: type
    url: str | None = None

    @property
    def shared_memory(self) -> bool:
        return self.url is None

    def create(self, name: str, **kwargs: Any):
        if "config" not in kwargs:
            kwargs.setdefault("capacity", CAPACITY)
            kwargs.setdefault("slot_size", SLOT_SIZE)
            if self.cls is GrowingPool:
                # Growth is the kind's own business (test_kinds.py); here it must fill up like the others.
                kwargs.setdefault("max_capacity", kwargs["capacity"])
        if self.url is not None:
            return RedisPool.create(name, url=self.url, **kwargs)
        return self.cls.create(name, **kwargs)

    def attach(self, name: str, **kwargs: Any):
        if self.url is not None:
            return RedisPool.attach(name, url=self.url, **kwargs)
        return self.cls.attach(name, **kwargs)

    def child(self, name: str, body: str, lease_ttl: float = 10.0) -> subprocess.CompletedProcess:
        """Run `body` in a fresh Python process with the pool attached as `p`."""
        if self.url is not None:
            opening = f"p = RedisPool.attach({name!r}, url={self.url!r}, lease_ttl={lease_ttl})"
        else:
            opening = f"p = {self.cls.__name__}.attach({name!r})"
        code = f"import os, signal, sys\nfrom fastalloc_shm import *\n{opening}\n{textwrap.dedent(body)}"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture(params=[*SHM_KINDS, RedisPool], ids=lambda cls: cls.__name__)
def backend(request) -> Backend:
    if request.param is RedisPool:
        return Backend(RedisPool, request.getfixturevalue("redis_url"))
    return Backend(request.param)


@pytest.fixture
def pool(backend, pool_name):
    with backend.create(pool_name) as p:
        yield p


def usage(pool) -> tuple[int, int]:
    """(len(pool), statistics().current_usage): the two must agree."""
    return len(pool), pool.statistics().current_usage


# -- values and handles ----------------------------------------------------------------------------


def test_allocate_then_get_returns_an_equal_fresh_object(pool):
    value = {"id": 1, "tags": [1, 2]}
    h = pool.allocate(value)
    got = pool.get(h)
    assert got == value and got is not value


@pytest.mark.parametrize("value", [None, True, 0, -1, 2**64 - 1, -(2**63), 2.5, "ünïcode", b"\x00bytes", [1, [2]],
                                   {1: "int key", "k": None, b"b": 1.5, 2.5: True}])
def test_values_round_trip_through_msgpack(pool, value):
    h = pool.allocate(value)
    assert pool.get(h) == value
    pool.release(h)


def test_tuples_and_subclasses_come_back_as_their_plain_types(pool):
    assert pool.get(pool.allocate((1, (2, 3)))) == [1, [2, 3]]
    assert pool.get(pool.allocate(collections.OrderedDict(a=1))) == {"a": 1}
    assert pool.get(pool.allocate({"p": Point(1, 2)})) == {"p": [1, 2]}


def test_handles_are_plain_nonzero_ints_that_travel(pool):
    handles = [pool.allocate(i) for i in range(3)]
    for h in handles:
        assert type(h) is int and h != 0
        assert unpack(h)[1] == 1  # a fresh slot's first generation
    assert len({unpack(h)[0] for h in handles}) == 3
    for carried in (json.loads(json.dumps(handles)), msgpack.unpackb(msgpack.packb(handles))):
        assert [pool.get(h) for h in carried] == [0, 1, 2]


def test_set_replaces_in_place(pool):
    h = pool.allocate({"id": 1})
    pool.set(h, {"id": 2})
    assert pool.get(h) == {"id": 2}
    assert usage(pool) == (1, 1)


def test_release_makes_the_handle_stale(pool):
    h = pool.allocate(1)
    keep = pool.allocate("keep")
    pool.release(h)
    for operation in (pool.get, pool.release, lambda x: pool.set(x, 2), lambda x: pool.release_many([x])):
        with pytest.raises(StaleHandle):
            operation(h)
    assert pool.get(keep) == "keep"
    assert usage(pool) == (1, 1)
    assert pool.statistics().total_deallocations == 1


def test_a_reused_slot_gets_a_new_generation(pool):
    h1 = pool.allocate(1)
    pool.release(h1)
    h2 = pool.allocate(2)
    assert unpack(h2) == (unpack(h1)[0], 2)
    with pytest.raises(StaleHandle):
        pool.get(h1)
    assert pool.get(h2) == 2


def test_a_handle_of_a_slot_never_handed_out_is_stale(pool):
    pool.allocate("only slot 0 is used")
    with pytest.raises(StaleHandle):
        pool.get(pack(CAPACITY - 1, 1))


GARBAGE = [0, -5, 7, 1 << 70, "h", 2.5, None, True, [1], pack(CAPACITY + 100, 1), (1 << 31) << 32, (1 << 32) << 32]


@pytest.mark.parametrize("garbage", GARBAGE, ids=repr)
def test_garbage_is_an_invalid_handle_for_every_method(pool, garbage):
    h = pool.allocate("intact")
    operations = [pool.get, pool.release, lambda x: pool.set(x, 1), lambda x: pool.release_many([x]),
                  lambda x: pool.release_many([h, x])]
    if isinstance(pool, tuple(SHM_KINDS)):
        operations.append(pool.buffer)
    for operation in operations:
        with pytest.raises(InvalidHandle):
            operation(garbage)
    assert pool.get(h) == "intact"
    assert usage(pool) == (1, 1)


def test_item_6_an_int_subclass_is_not_a_handle_in_any_method(pool):
    h = pool.allocate("intact")
    operations = [pool.get, pool.release, lambda x: pool.set(x, 1), lambda x: pool.release_many([x])]
    if isinstance(pool, tuple(SHM_KINDS)):
        operations.append(pool.buffer)
    for operation in operations:
        with pytest.raises(InvalidHandle):
            operation(HandleLike(h))
    assert pool.get(h) == "intact"


@pytest.mark.parametrize("bad", [None, [1], "h", 2.5, HandleLike(1 << 32), "stale", "duplicate"])
def test_item_6_release_many_with_any_bad_element_is_typed_and_frees_nothing(pool, bad):
    a, b = pool.allocate_many(["a", "b"])
    if bad == "stale":
        bad = pool.allocate("c")
        pool.release(bad)
    elif bad == "duplicate":
        bad = a
    with pytest.raises((InvalidHandle, StaleHandle)):
        pool.release_many([a, b, bad])
    assert (pool.get(a), pool.get(b)) == ("a", "b")
    assert usage(pool) == (2, 2)
    pool.release_many([a, b])
    assert usage(pool) == (0, 0)


# -- item 10: one handle width ----------------------------------------------------------------------


def test_item_10_handle_pack_and_unpack_accept_exactly_what_a_pool_issues():
    assert MAX_GENERATION == LAST_GENERATION
    assert unpack(pack(2**32 - 1, 2**31 - 1)) == (2**32 - 1, 2**31 - 1)
    for index, generation in [(0, 2**31), (0, 2**32 - 1), (0, 0), (-1, 1), (2**32, 1), (True, 1), (0, True)]:
        with pytest.raises(InvalidHandle):
            pack(index, generation)
    for handle in [(2**31) << 32, ((2**32 - 1) << 32) | 5, 5, 0, -1, True, HandleLike(1 << 32)]:
        with pytest.raises(InvalidHandle):
            unpack(handle)


def _write_generation(name: str, index: int, generation: int) -> None:
    """WHITE-BOX, shared memory only: no public call can age a slot by 2**31 releases in a test's time,
    so this writes slot `index`'s generation word in extent 0 directly, at the offsets _layout owns."""
    from fastalloc_shm import _layout as L

    offset = L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES + L.META_GEN * 4
    fd = os.open(f"/dev/shm/fastalloc.{name}", os.O_RDWR)
    try:
        with mmap.mmap(fd, offset + 4) as mm:
            mm[offset:offset + 4] = generation.to_bytes(4, "little")
    finally:
        os.close(fd)


def test_item_10_the_generation_wraps_from_2_31_minus_1_to_1(backend, pool_name):
    with backend.create(pool_name) as pool:
        h = pool.allocate("old")
        index = unpack(h)[0]
        if backend.shared_memory:
            _write_generation(pool_name, index, LAST_GENERATION)
        else:
            import redis

            client = redis.Redis.from_url(backend.url)
            client.hset(f"{{fastalloc.{pool_name}}}:gen", index, LAST_GENERATION)
            client.close()
        last = (LAST_GENERATION << 32) | index
        with pytest.raises(StaleHandle):
            pool.get(h)
        assert pool.get(last) == "old"
        pool.release(last)
        again = pool.allocate("new")
        assert unpack(again) == (index, 1)
        assert pool.get(again) == "new"
        with pytest.raises(StaleHandle):
            pool.get(last)


# -- errors: full, too large, not serializable --------------------------------------------------------


def test_a_full_pool_raises_exhausted_and_try_allocate_returns_none(pool):
    handles = [pool.allocate(i) for i in range(CAPACITY)]
    with pytest.raises(PoolExhausted, match="full"):
        pool.allocate("one more")
    assert pool.try_allocate("one more") is None
    with pytest.raises(PoolExhausted):
        pool.allocate_many([1, 2])
    stats = pool.statistics()
    # One failure per slot refused (a batch of two counts two), as total_allocations counts slots.
    assert (stats.total_allocations, stats.allocation_failures, stats.current_usage) == (CAPACITY, 4, CAPACITY)
    assert stats.hit_rate() == CAPACITY / (CAPACITY + 4)
    pool.release(handles[0])
    assert pool.try_allocate("fits") is not None


def test_value_too_large_names_the_sizes_and_leaks_nothing(pool):
    with pytest.raises(ValueTooLarge, match=f"{SLOT_SIZE + 2 + 72}.*{SLOT_SIZE}"):
        pool.allocate(b"x" * (SLOT_SIZE + 72))
    h = pool.allocate(1)
    with pytest.raises(ValueTooLarge):
        pool.set(h, "y" * 500)
    with pytest.raises(ValueTooLarge):
        pool.allocate_many([1, b"x" * 500])
    assert pool.get(h) == 1
    assert usage(pool) == (1, 1)
    assert pool.statistics().total_allocations == 1


@pytest.mark.parametrize("value", [object(), {"big": 1 << 70}, {1, 2}], ids=["object", "int_too_big", "set"])
def test_an_unpackable_value_is_a_serialization_error_and_stores_nothing(pool, value):
    with pytest.raises(SerializationError, match="msgpack"):
        pool.allocate(value)
    _refused_everywhere_and_nothing_stored(pool, value, allocated_before=0)


def _refused_everywhere_and_nothing_stored(pool, value, allocated_before: int) -> None:
    """set() and allocate_many() refuse `value` too, and leave what was there."""
    h = pool.allocate("before")
    with pytest.raises(SerializationError):
        pool.set(h, value)
    with pytest.raises(SerializationError):
        pool.allocate_many(["ok", value])
    assert pool.get(h) == "before"
    assert usage(pool) == (allocated_before + 1,) * 2
    assert pool.statistics().total_allocations == allocated_before + 1


@pytest.mark.parametrize("value", [{(1, 2): "x"}, {"deep": [1, {"k": {(1,): 2}}]}, {Point(1, 2): 0}, [{((),): 1}]],
                         ids=["tuple_key", "nested", "namedtuple_key", "in_a_list"])
def test_item_5_a_value_that_would_not_read_back_is_refused_and_stores_nothing(pool, value):
    with pytest.raises(SerializationError, match="tuple"):
        pool.allocate(value)
    assert pool.try_allocate("fits") is not None  # try_allocate only turns PoolExhausted into None
    with pytest.raises(SerializationError):
        pool.try_allocate(value)
    _refused_everywhere_and_nothing_stored(pool, value, allocated_before=1)


# -- batches, borrowed, acquire ---------------------------------------------------------------------


def test_allocate_many_and_release_many(pool):
    handles = pool.allocate_many({"i": i} for i in range(5))
    assert [pool.get(h) for h in handles] == [{"i": i} for i in range(5)]
    assert usage(pool) == (5, 5)
    pool.release_many(iter(handles))
    assert usage(pool) == (0, 0)
    assert pool.allocate_many([]) == []
    pool.release_many([])
    stats = pool.statistics()
    assert (stats.total_allocations, stats.total_deallocations) == (5, 5)


def test_allocate_many_is_all_or_nothing(pool):
    pool.allocate_many(range(CAPACITY - 2))
    with pytest.raises(PoolExhausted):
        pool.allocate_many(range(3))
    assert usage(pool) == (CAPACITY - 2, CAPACITY - 2)
    assert len(pool.allocate_many(range(2))) == 2


def test_borrowed_releases_on_exit_even_after_an_error(pool):
    with pytest.raises(RuntimeError):
        with pool.borrowed({"x": 1}) as h:
            assert pool.get(h) == {"x": 1}
            raise RuntimeError
    assert usage(pool) == (0, 0)
    with pytest.raises(StaleHandle):
        pool.get(h)


def test_acquire_creates_then_resets_the_previous_value(backend, pool_name):
    reset = ("tests.test_contract:new_list", "tests.test_contract:append_one")
    with backend.create(pool_name, capacity=1, reset=reset) as pool:
        h = pool.acquire()
        assert pool.get(h) == []
        pool.set(h, ["used"])
        pool.release(h)
        h = pool.acquire()
        assert pool.get(h) == ["used", 1]
        assert pool.statistics().total_allocations == 2


def test_acquire_with_a_failing_reset_leaks_no_slot(backend, pool_name):
    with backend.create(pool_name, capacity=1, reset=(new_list, failing_reset)) as pool:
        pool.release(pool.acquire())
        with pytest.raises(RuntimeError, match="reset failed"):
            pool.acquire()
        assert usage(pool) == (0, 0)
        pool.release(pool.allocate("the slot is free"))


def test_acquire_with_only_an_initializer_keeps_a_reused_value(backend, pool_name):
    with backend.create(pool_name, capacity=1, initializer=new_list) as pool:
        h = pool.acquire()
        assert pool.get(h) == []
        pool.set(h, ["kept"])
        pool.release(h)
        assert pool.get(pool.acquire()) == ["kept"]


def test_acquire_without_reset_fn_or_initializer_is_a_config_error(pool):
    with pytest.raises(ConfigError, match="reset"):
        pool.acquire()
    assert usage(pool) == (0, 0)


# -- statistics ----------------------------------------------------------------------------------------


def test_statistics_follow_operations(pool):
    handles = [pool.allocate(i) for i in range(4)]
    pool.release(handles[0])
    s = pool.statistics()
    assert isinstance(s, PoolStatistics)
    assert (s.capacity, s.current_usage, s.peak_usage, s.total_allocations, s.total_deallocations) == (CAPACITY, 3, 4, 4, 1)
    assert (s.allocation_failures, s.growth_count, s.recoveries) == (0, 0, 0)
    assert s.utilization_rate() == 37.5 and s.peak_utilization_rate() == 50.0
    assert s.available() == CAPACITY - 3 and s.hit_rate() == 1.0
    assert "capacity" in str(s) and str(CAPACITY) in str(s)
    with pytest.raises(AttributeError):
        s.capacity = 1  # frozen


def test_item_2_reset_statistics_zeroes_every_counter_as_the_crate_does(pool):
    handles = pool.allocate_many(range(CAPACITY))
    assert pool.try_allocate("no room") is None
    pool.release_many(handles[2:])
    pool.reset_statistics()
    s = pool.statistics()
    # StatisticsCollector::reset: every counter zero; capacity and usage from the allocator; peak from usage.
    assert (s.total_allocations, s.total_deallocations, s.allocation_failures, s.growth_count) == (0, 0, 0, 0)
    assert (s.lock_wait_ns, s.lock_timeouts, s.recoveries) == (0, 0, 0)
    assert (s.capacity, s.current_usage, s.peak_usage) == (CAPACITY, 2, 2)
    assert s.hit_rate() == 1.0
    h = pool.allocate("after")
    assert pool.statistics().peak_usage == 3
    pool.release(handles[0])
    s = pool.statistics()
    assert (s.total_allocations, s.total_deallocations, s.current_usage, s.peak_usage) == (1, 1, 2, 3)
    assert len(pool) == 2
    pool.release_many([h, handles[1]])
    assert usage(pool) == (0, 0)


def test_item_2_lock_acquisitions_restart_at_zero(pool):
    pool.release_many(pool.allocate_many(range(3)))
    pool.release(pool.allocate(1))
    pool.reset_statistics()
    assert pool.statistics().lock_acquisitions == 0  # RedisPool takes no lock: always 0


# -- use after close -------------------------------------------------------------------------------------


CLOSED_CALLS = {
    "allocate": lambda p, h: p.allocate(1),
    "try_allocate": lambda p, h: p.try_allocate(1),
    "get": lambda p, h: p.get(h),
    "set": lambda p, h: p.set(h, 2),
    "release": lambda p, h: p.release(h),
    "allocate_many": lambda p, h: p.allocate_many([1]),
    "allocate_many_empty": lambda p, h: p.allocate_many([]),
    "release_many": lambda p, h: p.release_many([h]),
    "release_many_empty": lambda p, h: p.release_many([]),
    "borrowed": lambda p, h: p.borrowed(1).__enter__(),
    "acquire": lambda p, h: p.acquire(),
    "buffer": lambda p, h: p.buffer(h),
    "statistics": lambda p, h: p.statistics(),
    "reset_statistics": lambda p, h: p.reset_statistics(),
    "len": lambda p, h: len(p),
    "recover": lambda p, h: p.recover(),
    "capacity": lambda p, h: p.capacity,
}
SHM_ONLY_CLOSED_CALLS = {"clients": lambda p, h: p.clients(), "nbytes": lambda p, h: p.nbytes}


def test_item_8_every_method_of_a_closed_pool_says_it_is_closed(backend, pool_name):
    with backend.create(pool_name, initializer=new_list) as pool:
        h = pool.allocate(1)
        other = backend.attach(pool_name)
        other.close()
        other.close()  # twice is fine
        calls = dict(CLOSED_CALLS, **(SHM_ONLY_CLOSED_CALLS if backend.shared_memory else {}))
        wrong = {}
        for what, call in calls.items():
            try:
                call(other, h)
            except FastallocError as exc:
                if "closed" not in str(exc):
                    wrong[what] = repr(exc)
            except Exception as exc:  # noqa: BLE001 - the point is to catch whatever it raises
                wrong[what] = repr(exc)
            else:
                wrong[what] = "no error"
        assert not wrong, wrong
        assert pool_name in repr(other) and "closed" in repr(other)
        assert pool.get(h) == 1  # the pool itself is untouched


# -- create, attach, exist_ok, lifetime ------------------------------------------------------------------


def test_attach_sees_the_same_slots(backend, pool, pool_name):
    h = pool.allocate([1, 2, 3])
    with backend.attach(pool_name) as other:
        assert other.get(h) == [1, 2, 3]
        other.release(h)
    with pytest.raises(StaleHandle):
        pool.get(h)


def test_attach_of_a_missing_pool_is_not_found(backend, pool_name):
    with pytest.raises(PoolNotFound):
        backend.attach(pool_name)


def test_create_of_an_existing_pool_raises_unless_exist_ok(backend, pool, pool_name):
    with pytest.raises(PoolExistsError, match="exist_ok"):
        backend.create(pool_name)
    with backend.create(pool_name, exist_ok=True) as other:
        h = pool.allocate("shared")
        assert other.get(h) == "shared"
    assert pool.get(h) == "shared"  # only the creator's exit unlinks


def test_create_takes_a_config_and_keyword_overrides(backend, pool_name):
    config = PoolConfig(capacity=4, slot_size=32, max_capacity=4)
    with backend.create(pool_name, config=config, slot_size=64) as pool:
        assert (pool.capacity, pool.slot_size) == (4, 64)
        assert pool.config.slot_size == 64
        pool.allocate(b"x" * 60)


def test_public_properties_and_repr(pool, pool_name):
    assert (pool.name, pool.capacity, pool.slot_size) == (pool_name, CAPACITY, SLOT_SIZE)
    assert isinstance(pool.config, PoolConfig) and pool.config.capacity == CAPACITY
    assert pool_name in repr(pool)


def test_pickles_as_attach_by_name(pool):
    h = pool.allocate("v")
    clone = pickle.loads(pickle.dumps(pool))
    try:
        assert type(clone) is type(pool) and clone.get(h) == "v"
    finally:
        clone.close()


def test_creator_context_unlinks_and_attacher_context_only_closes(backend, pool_name):
    with backend.create(pool_name) as pool:
        h = pool.allocate("stays")
        with backend.attach(pool_name) as other:
            pass
        assert pool.get(h) == "stays"
    with pytest.raises(PoolNotFound):
        backend.attach(pool_name)
    other.close()


# The base pool for exist_ok comparisons, and one changed value per config field.
EXIST_OK_BASE: dict[str, Any] = {"capacity": 8, "slot_size": 128}
EXIST_OK_GROWTH: dict[str, Any] = {"max_capacity": 16, "growth_strategy": GrowthStrategy.linear(4)}
CHANGED_FIELD: dict[str, Any] = {
    "capacity": 9,
    "slot_size": 64,
    "max_capacity": 32,
    "growth_strategy": GrowthStrategy.linear(2),
    "alignment": 64,
    "pre_initialize": True,
    "initializer": "tests.test_contract:new_list",
    "reset": ("tests.test_contract:new_list", "tests.test_contract:append_one"),
    "huge_pages": True,
    "lock_timeout": 2.5,
    "orphan_policy": "reclaim",
    "batch_size": 4,
    "mode": 0o640,
}


def _exist_ok_config(backend: Backend) -> dict[str, Any]:
    grows = backend.cls is not FixedPool
    return {**EXIST_OK_BASE, **(EXIST_OK_GROWTH if grows else {})}


@pytest.mark.parametrize("field", list(CHANGED_FIELD))
def test_item_9_exist_ok_refuses_a_pool_that_differs_in_any_config_field(backend, pool_name, field):
    base = _exist_ok_config(backend)
    # A FixedPool refuses growth settings before it looks for an existing pool.
    refused = backend.cls is FixedPool and field in EXIST_OK_GROWTH
    error, names = (ConfigError, "does not grow") if refused else (IncompatiblePool, rf"\b{field}\b")
    with backend.create(pool_name, **base) as pool:
        h = pool.allocate("kept")
        with pytest.raises(error, match=names):
            backend.create(pool_name, exist_ok=True, **{**base, field: CHANGED_FIELD[field]})
        assert pool.get(h) == "kept"
        with backend.create(pool_name, exist_ok=True, **base) as same:  # identical settings attach
            assert same.get(h) == "kept"


@pytest.mark.parametrize("existing, wanted", [(a, b) for a in SHM_KINDS for b in SHM_KINDS if a is not b],
                         ids=lambda k: k.__name__)
def test_item_9_exist_ok_refuses_a_pool_of_another_kind(pool_name, existing, wanted):
    # Shared memory only: RedisPool is one kind, in a namespace of its own.
    with Backend(existing).create(pool_name) as pool:
        with pytest.raises(IncompatiblePool, match=existing.__name__):
            Backend(wanted).create(pool_name, exist_ok=True)
        pool.release(pool.allocate("still usable"))


# -- config ----------------------------------------------------------------------------------------------


def test_item_3_pre_initialize_without_an_initializer_is_accepted(backend, pool_name):
    config = PoolConfig.builder().capacity(100).pre_initialize(True).build()  # the crate's builder test
    assert (config.capacity, config.pre_initialize, config.initializer) == (100, True, None)
    with backend.create(pool_name, config=config, max_capacity=100, slot_size=64) as pool:
        assert usage(pool) == (0, 0)
        h = pool.allocate({"slots hold no value until allocated": True})
        assert pool.get(h) == {"slots hold no value until allocated": True}
        with backend.attach(pool_name) as other:
            assert other.config.pre_initialize is True
            assert other.get(h) == pool.get(h)


@pytest.mark.parametrize("timeout", [math.inf, math.nan, -1.0, 0, True])
def test_item_7_lock_timeout_must_be_finite_and_positive(backend, pool_name, timeout):
    with pytest.raises(ConfigError, match="^lock_timeout"):
        PoolConfig(capacity=1, lock_timeout=timeout)
    with pytest.raises(ConfigError, match="^lock_timeout"):
        backend.create(pool_name, lock_timeout=timeout)
    with pytest.raises(PoolNotFound):
        backend.attach(pool_name)  # nothing was created


# -- recovery ----------------------------------------------------------------------------------------------


def test_recover_of_a_healthy_pool_repairs_nothing(pool, pool_name):
    h = pool.allocate("fine")
    report = pool.recover()
    assert isinstance(report, RecoveryReport)
    assert (report.pool, report.orphan_policy, report.repaired, report.dead_clients) == (pool_name, "keep", False, ())
    assert "nothing to repair" in str(report)
    assert pool.get(h) == "fine"
    with pytest.raises(ConfigError, match="orphan_policy"):
        pool.recover(orphan_policy="drop")


def _kill_self_after(body: str) -> str:
    return body + "\nprint(os.getpid(), flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"


def _wait_for_lease_expiry(backend: Backend, ttl: float) -> None:
    if not backend.shared_memory:
        time.sleep(ttl * 3)


LEASE_TTL = 0.2


def test_item_11_a_dead_client_that_left_nothing_is_no_repair(backend, pool_name):
    with backend.create(pool_name) as pool:
        h = pool.allocate("parent's")
        # A shared-memory process registers on attach; a Redis client on its first allocation.
        # (A ThreadLocalPool's release would leave the slot in the dead child's magazine: a repair.)
        body = f"p.get({h})" if backend.shared_memory else "p.release(p.allocate('x'))"
        child = backend.child(pool_name, _kill_self_after(body), lease_ttl=LEASE_TTL)
        assert child.returncode == -9, child.stderr
        _wait_for_lease_expiry(backend, LEASE_TTL)
        report = pool.recover()
        assert len(report.dead_clients) == 1
        assert not report.repaired, report
        assert "nothing to repair" in str(report)
        s = pool.statistics()
        assert (s.recoveries, s.current_usage) == (0, 1)
        assert pool.get(h) == "parent's"


def test_recover_reclaims_a_dead_clients_slots_and_counts_one_recovery(backend, pool_name):
    with backend.create(pool_name) as pool:
        child = backend.child(pool_name, _kill_self_after("p.allocate_many(['a', 'b', 'c'])"), lease_ttl=LEASE_TTL)
        assert child.returncode == -9, child.stderr
        _wait_for_lease_expiry(backend, LEASE_TTL)
        kept = pool.recover()
        assert kept.orphans_kept == 3 and usage(pool) == (3, 3)
        reclaimed = pool.recover(orphan_policy="reclaim")
        assert reclaimed.orphans_reclaimed == 3 and reclaimed.repaired
        assert usage(pool) == (0, 0)
        assert pool.statistics().recoveries == 1
        assert len(pool.allocate_many(range(CAPACITY))) == CAPACITY  # nothing lost


def test_item_4_usage_is_right_after_a_reclaim_with_unpublished_local_counts(backend, pool_name):
    with backend.create(pool_name, capacity=64, batch_size=8) as pool:
        child = backend.child(pool_name, _kill_self_after("p.allocate_many(['a', 'b', 'c'])"), lease_ttl=LEASE_TTL)
        assert child.returncode == -9, child.stderr
        _wait_for_lease_expiry(backend, LEASE_TTL)
        handles = [pool.allocate(i) for i in range(54)]
        for h in handles:
            pool.release(h)
        report = pool.recover(orphan_policy="reclaim")  # no statistics() call first: that would hide it
        assert report.orphans_reclaimed == 3
        assert len(pool) == 0
        assert pool.statistics().current_usage == 0
        assert len(pool.allocate_many(range(64))) == 64
        assert len(pool) == 64


# -- the package -------------------------------------------------------------------------------------------


def test_item_1_the_handle_module_is_reachable_from_the_package():
    code = "import fastalloc_shm; h = fastalloc_shm.handle.pack(3, 7); print(fastalloc_shm.handle.unpack(h))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(3, 7)"
    assert fastalloc_shm.handle.unpack is unpack


def test_item_12_the_license_is_an_spdx_expression():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    # PEP 639's string form needs setuptools >= 77; an older backend would reject it.
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in project["build-system"]["requires"])


def test_item_13_the_readme_development_map_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Development", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in section.splitlines() if line.strip()}
    package = ROOT / "fastalloc_shm"
    modules = {p.name for p in package.iterdir() if p.suffix in (".py", ".c", ".h")}
    modules |= {f"_core/{p.name}" for p in (package / "_core").iterdir() if p.suffix in (".c", ".h")}
    assert modules - listed == set(), "modules missing from README's development map"
    assert {m for m in listed if m.endswith((".py", ".c", ".h"))} - modules == set(), "the map lists modules that do not exist"


def test_every_public_name_imports_and_every_error_is_a_fastalloc_error():
    for name in fastalloc_shm.__all__:
        assert getattr(fastalloc_shm, name) is not None, name
    errors = [getattr(fastalloc_shm, n) for n in fastalloc_shm.__all__
              if isinstance(getattr(fastalloc_shm, n), type) and issubclass(getattr(fastalloc_shm, n), BaseException)]
    assert len(errors) == 13  # ChannelEmpty included
    assert all(issubclass(e, FastallocError) for e in errors)
    assert issubclass(ConfigError, ValueError)  # a bad value, as Python's own checks raise


# -- backpressure: allocate(value, timeout=) -------------------------------------------------------------


def test_a_full_pool_refuses_at_once_without_a_timeout(pool):
    handles = pool.allocate_many(range(CAPACITY))
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.allocate("one too many")
    assert time.monotonic() - started < 1.0, "without a timeout a full pool must not wait"
    with pytest.raises(PoolExhausted):
        pool.allocate("still full", timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert pool.try_allocate("no", timeout=0.05) is None
    pool.release_many(handles)
    assert usage(pool) == (0, 0)


def test_allocate_with_a_timeout_waits_for_a_release_in_another_process(backend, pool_name):
    with backend.create(pool_name) as pool:
        handles = pool.allocate_many(range(CAPACITY))
        # The other process releases one slot after a while and closes (a ThreadLocalPool's
        # release lands in its own magazine; closing gives it back to everyone).
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import time
                from fastalloc_shm import *
                p = {_attach_expression(backend, pool_name)}
                time.sleep(0.3)
                p.release({handles[3]})
                p.close()
            """)], cwd=ROOT)
        try:
            started = time.monotonic()
            h = pool.allocate("waited for", timeout=20)
            waited = time.monotonic() - started
        finally:
            child.wait(30)
        assert child.returncode == 0
        assert waited >= 0.2, f"allocate returned after {waited:.3f} s, before anything was released"
        assert pool.get(h) == "waited for" and unpack(h)[0] == unpack(handles[3])[0]
        pool.release_many([h, *handles[:3], *handles[4:]])
        assert usage(pool) == (0, 0)


def test_a_bad_timeout_is_refused(pool):
    for timeout in (-1, float("inf"), float("nan"), "1"):
        with pytest.raises((ValueError, TypeError)):
            pool.allocate(1, timeout=timeout)
    assert usage(pool) == (0, 0)


def _attach_expression(backend: Backend, name: str) -> str:
    if backend.url is not None:
        return f"RedisPool.attach({name!r}, url={backend.url!r})"
    return f"{backend.cls.__name__}.attach({name!r})"

"""Unit coverage: operations.c's argument checks and refusals (issue 22, item 7).

Every operation checks and converts its arguments before it touches a slot, and
raises only after unlocking. Pinned here, for each way to call allocate, get,
set, release, the batches, recover, commit_extent and acquire()'s steps
wrongly: the exact exception, and that the pool is unchanged afterwards (no slot
taken or freed, the free-slot tokens still equal to the free slots).
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from fastalloc_shm import (
    FastallocError,
    FixedPool,
    InvalidHandle,
    PoolExhausted,
    SerializationError,
    StaleHandle,
    ThreadLocalPool,
    ValueTooLarge,
)
from fastalloc_shm import _layout as L

SLOT = 64
CAPACITY = 8


def meta_at(index: int) -> int:
    return L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES


def slot_bytes_at(pool, index: int) -> int:
    return L.HEADER_SIZE + L.data_offset(CAPACITY, pool.config.alignment) + index * L.stride_for(SLOT, pool.config.alignment)


def assert_untouched(pool, in_use: int) -> None:
    """The pool holds `in_use` slots and has a token for each free one."""
    assert len(pool) == in_use
    assert pool._core.semaphore_value == CAPACITY - in_use


@pytest.fixture(params=[FixedPool, ThreadLocalPool], ids=lambda k: k.__name__)
def pool(request, pool_name):
    with request.param.create(pool_name, capacity=CAPACITY, slot_size=SLOT) as p:
        yield p


@pytest.fixture
def fixed(pool_name):
    with FixedPool.create(pool_name, capacity=CAPACITY, slot_size=SLOT) as p:
        yield p


def test_allocate_checks_its_arguments(fixed):
    """allocate(value, timeout=None): no value, three arguments, an unknown keyword or a timeout
    that is not a number is a TypeError with the signature or the keyword in it; nothing is taken."""
    core = fixed._core
    with pytest.raises(TypeError, match=r"allocate\(value, timeout=None\)"):
        core.allocate()
    with pytest.raises(TypeError, match=r"allocate\(value, timeout=None\)"):
        core.allocate(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'wait'"):
        core.allocate(1, wait=2)
    with pytest.raises(TypeError):
        core.allocate(1, timeout="soon")
    for bad in (-1, float("nan"), float("-inf"), 2e9):
        with pytest.raises(ValueError, match="timeout: seconds, finite and >= 0"):
            core.allocate(1, timeout=bad)
    assert_untouched(fixed, 0)
    h = core.allocate("kw", timeout=None)
    h2 = core.allocate("positional", 0.5)
    assert fixed.get(h) == "kw" and fixed.get(h2) == "positional"


def test_allocate_refuses_values_it_cannot_store_and_takes_no_slot(pool):
    """A value too large for a slot is ValueTooLarge naming its packed size; one msgpack cannot
    pack is SerializationError; in both cases no slot is taken (a ThreadLocalPool's magazine
    included: the value is packed before a slot is claimed)."""
    with pytest.raises(ValueTooLarge, match=str(SLOT + 2)):
        pool.allocate(b"x" * SLOT)  # bin8 header: 2 bytes
    with pytest.raises(SerializationError):
        pool.allocate(object())
    with pytest.raises(SerializationError):
        pool.allocate({"nested": {1, 2}})
    assert len(pool) == 0 and pool.statistics().total_allocations == 0


def test_allocate_of_a_full_threadlocal_pool_with_a_timeout_waits_for_a_release(pool_name):
    """A full ThreadLocalPool's allocate(timeout=t) leaves the magazine path and waits for a
    slot as any pool does: a release from another thread lets it in; with timeout=0 (or None)
    it is PoolExhausted at once."""
    with ThreadLocalPool.create(pool_name, capacity=4, batch_size=2) as pool:
        held = [pool.allocate(i) for i in range(4)]
        for timeout in (None, 0):
            started = time.monotonic()
            with pytest.raises(PoolExhausted):
                pool.allocate("x", timeout=timeout)
            assert time.monotonic() - started < 1
        timer = threading.Timer(0.1, pool.release, (held[0],))
        timer.start()
        try:
            h = pool.allocate("late", timeout=10)
        finally:
            timer.join()
        assert pool.get(h) == "late" and len(pool) == 4


@pytest.mark.parametrize("bad", ["1", 1.0, None, -1, 0, 1 << 64, (1 << 32) | CAPACITY, [1]])
def test_every_handle_taking_call_refuses_what_is_not_a_handle_of_this_pool(pool, bad):
    """get, set, release, buffer and release_many refuse a non-int, a negative, a zero-generation
    or too-wide int and an index past the capacity with InvalidHandle; nothing changes."""
    h = pool.allocate("kept")
    for call in (lambda: pool.get(bad), lambda: pool.set(bad, 1), lambda: pool.release(bad),
                 lambda: pool.buffer(bad), lambda: pool.release_many([h, bad])):
        with pytest.raises(InvalidHandle):
            call()
    assert pool.get(h) == "kept" and len(pool) == 1


def test_a_released_handle_is_stale_for_every_call(pool):
    """After release, get, set, release, buffer and release_many of the old handle raise
    StaleHandle naming its slot and generation; the slot's new holder is untouched."""
    h = pool.allocate("old")
    pool.release(h)
    new = pool.allocate("new")
    assert new & 0xFFFFFFFF == h & 0xFFFFFFFF, "the slot was reused"
    for call in (lambda: pool.get(h), lambda: pool.set(h, 1), lambda: pool.release(h),
                 lambda: pool.buffer(h), lambda: pool.release_many([h])):
        with pytest.raises(StaleHandle, match=f"slot {h & 0xFFFFFFFF}, generation {h >> 32}"):
            call()
    with pytest.raises(StaleHandle, match="appears twice in one batch"):
        pool.release_many([new, h])  # one slot twice: refused before either is judged
    assert pool.get(new) == "new" and len(pool) == 1


def test_set_checks_its_arguments_and_value(pool):
    """set(handle, value): the wrong number of arguments is a TypeError; an invalid handle is
    InvalidHandle before the value is packed; a value too large or unpackable leaves the old
    value in place."""
    h = pool.allocate("old")
    with pytest.raises(TypeError, match=r"set\(handle, value\)"):
        pool._core.set(h)
    with pytest.raises(TypeError, match=r"set\(handle, value\)"):
        pool._core.set(h, 1, 2)

    class Loud:
        packed = False

    with pytest.raises(InvalidHandle):
        pool.set("h", Loud())
    with pytest.raises(ValueTooLarge):
        pool.set(h, "y" * SLOT)
    with pytest.raises(SerializationError):
        pool.set(h, object())
    assert pool.get(h) == "old"
    pool.set(h, "new")
    assert pool.get(h) == "new"


def test_get_of_a_length_past_the_slot_is_damage(fixed):
    """A published slot whose length word exceeds slot_size (forged) is not read past its end:
    get raises "a slot's length exceeds the slot size; run recover()"."""
    h = fixed.allocate("value")
    index = h & 0xFFFFFFFF
    at = meta_at(index) + 4 * L.META_LEN
    good = struct.unpack_from("<I", fixed._segment.mm, at)[0]
    struct.pack_into("<I", fixed._segment.mm, at, SLOT + 1)
    with pytest.raises(FastallocError, match="length exceeds the slot size; run recover"):
        fixed.get(h)
    struct.pack_into("<I", fixed._segment.mm, at, good)
    assert fixed.get(h) == "value"


def test_get_of_bytes_msgpack_cannot_unpack_is_a_serialization_error(fixed):
    """A slot whose bytes are not msgpack (0xc1 is never used) raises SerializationError from
    get, naming the handle; the slot stays allocated and a set() repairs it."""
    h = fixed.allocate(7)
    at = slot_bytes_at(fixed, h & 0xFFFFFFFF)
    fixed._segment.mm[at] = 0xC1
    with pytest.raises(SerializationError, match=f"{h:#x}|{h}"):
        fixed.get(h)
    fixed.set(h, 8)
    assert fixed.get(h) == 8


def test_a_str_whose_bytes_are_not_utf8_goes_to_the_unpacker(fixed):
    """A fixstr whose bytes are not UTF-8 (forged) is not a str the fast path returns: the
    unpacker decides, and its refusal is a SerializationError."""
    h = fixed.allocate("ab")
    at = slot_bytes_at(fixed, h & 0xFFFFFFFF)
    fixed._segment.mm[at + 1:at + 3] = b"\xff\xfe"
    with pytest.raises(SerializationError):
        fixed.get(h)


def test_allocate_many_checks_its_argument_and_is_all_or_nothing(pool):
    """allocate_many(non-iterable) is TypeError('allocate_many() takes an iterable of values');
    a batch with one value too large or unpackable allocates none; an empty batch is []; a batch
    larger than the free slots is PoolExhausted and takes none."""
    with pytest.raises(TypeError, match=r"allocate_many\(\) takes an iterable of values"):
        pool.allocate_many(3)
    with pytest.raises(ValueTooLarge):
        pool.allocate_many(["a", b"x" * SLOT])
    with pytest.raises(SerializationError):
        pool.allocate_many(["a", object()])
    assert pool.allocate_many([]) == [] and pool.allocate_many(iter(())) == []
    assert len(pool) == 0
    with pytest.raises(PoolExhausted):
        pool.allocate_many(range(CAPACITY + 1))
    assert len(pool) == 0
    handles = pool.allocate_many(x for x in range(3))
    assert [pool.get(h) for h in handles] == [0, 1, 2]


def test_release_many_checks_its_argument_and_is_all_or_nothing(pool):
    """release_many(non-iterable) is TypeError('release_many() takes an iterable of handles');
    the same handle twice is StaleHandle('appears twice') and releases none; one stale handle
    among live ones releases none; an empty batch is a no-op."""
    handles = pool.allocate_many(["a", "b", "c"])
    with pytest.raises(TypeError, match=r"release_many\(\) takes an iterable of handles"):
        pool.release_many(5)
    with pytest.raises(StaleHandle, match="appears twice in one batch"):
        pool.release_many([handles[0], handles[1], handles[0]])
    assert len(pool) == 3
    gone = pool.allocate("gone")
    pool.release(gone)
    with pytest.raises(StaleHandle):
        pool.release_many([handles[0], handles[1], gone])
    assert [pool.get(h) for h in handles] == ["a", "b", "c"]
    pool.release_many([])
    pool.release_many(iter(()))
    assert len(pool) == 3
    pool.release_many(h for h in handles)
    assert len(pool) == 0


def test_release_of_an_exported_slot_is_a_buffer_error(pool):
    """release and release_many of a slot with a buffer() view exported raise BufferError and
    release nothing; after the view is released they succeed."""
    a, b = pool.allocate(b"a"), pool.allocate(b"b")
    view = pool.buffer(b)
    with pytest.raises(BufferError):
        pool.release(b)
    with pytest.raises(BufferError):
        pool.release_many([a, b])
    assert len(pool) == 2 and pool.get(a) == b"a"
    view.release()
    pool.release_many([a, b])
    assert len(pool) == 0


def test_recover_and_commit_extent_check_their_arguments(fixed):
    """recover(reclaim, wait) and commit_extent(number, capacity) are positional with fixed
    types: TypeError otherwise. commit_extent of a number that is not the next extent (or
    extent 0, or past the table) returns False, and one that would pass 2**32 slots raises;
    neither changes anything."""
    core = fixed._core
    for call in (lambda: core.recover(), lambda: core.recover(True, "1"), lambda: core.commit_extent(1),
                 lambda: core.commit_extent("1", 4)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(FastallocError, match="growth would pass 2\\*\\*32 slots"):
        core.commit_extent(1, 0xFFFFFFFF)
    for number in (0, 2, -1, L.MAX_EXTENTS):
        assert core.commit_extent(number, 4) is False
    assert fixed.capacity == CAPACITY and core.extents == 1
    tally, taken_over, dead = core.recover(False, 1.0)
    assert taken_over is False and dead == [] and isinstance(tally, dict)


def test_acquire_steps_refuse_a_slot_this_process_is_not_writing(fixed):
    """publish_slot and unwind_slot take only a slot from take_slot(): any other index (free,
    allocated, past the capacity, not an int) is a ValueError or TypeError/OverflowError, and
    publish_slot needs exactly two arguments."""
    core = fixed._core
    h = fixed.allocate("held")
    for index in (h & 0xFFFFFFFF, 5, CAPACITY, 10**6):
        with pytest.raises(ValueError, match="not a slot this process is writing"):
            core.unwind_slot(index)
        with pytest.raises(ValueError, match="not a slot this process is writing"):
            core.publish_slot(index, "v")
    for index in (-1, "0", 1 << 64):
        with pytest.raises((TypeError, OverflowError)):
            core.unwind_slot(index)
    with pytest.raises(TypeError, match=r"publish_slot\(index, value\)"):
        core.publish_slot(1)
    index, previous = core.take_slot()
    assert previous is None
    with pytest.raises(ValueTooLarge):
        core.publish_slot(index, b"x" * SLOT)
    assert len(fixed) == 2  # still being written: counted, not handed out
    core.unwind_slot(index)
    assert len(fixed) == 1 and core.semaphore_value == CAPACITY - 1
    index, _ = core.take_slot()
    h2 = core.publish_slot(index, "published")
    assert fixed.get(h2) == "published"


def test_take_slot_returns_the_previous_bytes_of_a_used_slot(fixed):
    """take_slot() of a slot that held a value returns those bytes (for acquire()'s reuse); of a
    never-written slot None; a full pool is PoolExhausted (take_slot waits forever only with
    tokens, here there are none)."""
    h = fixed.allocate("before")
    fixed.release(h)
    taken = [fixed._core.take_slot() for _ in range(CAPACITY)]
    assert any(prev is not None and prev.endswith(b"before") for _, prev in taken)
    for index, _ in taken:
        fixed._core.unwind_slot(index)
    assert len(fixed) == 0


def test_pre_initialize_refuses_a_value_too_large(fixed):
    """pre_initialize packs its value first: one too large for a slot is ValueTooLarge and no
    slot is written."""
    with pytest.raises(ValueTooLarge):
        fixed._core.pre_initialize(b"x" * SLOT)
    assert len(fixed) == 0

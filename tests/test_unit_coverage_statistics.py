"""Unit coverage: statistics.c and module.c's functions (issue 22, item 7).

statistics.c reads without the lock and must answer sensibly whatever the
shared words say: a usage sum that went negative is 0, a peak below the usage is
the usage, a free list with a cycle or a fresh count past the capacity is walked
within bounds. reset_statistics zeroes events and keeps usage. module.c's
functions refuse what is not theirs with the standard exceptions.
"""

from __future__ import annotations

import struct

import pytest

from fastalloc_shm import FixedPool, ThreadLocalPool, _core, attach
from fastalloc_shm import _layout as L


def put_word(pool, index: int, value: int) -> None:
    struct.pack_into("<Q", pool._segment.mm, 8 * index, value)


def word(pool, index: int) -> int:
    return struct.unpack_from("<Q", pool._segment.mm, 8 * index)[0]


def ext_word_at(word_index: int) -> int:
    return L.HEADER_SIZE + 4 * word_index


def meta_at(index: int) -> int:
    return L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES


def test_usage_that_sums_below_zero_reads_as_zero(pool_name):
    """A header usage word that (forged, or mid-update) makes the sum negative: counters() and
    len() say 0, never a negative number or a huge unsigned one."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        pool.allocate("x")
        saved = word(pool, L.HDR_IN_USE)
        put_word(pool, L.HDR_IN_USE, (saved - 5) & (2**64 - 1))
        assert pool._core.counters()["current_usage"] == 0
        assert len(pool) == 0
        put_word(pool, L.HDR_IN_USE, saved)
        assert len(pool) == 1


def test_peak_is_never_below_current_usage(pool_name):
    """A peak word below the usage (a ThreadLocalPool's lost race, forged here) reads as the usage."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        pool.allocate_many([1, 2, 3])
        put_word(pool, L.HDR_PEAK, 1)
        stats = pool.statistics()
        assert stats.peak_usage == stats.current_usage == 3


def test_reset_statistics_keeps_usage_and_offsets_the_threadlocal_entries(pool_name):
    """reset_statistics() in a ThreadLocalPool with lock-free counts in two client entries:
    every event counter reads 0 after, usage stays true and the peak restarts at it, and the
    counts go on from zero."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=2) as pool:
        other = attach(pool_name)
        try:
            mine = [pool.allocate(i) for i in range(3)]
            theirs = [other.allocate(i) for i in range(2)]
            pool.release(mine.pop())
            pool.reset_statistics()
            s = pool.statistics()
            assert (s.total_allocations, s.total_deallocations, s.current_usage, s.peak_usage) == (0, 0, 4, 4)
            assert (s.allocation_failures, s.growth_count, s.lock_timeouts, s.recoveries, s.steals) == (0,) * 5
            other.release(theirs.pop())
            pool.allocate("more")
            s = other.statistics()
            assert (s.total_allocations, s.total_deallocations, s.current_usage) == (1, 1, 4)
        finally:
            other.close()


def test_clients_lists_each_attachment_once_with_its_pid(pool_name):
    """clients(): one row per attachment (entry, pid, start ticks, alive), live ones alive."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        other = attach(pool_name)
        try:
            rows = pool.clients()
            assert sorted(r.entry for r in rows) == sorted({pool._core.entry, other._core.entry})
            assert all(r.alive for r in rows)
        finally:
            other.close()
        assert [r.entry for r in pool.clients()] == [pool._core.entry]


def test_slot_states_walks_a_cyclic_free_list_within_bounds(pool_name):
    """A free list whose links form a cycle (forged) is listed at most capacity + 1 long: the
    walk ends, no hang."""
    with FixedPool.create(pool_name, capacity=8) as pool:
        pool.release_many(pool.allocate_many(range(4)))
        states = pool._core.slot_states()[0]
        head = states["free_list"][0]
        mm = pool._segment.mm
        struct.pack_into("<I", mm, meta_at(head) + 4 * L.META_SEQ, head + 1)  # the head links to itself
        walked = pool._core.slot_states()[0]["free_list"]
        assert walked == [head] * (8 + 1)


def test_slot_states_clamps_a_fresh_count_past_the_capacity(pool_name):
    """An extent whose fresh count is past its capacity (forged) is listed with capacity rows."""
    with FixedPool.create(pool_name, capacity=8) as pool:
        pool.allocate("x")
        mm = pool._segment.mm
        saved = struct.unpack_from("<I", mm, ext_word_at(L.EXT_FRESH))[0]
        struct.pack_into("<I", mm, ext_word_at(L.EXT_FRESH), 1000)
        row = pool._core.slot_states()[0]
        assert row["fresh"] == 8 and len(row["slots"]) == 8 and row["capacity"] == 8
        struct.pack_into("<I", mm, ext_word_at(L.EXT_FRESH), saved)
        assert pool._core.slot_states()[0]["fresh"] == saved


def test_module_functions_refuse_wrong_arguments():
    """extent_size raises ValueError when the extent would not fit in memory; extent_size,
    data_offset and the other functions raise TypeError for wrong argument types; fault() of a
    name that is no fault point is a ValueError naming it, of a non-str a TypeError; init_extent
    stamps an extent header (capacity, magic, pool id) into a writable buffer."""
    with pytest.raises(ValueError, match="does not fit in memory"):
        _core.extent_size(0xFFFFFFFF, 0xFFFFFFFF, 4096)
    # data_offset cannot overflow on 64 bits (u32 slots x 16 bytes of metadata): it answers
    assert _core.data_offset(0xFFFFFFFF, 0x80000000) % 0x80000000 == 0
    for call in (lambda: _core.extent_size("1", 2, 3), lambda: _core.data_offset(1), lambda: _core.init_extent(1, 2),
                 lambda: _core.lock_byte("0", 0), lambda: _core.byte_locked(0), lambda: _core.fault(1)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(ValueError, match="'no.such.point' is not a fault point"):
        _core.fault("no.such.point")
    header = bytearray(L.EXT_HEADER_BYTES)
    _core.init_extent(header, 4, 0x1122334455667788)
    words = struct.unpack_from(f"<{L.EXT_HEADER_BYTES // 4}I", header)
    assert words[L.EXT_CAPACITY] == 4 and words[L.EXT_MAGIC] == L.EXTENT_MAGIC
    assert (words[L.EXT_POOL_ID_HIGH] << 32 | words[L.EXT_POOL_ID_LOW]) == 0x1122334455667788
    assert _core.extent_size(4, 64, 64) % 4096 == 0 and _core.data_offset(4, 64) % 64 == 0
    assert _core.fault_active() is False


def test_lock_byte_and_byte_locked_on_a_real_file(tmp_path):
    """lock_byte takes an OFD lock on one byte (True), a second description cannot (False), and
    byte_locked from a third says the byte is held; closing the holder frees it."""
    import os

    path = tmp_path / "locks"
    path.write_bytes(b"\0" * 16)
    a, b, c = (os.open(path, os.O_RDWR) for _ in range(3))
    try:
        assert _core.lock_byte(a, 3) is True
        assert _core.lock_byte(b, 3) is False
        assert _core.byte_locked(c, 3) is True and _core.byte_locked(c, 4) is False
        os.close(a)
        a = -1
        assert _core.byte_locked(c, 3) is False and _core.lock_byte(b, 3) is True
    finally:
        for fd in (a, b, c):
            if fd >= 0:
                os.close(fd)

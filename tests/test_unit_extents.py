"""Unit: extents.c, where slots are: geometry, mapping, locating.

Its invariant (the top of extents.c): every size computed from segment words
is overflow-checked and checked against the mapping before use; an extent is
used only once its header names its capacity, the extent magic and this pool's
id; committed extents are mapped lazily by any process; mapping never raises
under the lock (a Failure, raised after unlocking).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import pytest

from fastalloc_shm import FastallocError, FixedPool, GrowingPool, GrowthStrategy, InvalidHandle, _core, attach
from fastalloc_shm import _layout as L

from . import requirements


def test_geometry_overflow_is_refused():
    with pytest.raises(ValueError, match="does not fit in memory"):
        _core.extent_size(2**32 - 8, 2**32 - 8, 8)
    assert _core.extent_size(1, 8, 8) == mmap.PAGESIZE
    assert _core.data_offset(4, 8) == 128 and _core.data_offset(4, 256) == 256  # after the metadata, aligned


def header(pool, index: int) -> int:
    return struct.unpack_from("<Q", pool._segment.mm, 8 * index)[0]


def put(pool, index: int, value: int) -> None:
    struct.pack_into("<Q", pool._segment.mm, 8 * index, value)


@pytest.mark.parametrize("word, value", [
    (L.HDR_ALIGNMENT, 24), (L.HDR_ALIGNMENT, 4), (L.HDR_STRIDE, 8), (L.HDR_POOL_ID, 0), (L.HDR_EXTENTS, 0),
    (L.HDR_EXTENTS, L.MAX_EXTENTS + 1), (L.HDR_SLOT_SIZE, 0), (L.EXTENT_TABLE_OFFSET // 8 + 1, 10**6),
    (L.EXTENT_TABLE_OFFSET // 8, 1), (L.HDR_VERSION, 99),
])
def test_a_header_that_does_not_fit_its_segment_is_refused_at_attach(pool_name, word, value):
    with FixedPool.create(pool_name, capacity=8, slot_size=64) as pool:
        saved = header(pool, word)
        put(pool, word, value)
        try:
            with pytest.raises(FastallocError):
                attach(pool_name)
        finally:
            put(pool, word, saved)
        attach(pool_name).close()


def test_extent_0_of_another_pool_is_refused(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        at = L.HEADER_SIZE + 4 * L.EXT_POOL_ID_LOW
        saved = pool._segment.mm[at:at + 4]
        pool._segment.mm[at:at + 4] = bytes(4)
        try:
            with pytest.raises(FastallocError, match="extent 0's header is damaged"):
                attach(pool_name)
        finally:
            pool._segment.mm[at:at + 4] = saved


@pytest.fixture
def grown(pool_name):
    """A pool of two extents, the second one committed by this process."""
    with GrowingPool.create(pool_name, capacity=4, max_capacity=8, growth_strategy=GrowthStrategy.linear(4)) as pool:
        handles = [pool.allocate(i) for i in range(6)]
        assert pool._core.extents == 2
        yield pool, handles, Path(f"/dev/shm/fastalloc.{pool_name}.x1")


def edit_extent(path: Path, offset: int, data: bytes) -> bytes:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(len(data))
        f.seek(offset)
        f.write(data)
    return old


def test_an_extent_of_another_pool_id_is_refused(grown):
    pool, handles, x1 = grown
    saved = edit_extent(x1, 4 * L.EXT_POOL_ID_HIGH, b"\x01\x02\x03\x04")
    try:
        with pytest.raises(FastallocError, match="belongs to another pool"):
            attach(pool.name)
    finally:
        edit_extent(x1, 4 * L.EXT_POOL_ID_HIGH, saved)
    with attach(pool.name) as other:
        assert other.get(handles[5]) == 5


def test_a_table_entry_that_does_not_follow_is_refused(grown):
    pool, _, _ = grown
    base = L.EXTENT_TABLE_OFFSET // 8 + 2
    for word, value in ((base, 5), (base + 1, 0), (base + 1, 2**32)):
        saved = header(pool, word)
        put(pool, word, value)
        try:
            with pytest.raises(FastallocError, match="does not follow the previous extent"):
                attach(pool.name)
        finally:
            put(pool, word, saved)


def test_a_short_or_missing_extent_is_refused(grown):
    pool, _, x1 = grown
    size = x1.stat().st_size
    os.truncate(x1, L.EXT_HEADER_BYTES)
    try:
        with pytest.raises(FastallocError, match="smaller than its capacity needs"):
            attach(pool.name)
    finally:
        os.truncate(x1, size)
    hidden = x1.with_name(x1.name + ".hidden")
    x1.rename(hidden)
    try:
        with pytest.raises(FastallocError, match="cannot open a growth extent"):
            attach(pool.name)
    finally:
        hidden.rename(x1)


@requirements.needs_root("to give a growth extent another owner")
def test_an_extent_of_an_untrusted_owner_is_refused(grown):
    pool, _, x1 = grown
    os.chown(x1, 65534, 65534)
    try:
        with pytest.raises(FastallocError, match="65534"):
            attach(pool.name)
    finally:
        os.chown(x1, 0, 0)


def test_an_extent_count_past_the_table_is_refused_after_attach(grown):
    pool, handles, _ = grown
    put(pool, L.HDR_EXTENTS, L.MAX_EXTENTS + 1)
    try:
        with pytest.raises(FastallocError, match="extent count beyond the table"):
            pool.recover()
    finally:
        put(pool, L.HDR_EXTENTS, 2)
    assert pool.get(handles[0]) == 0


def test_extents_are_mapped_lazily_by_any_process(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=8, growth_strategy=GrowthStrategy.linear(4)) as pool, \
            attach(pool_name) as other:
        handles = [pool.allocate(i) for i in range(6)]
        assert other._core.extents == 1
        assert other.get(handles[5]) == 5  # an index past what it mapped: it maps extent 1 then
        assert other._core.extents == 2
        beyond = (1 << 32) | 8
        with pytest.raises(InvalidHandle):
            other.get(beyond)
        other.release(handles[4])
        assert len(pool) == 5


def test_a_handle_in_an_extent_this_process_cannot_map_names_the_extent_not_the_handle(pool_name):
    """A live handle of a growth extent another attachment made, whose file this process cannot
    open: get() says the extent cannot be opened (the handle is fine), never InvalidHandle
    "beyond capacity"; once the file is back, the same get() reads the value."""
    with GrowingPool.create(pool_name, capacity=2, max_capacity=8, growth_strategy=GrowthStrategy.linear(2)) as pool:
        other = attach(pool_name)
        try:
            handles = [pool.allocate(i) for i in range(3)]  # the third grows the pool: extent 1
            extent, moved = f"/dev/shm/fastalloc.{pool_name}.x1", f"/dev/shm/fastalloc.{pool_name}.moved"
            os.rename(extent, moved)
            try:
                with pytest.raises(FastallocError, match="cannot open a growth extent") as raised:
                    other.get(handles[2])
                assert not isinstance(raised.value, InvalidHandle)
            finally:
                os.rename(moved, extent)
            assert other.get(handles[2]) == 2
        finally:
            other.close()

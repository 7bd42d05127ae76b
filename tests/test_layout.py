"""Python and the compiled core read one table of offsets (_layout.h), and agree on where things are."""

import mmap
import os

import pytest

from fastalloc_shm import FixedPool, GrowingPool, GrowthStrategy, _core
from fastalloc_shm import _layout as L


def test_python_layout_is_the_core_table():
    for name, value in _core.LAYOUT.items():
        assert getattr(L, name) == value, name
    assert L.MUTEX_SIZE <= L.MUTEX_BYTES, "pthread_mutex_t does not fit its place in the header"
    assert L.CONFIG_OFFSET + L.MAX_CONFIG_BYTES <= L.CLIENT_TABLE_OFFSET
    assert L.CLIENT_TABLE_OFFSET + L.MAX_CLIENTS * L.CLIENT_BYTES == L.CHANNEL_TABLE_OFFSET
    assert L.CHANNEL_TABLE_OFFSET + L.MAX_CHANNELS * L.CHANNEL_BYTES == L.HEADER_SIZE
    assert 8 * L.CH_WAKE + 8 <= L.CHANNEL_BYTES and L.CHANNEL_NAME_BYTES <= 8 * L.CH_HEAD
    assert L.EXTENT_TABLE_OFFSET + 16 * L.MAX_EXTENTS <= L.CONFIG_OFFSET
    assert L.HEADER_SIZE % mmap.PAGESIZE == 0


@pytest.mark.parametrize("capacity, slot_size, alignment", [(1, 8, 8), (100, 100, 8), (1000, 1024, 64), (7, 300, 4096)])
def test_segment_sizes_and_slot_offsets_agree(pool_name, capacity, slot_size, alignment):
    with FixedPool.create(pool_name, capacity=capacity, slot_size=slot_size, alignment=alignment) as pool:
        stride = L.stride_for(slot_size, alignment)
        assert os.stat(f"/dev/shm/fastalloc.{pool_name}").st_size == L.main_segment_size(capacity, stride, alignment)
        data = L.HEADER_SIZE + L.data_offset(capacity, alignment)
        assert data % max(alignment, 64) == 0
        handles = [pool.allocate(b"v") for _ in range(capacity)]
        for h in handles:
            view = pool.buffer(h)
            offset = _offset_of(pool, view)
            assert offset == data + (h & 0xFFFFFFFF) * stride
            view.release()


def _offset_of(pool, view) -> int:
    """Where a buffer() view starts in the main mapping (the core computed it; Python checks it)."""
    base = memoryview(pool._segment.mm)
    try:
        import ctypes

        start = ctypes.addressof(ctypes.c_char.from_buffer(base))
        at = ctypes.addressof(ctypes.c_char.from_buffer(view))
        return at - start
    finally:
        base.release()


def test_slot_metadata_is_where_the_table_says(pool_name):
    with FixedPool.create(pool_name, capacity=4, slot_size=64) as pool:
        h = pool.allocate("x")
        index, generation = h & 0xFFFFFFFF, h >> 32
        meta = L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES
        mm = pool._segment.mm
        word = lambda field: int.from_bytes(mm[meta + 4 * field:meta + 4 * field + 4], "little")  # noqa: E731
        assert word(L.META_GEN) == generation
        assert word(L.META_WORD) >> L.STATE_SHIFT == L.ALLOCATED
        assert word(L.META_LEN) == 2  # msgpack fixstr "x"
        states = pool._core.slot_states()[0]
        assert states["slots"][index][:2] == (generation, L.ALLOCATED)
        assert int.from_bytes(mm[8 * L.HDR_CAPACITY:8 * L.HDR_CAPACITY + 8], "little") == pool.capacity == 4


def test_extent_geometry_agrees(pool_name):
    with GrowingPool.create(pool_name, capacity=2, slot_size=100, growth_strategy=GrowthStrategy.linear(5)) as pool:
        pool.allocate_many(range(3))
        stride = L.stride_for(100, 8)
        assert os.stat(f"/dev/shm/fastalloc.{pool_name}.x1").st_size == L.extent_size(5, stride, 8)
        assert pool.nbytes == L.main_segment_size(2, stride, 8) + L.extent_size(5, stride, 8)

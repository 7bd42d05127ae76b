"""Unit coverage, round 2: extents.c's checks of words read from the segment (issue 22, item 7).

Pinned: a growth extent is used only when its header names its capacity, the
extent magic and a head and fresh count within that capacity (extent_sane); a
table entry whose slots would pass index 2^32 is refused; a Core refuses a
header whose geometry does not hold (magic, slot size and stride bounds, the
stride's alignment, extent 0's base and capacity, a segment too small for what
the header says) before it touches anything else. The pool stays usable after
each refusal once the forged word is put back.
"""

from __future__ import annotations

import mmap
import struct

import pytest

from fastalloc_shm import FastallocError, attach
from fastalloc_shm import _layout as L

from .test_unit_coverage_type import core_arguments, fresh_core  # noqa: F401 - core_arguments is a fixture
from .test_unit_extents import edit_extent, grown, header, put  # noqa: F401 - grown is a fixture


@pytest.mark.parametrize("field, value", [
    (L.EXT_FRESH, 5),  # fresh past the capacity (4)
    (L.EXT_HEAD, 3),  # the free list's head past fresh (2 slots handed out of extent 1)
    (L.EXT_CAPACITY, 8),  # not the capacity the table says
    (L.EXT_MAGIC, 0x12345678),
])
def test_a_growth_extent_whose_header_does_not_hold_is_refused(grown, field, value):  # noqa: F811
    pool, handles, x1 = grown
    saved = edit_extent(x1, 4 * field, struct.pack("<I", value))
    try:
        with pytest.raises(FastallocError, match="header is damaged or belongs to another pool"):
            attach(pool.name)
    finally:
        edit_extent(x1, 4 * field, saved)
    with attach(pool.name) as other:
        assert other.get(handles[5]) == 5


def test_a_table_entry_past_index_two_to_the_32_is_refused(grown):  # noqa: F811
    """Extent 1 at base 4 with 2^32 - 2 slots would end past the last index a handle can name."""
    pool, _, _ = grown
    word = L.EXTENT_TABLE_OFFSET // 8 + 3
    saved = header(pool, word)
    put(pool, word, 2**32 - 2)
    try:
        with pytest.raises(FastallocError, match="does not follow the previous extent"):
            attach(pool.name)
    finally:
        put(pool, word, saved)


TABLE = L.EXTENT_TABLE_OFFSET // 8


@pytest.mark.parametrize("word, value", [
    (L.HDR_MAGIC, 0x0BADC0DE),
    (L.HDR_SLOT_SIZE, 2**32),  # past 32 bits
    (L.HDR_SLOT_SIZE, 10**6),  # the stride below the slot size
    (L.HDR_STRIDE, 2**32),  # past 32 bits
    (L.HDR_STRIDE, 260),  # not a multiple of the alignment
    (TABLE, 8),  # extent 0 not at index 0
    (TABLE + 1, 2**32),  # extent 0's capacity past 32 bits
    (TABLE + 1, 10**6),  # more slots than the segment holds
], ids=["magic", "slot>u32", "stride<slot", "stride>u32", "stride%align", "base0", "cap0>u32", "cap0>segment"])
def test_a_core_refuses_a_header_whose_geometry_does_not_hold(core_arguments, word, value):  # noqa: F811
    """A Core built on a copy of the segment (page-aligned) with one header word forged refuses
    it as not matching its segment, and is left closed."""
    pool, args, kwargs = core_arguments
    copy = mmap.mmap(-1, len(pool._segment.mm))
    copy[:] = pool._segment.mm[:]
    struct.pack_into("<Q", copy, 8 * word, value)
    core, exc = fresh_core(args, kwargs, buffer=copy, creating=False)
    assert isinstance(exc, FastallocError) and "the pool header does not match its segment" in str(exc), exc
    assert core.closed
    del core


def test_a_core_refuses_a_buffer_shorter_than_the_header(core_arguments):  # noqa: F811
    pool, args, kwargs = core_arguments
    short = mmap.mmap(-1, mmap.PAGESIZE)
    short[:] = pool._segment.mm[:mmap.PAGESIZE]
    assert L.HEADER_SIZE > mmap.PAGESIZE or pytest.skip("the header fits in a page here")
    core, exc = fresh_core(args, kwargs, buffer=short, creating=False)
    assert isinstance(exc, FastallocError) and "does not match its segment" in str(exc), exc
    del core

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
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fastalloc_shm import FastallocError, GrowingPool, GrowthStrategy, attach
from fastalloc_shm import _layout as L

from . import requirements
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
ROOT = Path(__file__).resolve().parent.parent


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
    assert L.HEADER_SIZE > mmap.PAGESIZE, "a page-aligned buffer shorter than the header needs a header past a page"
    core, exc = fresh_core(args, kwargs, buffer=short, creating=False)
    assert isinstance(exc, FastallocError) and "does not match its segment" in str(exc), exc
    del core


@requirements.needs_root("to give a growth extent another owner")
def test_an_extent_of_a_trusted_uid_other_than_the_owners_is_used(grown):  # noqa: F811
    """A growth extent owned by a uid the attacher trusts (not the main segment's owner) is mapped
    and its values read; without that uid in trusted_uids the same extent is refused."""
    pool, handles, x1 = grown
    os.chown(x1, 65534, 65534)
    try:
        with attach(pool.name, trusted_uids=[65534]) as other:
            assert other.get(handles[5]) == 5
        with pytest.raises(FastallocError, match="65534"):
            attach(pool.name)
    finally:
        os.chown(x1, 0, 0)


def test_a_growth_that_cannot_be_mapped_fails_the_allocate(core_arguments):  # noqa: F811
    """The grow callable says it grew (the header names extent 1) but the extent cannot be opened:
    the allocate raises the mapping's error, hands out nothing and takes nothing; with the header
    put back the pool is as it was (full)."""
    pool, args, kwargs = core_arguments
    entry = TABLE + 2
    saved = [header(pool, L.HDR_EXTENTS), header(pool, entry), header(pool, entry + 1)]

    def grow(wanted: int) -> bool:
        put(pool, entry, 4)
        put(pool, entry + 1, 4)
        put(pool, L.HDR_EXTENTS, 2)
        return True

    core, exc = fresh_core(args, kwargs, grow=grow, creating=False)
    assert exc is None
    try:
        held = [core.allocate(i) for i in range(4)]
        tokens = core.semaphore_value
        try:
            with pytest.raises(FastallocError, match="cannot open a growth extent"):
                core.allocate("one too many")
        finally:
            for word, value in zip((L.HDR_EXTENTS, entry, entry + 1), saved, strict=True):
                put(pool, word, value)
        assert core.extents == 1 and core.semaphore_value == tokens and len(pool) == 4
        assert [core.get(h) for h in held] == [0, 1, 2, 3]
    finally:
        core.close()


MMAP_CHILD = r'''
import resource, sys, fastalloc_shm
from fastalloc_shm import FastallocError
p = fastalloc_shm.attach(sys.argv[1])
print("attached", flush=True)
h = int(sys.stdin.readline())
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 20), resource.RLIM_INFINITY))  # 2 MiB more: no 4 MiB extent
try:
    p.get(h)
    print("read without the room to map it")
except FastallocError:
    print("refused", p._core.extents)
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
value = p.get(h)
print(p._core.extents, value, flush=True)
p.close()
'''


def test_an_extent_that_cannot_be_mapped_for_want_of_memory_is_mapped_later(pool_name):
    """A process whose address space cannot take a new 4 MiB extent (RLIMIT_AS) fails the get of a
    value in it with a FastallocError and maps nothing; once it has the room, the same get maps the
    extent and reads the value."""
    with GrowingPool.create(pool_name, capacity=4, max_capacity=8, slot_size=1 << 20,
                            growth_strategy=GrowthStrategy.linear(4)) as pool:
        child = subprocess.Popen([sys.executable, "-c", MMAP_CHILD, pool_name], cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "attached"
            handles = [pool.allocate(i) for i in range(6)]  # extent 1 is created after the child attached
            out, err = child.communicate(f"{handles[5]}\n", timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert child.returncode == 0, err
        assert out.splitlines() == ["refused 1", "2 5"]

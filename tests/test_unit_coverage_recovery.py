"""Unit coverage: recovery.c's judgement of channel states (issue 22, item 7).

A slot QUEUED for a channel number past the table or for a channel that does not
exist, or TAKEN from a channel that does not exist, belongs to nobody: recovery
judges it corrupt and frees it, and leaves the real
channel's items alone.
"""

from __future__ import annotations

import struct

from fastalloc_shm import FixedPool
from fastalloc_shm import _layout as L


def meta_at(index: int) -> int:
    return L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES


def test_queued_or_taken_slots_of_no_channel_are_judged_corrupt_and_freed(pool_name):
    """Three forged slots (QUEUED for channel 70 > 63, QUEUED for the unused channel 5, TAKEN
    from the unused channel 7) are counted as corrupt by recover() and freed (unreadable,
    on the free list); the item of the real channel 0 is kept and comes out."""
    with FixedPool.create(pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        todo.put("kept")
        handles = [pool.allocate(i) for i in range(3)]
        mm = pool._segment.mm
        forged = [(L.QUEUED << L.STATE_SHIFT) | 70, (L.QUEUED << L.STATE_SHIFT) | 5,
                  ((L.TAKEN + 7) << L.STATE_SHIFT) | (pool._core.entry << L.INCARNATION_BITS)]
        for h, word in zip(handles, forged, strict=True):
            at = meta_at(h & 0xFFFFFFFF)
            gen, _, length, seq = struct.unpack_from("<4I", mm, at)
            struct.pack_into("<4I", mm, at, gen | (L.UNREADABLE if word >> L.STATE_SHIFT == L.QUEUED else 0), word,
                             length, seq)
        report = pool.recover()
        assert report.corrupt_slots == 3
        rows = pool._core.slot_states()[0]["slots"]
        for h in handles:
            g, state, *_ = rows[h & 0xFFFFFFFF]
            assert state == L.FREE and g & L.UNREADABLE  # freed, unreadable until allocated again
        assert len(pool) == 1 and todo.get(timeout=0) == "kept" and len(pool) == 0


def test_a_corrupt_slots_generation_moves_on_so_an_old_handle_to_it_stays_stale(pool_name):
    """A slot judged corrupt is freed with its generation moved on from what it held, not restarted
    at 1: the handle that named it before stays StaleHandle after the slot is handed out again
    (restarted, the next allocation could hand out a handle equal to an old one)."""
    import pytest

    from fastalloc_shm import StaleHandle

    with FixedPool.create(pool_name, capacity=1) as pool:
        for _ in range(3):  # generation 1 -> 4: far from a restart at 1
            pool.release(pool.allocate("churn"))
        old = pool.allocate("old")
        mm = pool._segment.mm
        at = meta_at(old & 0xFFFFFFFF)
        gen, _, length, seq = struct.unpack_from("<4I", mm, at)
        struct.pack_into("<4I", mm, at, gen | L.UNREADABLE, (L.QUEUED << L.STATE_SHIFT) | 70, length, seq)
        assert pool.recover().corrupt_slots == 1
        new = pool.allocate("new")
        assert new & 0xFFFFFFFF == old & 0xFFFFFFFF and new >> 32 > old >> 32
        with pytest.raises(StaleHandle):
            pool.get(old)
        # What the earlier churn did to a generation-1 handle: stale too, not the new value.
        with pytest.raises(StaleHandle):
            pool.get((1 << 32) | (old & 0xFFFFFFFF))

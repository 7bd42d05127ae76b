"""Unit coverage, round 2: liveness.c's repair before an incarnation wraps (issue 22, item 7).

Pinned: a claimer whose entry's incarnation is about to wrap repairs under the
lock first; when that lock comes with EOWNERDEAD the repair the lock does is
the one (the entry is claimed, the dead holder's token is back, one recovery
counted); when the repair cannot see every extent (a growth extent that cannot
be opened) the claim fails with that error and leaves the entry as it was,
unclaimed, and a later claim that can see them succeeds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from fastalloc_shm import FastallocError, FixedPool, GrowingPool, GrowthStrategy, attach
from fastalloc_shm import _layout as L

from .test_unit_liveness import entry_words
from .test_unit_lock import Holder, word

MASK = (1 << L.INCARNATION_BITS) - 1


def put_incarnation(pool, entry: int, incarnation: int) -> None:
    struct.pack_into("<I", pool._segment.mm, L.CLIENT_TABLE_OFFSET + entry * L.CLIENT_BYTES + 4, incarnation)


def test_a_wrap_that_meets_a_dead_lock_holder_claims_after_that_repair(tmp_path, pool_name):
    """The holder dies with the lock (its entry's lock dropped); the next claimer takes that entry,
    whose incarnation is set to wrap: its lock gets EOWNERDEAD and repairs, and the claim goes on
    with incarnation 1. The old incarnation's slot is an orphan now, the token is back."""
    with FixedPool.create(pool_name, capacity=8, lock_timeout=5) as pool:
        h = pool.allocate("old holder's")
        entry = pool._core.entry + 1  # the holder's, below
        meta = L.HEADER_SIZE + L.EXT_HEADER_BYTES + 4
        index = h & 0xFFFFFFFF
        struct.pack_into("<I", pool._segment.mm, meta + index * L.META_BYTES,
                         (L.ALLOCATED << L.STATE_SHIFT) | (entry << L.INCARNATION_BITS) | MASK)
        recoveries = word(pool, L.HDR_RECOVERIES)
        holder = Holder(tmp_path, pool_name, "kill")
        assert entry_words(pool, entry)[0] == holder.pid
        put_incarnation(pool, entry, MASK)
        with attach(pool_name) as other:
            assert other._core.entry == entry
            assert entry_words(pool, entry) == (os.getpid(), 1)
            assert word(pool, L.HDR_RECOVERIES) == recoveries + 1, "not one repair, by the lock"
            assert word(pool, L.HDR_REPAIR_PENDING) == 0
            owner = pool._core.slot_states()[0]["slots"][index][2]
            assert owner == L.ORPHAN_OWNER >> L.INCARNATION_BITS, "the wrapped incarnation's slot still names it"
            assert other.get(h) == "old holder's"
        assert len(pool) == 1 and pool._core.semaphore_value == 7


def test_a_wrap_whose_repair_cannot_map_an_extent_claims_nothing(pool_name):
    """The pool grew in another attachment; this one has not mapped extent 1 and its file is
    hidden. Re-registering (after_fork) onto an entry set to wrap repairs first, which must map
    the extent: the claim fails with that error, the entry stays unclaimed with its incarnation.
    With the file back, the same claim succeeds with incarnation 1."""
    with GrowingPool.create(pool_name, capacity=4, max_capacity=8, growth_strategy=GrowthStrategy.linear(4),
                            lock_timeout=5) as pool, attach(pool_name) as other:
        handles = [other.allocate(i) for i in range(6)]
        assert pool._core.extents == 1 and other._core.extents == 2
        mine = pool._core.entry
        put_incarnation(pool, mine, MASK)
        x1 = Path(f"/dev/shm/fastalloc.{pool_name}.x1")
        hidden = x1.with_name(x1.name + ".hidden")
        x1.rename(hidden)
        try:
            with pytest.raises(FastallocError, match="cannot open a growth extent"):
                pool._core.after_fork(0)
            assert pool._core.entry == -1
            assert entry_words(pool, mine)[1] == MASK, "an incarnation moved on without its repair"
            assert mine not in {row.entry for row in other.clients()} or not [
                row for row in other.clients() if row.entry == mine and row.alive], "the entry stayed locked"
        finally:
            hidden.rename(x1)
        pool._core.after_fork(0)
        assert pool._core.entry == mine and entry_words(pool, mine)[1] == 1
        assert [pool.get(h) for h in handles] == list(range(6))

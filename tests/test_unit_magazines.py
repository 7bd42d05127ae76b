"""Unit: magazines.c, ThreadLocalPool's per-process cache of slots.

Its invariant (the top of magazines.c): a magazine's slots are CACHED by this
process in shared memory, so recovery returns them if it dies; a refill takes a
batch under one lock; a magazine past twice the batch drains its bottom back
(if the lock is free); a magazine never hides a free slot: an allocator that
finds the free lists empty steals from other magazines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastalloc_shm import PoolExhausted, ThreadLocalPool, attach
from fastalloc_shm import _layout as L

ROOT = Path(__file__).resolve().parent.parent
BATCH = 4


def states(pool) -> list[tuple[int, int]]:
    """(state, owner entry) of every slot ever handed out."""
    return [(row[1], row[2]) for row in pool._core.slot_states()[0]["slots"]]


def test_refill_and_drain_counts(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=BATCH) as pool:
        me = pool._core.entry
        h = pool.allocate(0)
        assert pool._core.cached == BATCH - 1  # one refill of a batch, one taken
        assert states(pool) == [(L.ALLOCATED, me)] + [(L.CACHED, me)] * (BATCH - 1)
        handles = [h] + [pool.allocate(i) for i in range(1, 3 * BATCH)]
        assert pool._core.semaphore_value == 64 - 3 * BATCH - pool._core.cached
        for _n, h in enumerate(handles, 1):
            pool.release(h)
            assert pool._core.cached <= 2 * BATCH, "a magazine past twice the batch was not drained"
            assert pool._core.semaphore_value + pool._core.cached + len(pool) == 64
        assert pool._core.cached <= 2 * BATCH and len(pool) == 0
        cached = pool._core.cached
        assert sum(state == L.CACHED for state, _ in states(pool)) == cached
        with attach(pool_name) as other:
            pool.close()  # drains the magazine back: nothing left for a recovery to return
            assert other.recover().cached_returned == 0 and other._core.semaphore_value == 64


def test_a_magazine_never_hides_a_free_slot(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=BATCH, batch_size=BATCH) as pool:
        first = pool.allocate("mine")  # the whole pool is in this process now: one used, the rest cached
        assert pool._core.cached == BATCH - 1 and pool._core.semaphore_value == 0
        code = f"import fastalloc_shm\np = fastalloc_shm.attach({pool_name!r})\nprint(p.allocate('stolen'))\np.close()"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        stolen = int(out.stdout)
        assert pool.get(stolen) == "stolen" and pool.statistics().steals >= 1
        assert pool._core.cached == BATCH - 1, "the thief leaves the owner's count alone"
        mine = [pool.allocate(i) for i in range(BATCH - 2)]  # stolen indices are dropped on the way
        assert pool._core.cached == 0
        with pytest.raises(PoolExhausted):
            pool.allocate("none left")
        indices = [h & 0xFFFFFFFF for h in [first, *mine, stolen]]
        assert len(set(indices)) == len(indices) == BATCH == len(pool), "a slot handed out twice"


def test_release_of_a_slot_being_set_waits_for_the_lock(pool_name):
    """A release that finds the slot claimed by set() frees it under the lock, straight to the free lists."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=BATCH) as pool:
        h = pool.allocate("x")
        meta = L.HEADER_SIZE + L.EXT_HEADER_BYTES + (h & 0xFFFFFFFF) * L.META_BYTES
        mm = pool._segment.mm
        word = int.from_bytes(mm[meta + 4:meta + 8], "little")
        mm[meta + 4:meta + 8] = ((L.SETTING << L.STATE_SHIFT) | (word & L.OWNER_MASK)).to_bytes(4, "little")
        with pytest.raises(Exception, match="stale|released|not"):
            pool.release(h)  # still SETTING under the lock: not a value to release
        mm[meta + 4:meta + 8] = word.to_bytes(4, "little")
        pool.release(h)
        assert len(pool) == 0

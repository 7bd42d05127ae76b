"""Unit: recovery.c, judge every slot by its state and rebuild from the verdicts.

Its invariant (the top of recovery.c): nothing a dead process wrote half-way is
trusted. Each slot below its extent's fresh mark is judged:
  being-written by a dead owner    -> freed
  cached by a dead owner           -> freed
  being set() when its setter died -> torn if the sequence is odd, else allocated
  allocated by a dead owner        -> kept (re-owned by ORPHAN_OWNER), or freed when reclaiming
  metadata that makes no sense     -> freed, counted corrupt
then the free lists, the totals and the free-slot count are derived again.

The dead owner is real: a child that attached and left by os._exit (its OFD
lock dropped, its client entry left behind). Its slots are forged by writing
the slot metadata (layout.h) through the segment, as tests/test_fuzz_segment.py
does, and each verdict is read back through Core.slot_states().
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fastalloc_shm import FixedPool, SerializationError, StaleHandle, ThreadLocalPool
from fastalloc_shm import _layout as L

ROOT = Path(__file__).resolve().parent.parent
ORPHAN_ENTRY = L.ORPHAN_OWNER >> L.INCARNATION_BITS


def dead_owner(name: str, body: str = "") -> tuple[int, subprocess.CompletedProcess]:
    """A child attaches, runs `body` (p is its pool), leaves without closing: (its entry, the run)."""
    code = (f"import os, fastalloc_shm\np = fastalloc_shm.attach({name!r})\n{body}\n"
            "print(p._core.entry, flush=True)\nos._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    entry = int(out.stdout.split()[-1])
    return entry, out


def owner_word(pool, entry: int) -> int:
    at = L.CLIENT_TABLE_OFFSET + entry * L.CLIENT_BYTES
    incarnation = struct.unpack_from("<I", pool._segment.mm, at + 4)[0]
    return (entry << L.INCARNATION_BITS) | incarnation


def meta_at(index: int) -> int:
    return L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES


def forge(pool, index: int, *, gen: int | None = None, state: int | None = None, owner: int | None = None,
          length: int | None = None, seq: int | None = None) -> None:
    mm, at = pool._segment.mm, meta_at(index)
    g, w, n, s = struct.unpack_from("<4I", mm, at)
    if state is not None or owner is not None:
        w = ((state if state is not None else w >> L.STATE_SHIFT) << L.STATE_SHIFT) | (owner if owner is not None
                                                                                      else w & L.OWNER_MASK)
    struct.pack_into("<4I", mm, at, g if gen is None else gen, w, n if length is None else length, s if seq is None else seq)


def slot(pool, index: int) -> tuple[int, int, int, int, int]:
    """(generation, state, owner entry, length, sequence) as the core reads them."""
    return tuple(pool._core.slot_states()[0]["slots"][index])


def free_list(pool) -> list[int]:
    return pool._core.slot_states()[0]["free_list"]


@pytest.fixture
def pool(pool_name):
    with FixedPool.create(pool_name, capacity=16, slot_size=64) as p:
        yield p


def test_each_verdict_of_judge_slot(pool):
    handles = [pool.allocate(f"v{i}") for i in range(10)]
    entry, _ = dead_owner(pool.name)
    dead = owner_word(pool, entry)
    gen = [h >> 32 for h in handles]
    forge(pool, 0, state=L.WRITING, owner=dead, gen=gen[0] | L.UNREADABLE)  # being-written by the dead: freed
    forge(pool, 1, state=L.CACHED, owner=dead, gen=gen[1] | L.UNREADABLE)  # in a dead magazine: freed
    forge(pool, 2, state=L.SETTING, owner=dead, seq=3)  # set() died writing: torn
    forge(pool, 3, state=L.SETTING, owner=dead, seq=4)  # set() died before writing: allocated, kept
    forge(pool, 4, owner=dead)  # allocated by the dead: kept as an orphan
    forge(pool, 5, gen=0)  # generation 0: corrupt
    forge(pool, 6, state=7)  # no such state: corrupt
    forge(pool, 7, gen=gen[7] | L.UNREADABLE)  # allocated yet unreadable: corrupt
    forge(pool, 8, length=65)  # longer than the slot: corrupt
    forge(pool, 9, state=L.TORN)  # torn without UNREADABLE: set() repaired it, then died before saying so
    report = pool.recover()
    assert (report.half_written_freed, report.cached_returned, report.torn_values, report.orphans_kept,
            report.corrupt_slots, report.orphans_reclaimed) == (1, 1, 1, 3, 4, 0)  # the torn one is kept too
    assert report.free_list_rebuilt
    for i in (0, 1):
        g, state, *_ = slot(pool, i)
        assert state == L.FREE and g == ((gen[i] + 1) | L.UNREADABLE), "a freed slot moves its generation on"
    for i in (5, 6, 7, 8):
        assert slot(pool, i)[1] == L.FREE
    assert slot(pool, 5)[0] == 1 | L.UNREADABLE, "a corrupt generation 0 restarts at 1"
    g, state, owner, _, seq = slot(pool, 2)
    assert (g, state, owner, seq) == (gen[2] | L.UNREADABLE, L.TORN, ORPHAN_ENTRY, 4), "torn, its sequence even again"
    with pytest.raises(SerializationError, match="torn"):
        pool.get(handles[2])
    assert slot(pool, 3)[1:3] == (L.ALLOCATED, ORPHAN_ENTRY) and pool.get(handles[3]) == "v3"
    assert slot(pool, 4)[1:3] == (L.ALLOCATED, ORPHAN_ENTRY) and pool.get(handles[4]) == "v4"
    assert slot(pool, 9)[1] == L.ALLOCATED and pool.get(handles[9]) == "v9"
    for i in (0, 1, 5, 6, 7, 8):
        with pytest.raises(StaleHandle):
            pool.get(handles[i])
    assert sorted(free_list(pool)) == [0, 1, 5, 6, 7, 8]
    assert len(pool) == 4 and pool._core.semaphore_value == 16 - 4
    assert pool.recover().free_list_rebuilt is False, "a second recovery finds nothing more to do"


def test_a_torn_value_being_repaired_by_a_dead_setter_stays_torn(pool):
    """set() of a torn value keeps UNREADABLE through its claim: its death leaves it torn, even sequence or odd."""
    h = pool.allocate("torn soon")
    entry, _ = dead_owner(pool.name)
    forge(pool, 0, gen=(h >> 32) | L.UNREADABLE, state=L.SETTING, owner=owner_word(pool, entry), seq=2)
    report = pool.recover()
    assert report.torn_values == 0 and report.orphans_kept == 1
    assert slot(pool, 0)[1] == L.TORN
    with pytest.raises(SerializationError):
        pool.get(h)
    pool.set(h, "repaired")  # a torn value is set() again by its holder
    assert pool.get(h) == "repaired"


def test_orphans_are_reclaimed_on_request_and_a_live_owner_is_kept(pool):
    mine = pool.allocate("mine")
    entry, _ = dead_owner(pool.name, "h = [p.allocate(i) for i in range(3)]")
    report = pool.recover(orphan_policy="reclaim")
    assert report.orphans_reclaimed == 3 and report.orphans_kept == 0 and report.dead_clients
    assert len(pool) == 1 and pool.get(mine) == "mine"
    assert slot(pool, 0)[1:3] == (L.ALLOCATED, pool._core.entry)
    assert pool._core.clients() == [(pool._core.entry, os.getpid(), pool._core.clients()[0][2], True)], \
        "a dead entry whose slots were judged leaves the client table"


def test_kept_orphans_name_no_dead_incarnation(pool):
    """After a repair no slot names the dead entry: a new holder of that entry cannot inherit them."""
    entry, _ = dead_owner(pool.name, "h = [p.allocate(i) for i in range(2)]")
    pool.recover()
    assert [slot(pool, i)[2] for i in range(2)] == [ORPHAN_ENTRY] * 2
    again, _ = dead_owner(pool.name)  # the same entry, claimed again, and dead again
    assert again == entry
    report = pool.recover(orphan_policy="reclaim")
    assert report.orphans_reclaimed == 2, "ORPHAN_OWNER is never alive: reclaim frees what keep kept"


def test_the_slot_at_the_fresh_mark_is_cleared(pool):
    """A process that died between marking a fresh slot and moving the mark left it marked."""
    pool.allocate("zero")
    entry, _ = dead_owner(pool.name)
    forge(pool, 1, gen=1 | L.UNREADABLE, state=L.WRITING, owner=owner_word(pool, entry))
    pool.recover()
    assert pool._core.slot_states()[0]["fresh"] == 1
    mm = pool._segment.mm
    assert struct.unpack_from("<2I", mm, meta_at(1)) == (0, 0)
    assert pool._core.semaphore_value == 15


def test_a_fresh_mark_past_capacity_is_clamped(pool):
    pool.allocate("zero")
    fresh_at = L.HEADER_SIZE + 4 * L.EXT_FRESH
    struct.pack_into("<I", pool._segment.mm, fresh_at, 1000)
    pool.recover()
    assert struct.unpack_from("<I", pool._segment.mm, fresh_at)[0] == 16
    assert len(pool) == 1 and pool._core.semaphore_value == 15


def test_dead_entries_counters_fold_into_the_header(pool_name):
    """A ThreadLocalPool counts its lock-free allocations in its entry: a dead entry's are kept, in the header."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=4) as pool:
        entry, _ = dead_owner(pool_name, "h = [p.allocate(i) for i in range(5)]\np.release(h[0])")
        before = pool.statistics()
        at = L.CLIENT_TABLE_OFFSET + entry * L.CLIENT_BYTES + 8 * L.CLIENT_ALLOCATIONS
        assert struct.unpack_from("<2Q", pool._segment.mm, at) == (5, 1)
        report = pool.recover()
        assert report.cached_returned == 3 + 1 and report.orphans_kept == 4
        assert struct.unpack_from("<2Q", pool._segment.mm, at) == (0, 0)
        after = pool.statistics()
        assert (after.total_allocations, after.total_deallocations) == (before.total_allocations, before.total_deallocations)
        assert len(pool) == 4 and pool._core.semaphore_value == 12


def test_recovery_point_mid_rebuild_kill_leaves_a_repair_owed(tmp_path, pool_name):
    """recover.rebuilding: a repairer killed half-way through the slots; the next locker repairs all."""
    with FixedPool.create(pool_name, capacity=16) as pool:
        handles = [pool.allocate(i) for i in range(8)]
        marker = tmp_path / "marker"
        env = dict(os.environ, FASTALLOC_FAULT="recover.rebuilding:kill", FASTALLOC_FAULT_FILE=str(marker))
        code = f"import fastalloc_shm\nfastalloc_shm.attach({pool_name!r}).recover()"
        child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60)
        assert child.returncode == -9 and "recover.rebuilding 1" in marker.read_text()
        report = pool.recover()
        assert report.lock_taken_over
        assert struct.unpack_from("<Q", pool._segment.mm, 8 * L.HDR_REPAIR_PENDING)[0] == 0
        assert [pool.get(h) for h in handles] == list(range(8)) and len(pool) == 8


def test_a_slot_being_written_by_a_live_owner_is_left_alone(pool):
    h = pool.allocate("mine")
    g = h >> 32
    forge(pool, 0, gen=g | L.UNREADABLE, state=L.WRITING)  # as if this process were writing it now
    report = pool.recover(orphan_policy="reclaim")
    assert report.half_written_freed == 0 and not report.free_list_rebuilt
    assert slot(pool, 0)[1:3] == (L.WRITING, pool._core.entry) and len(pool) == 1
    forge(pool, 0, gen=g, state=L.ALLOCATED)
    assert pool.get(h) == "mine"

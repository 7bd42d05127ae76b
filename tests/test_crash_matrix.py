"""kill -9 at every fault point of every operation, for every kind, the general paths included.

Each case: the test process (the survivor) holds self-checking values; a child
(tests/matrix_child.py) attaches and runs one operation with
FASTALLOC_FAULT=<point>:kill[:n] and FASTALLOC_FAULT_FILE set, so it SIGKILLs
itself there. Then, in order:

1. The marker file must read "<child pid> begin <op>" (written by the child as
   the operation starts) followed by the core's "<child pid> <point> <n>": the
   point named was reached, inside that operation, by that child. A case whose
   point was not reached fails.
2. The slot states the child left (read lock-free) must be what that point
   implies: e.g. after alloc.marked the free list's head is being-written by
   the child; after release.freed the victim is free with its generation bumped
   but not yet on the free list; after set.writing the victim is mid-set with
   an odd sequence; after grow.created an extent segment exists that the header
   does not record.
3. The survivor must take the lock at once (a short lock_timeout); when the
   child died holding the lock, that next locker must be the one repairing it
   (EOWNERDEAD: statistics().recoveries grows by exactly one), and otherwise no
   repair may happen.
4. `recover(orphan_policy="reclaim")` must report exactly what the child left
   (its slots half-written, cached or allocated; none when the repair already
   freed them), and leave every slot either held by the survivor (reading back
   what it wrote) or free, each free one allocatable exactly once
   (tests/invariants.assert_sound); the handles the child was working on must be
   untouched, cleanly stale or torn exactly as the point says.

The GrowingPool cases work in extent 1 (extent 0 is filled first), the
ThreadLocalPool cases in magazine refills, drains and lock-free releases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastalloc_shm import (
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    SerializationError,
    StaleHandle,
    ThreadLocalPool,
    ThreadSafePool,
    _core,
)
from fastalloc_shm import _layout as L

from .invariants import assert_sound, check_invariants
from .matrix_child import value as child_value
from .test_channels import CHANNEL_CRASH_POINTS
from .workers import self_checking

ROOT = Path(__file__).resolve().parent.parent
# Short on purpose: the next locker repairs a dead holder's lock at once, so with one live
# process at a time no wait may come near it. A takeover that first waits to guess whether
# the holder is dead (the first build: >= 110 ms) cannot keep within twice this; scheduling
# on a loaded machine can.
LOCK_TIMEOUT = 0.05

# Each operation's fault points in the order the child meets them, as (point, n): the n-th
# arrival at the point (counted from the child's start; attach reaches none).
ALLOCATE = (("alloc.token", 1), ("lock.acquired", 1), ("alloc.marked", 1), ("alloc.popped", 1),
            ("lock.released", 1), ("alloc.writing", 1))
RELEASE = (("lock.acquired", 1), ("release.freed", 1), ("release.pushed", 1), ("lock.released", 1))
SET = (("lock.acquired", 1), ("set.claimed", 1), ("set.writing", 1), ("lock.released", 1))
TAKE_MANY = (("lock.acquired", 1), ("batch.taking", 1), ("lock.released", 1), ("alloc.writing", 1))
RELEASE_MANY = (("lock.acquired", 1), ("batch.releasing", 1), ("lock.released", 1))
RECOVER = (("lock.acquired", 1), ("recover.rebuilding", 1), ("lock.released", 1))
RESET = (("lock.acquired", 1), ("lock.released", 1))
# A full pool's allocate: take the lock (1), find nothing, release it (1), create the extent
# (grow.created), take the lock to commit it (2), commit, release it (2).
GROW = (("grow.created", 1), ("lock.acquired", 2), ("lock.released", 2))

SHARED_LIST_OPS = [("allocate", ALLOCATE), ("release", RELEASE), ("set", SET), ("allocate_many", TAKE_MANY),
                   ("release_many", RELEASE_MANY), ("recover", RECOVER), ("reset_statistics", RESET)]
# A ThreadLocalPool's allocate: a refill under the lock, then the pop claims the top slot (CAS) and writes it.
MAGAZINE_ALLOCATE = (("lock.acquired", 1), ("batch.taking", 1), ("lock.released", 1), ("magazine.claimed", 1),
                     ("alloc.writing", 1))
THREADLOCAL_OPS = [
    ("allocate", MAGAZINE_ALLOCATE),
    ("steal", (("steal.claimed", 1),)),  # free lists empty: the refill takes a slot from the survivor's magazine
    ("release", (("magazine.release", 1),)),  # lock-free, into the child's magazine
    ("cycle", (("batch.releasing", 1),)),  # the magazine overflows and drains (under the lock)
    ("set", SET),
    ("allocate_many", TAKE_MANY),
    ("release_many", RELEASE_MANY),  # under the lock, straight to the free lists
    ("recover", RECOVER),
    ("reset_statistics", RESET),
]
CASES = [(kind, op, point, n) for kind in ("fixed", "threadsafe", "growing") for op, points in SHARED_LIST_OPS
         for point, n in points]
CASES += [(kind, "grow", point, n) for kind in ("growing", "threadlocal-growing") for point, n in GROW]
CASES += [("threadlocal", op, point, n) for op, points in THREADLOCAL_OPS for point, n in points]

# Points at which the child holds the pool lock: its death there must be repaired by the next locker.
IN_LOCK = {"lock.acquired", "alloc.marked", "alloc.popped", "release.freed", "release.pushed", "set.claimed",
           "set.writing", "batch.taking", "batch.releasing", "recover.rebuilding", "steal.claimed"}
# Points after a release took effect: the handles released are stale.
RELEASED_AT = {"release.freed", "release.pushed", "lock.released", "magazine.release", "batch.releasing"}


def case_id(case) -> str:
    kind, op, point, n = case
    return f"{kind}-{op}-{point}" + (f":{n}" if n != 1 else "")


def make_pool(kind: str, name: str):
    if kind == "growing":
        return GrowingPool.create(name, capacity=4, max_capacity=16, growth_strategy=GrowthStrategy.linear(4),
                                  lock_timeout=LOCK_TIMEOUT)
    if kind == "threadlocal":
        return ThreadLocalPool.create(name, capacity=16, batch_size=2, lock_timeout=LOCK_TIMEOUT)
    if kind == "threadlocal-growing":
        return ThreadLocalPool.create(name, capacity=4, max_capacity=16, growth_strategy=GrowthStrategy.linear(4),
                                      batch_size=2, lock_timeout=LOCK_TIMEOUT)
    cls = ThreadSafePool if kind == "threadsafe" else FixedPool
    return cls.create(name, capacity=16, lock_timeout=LOCK_TIMEOUT)


def allocate(pool, held: dict, n: int) -> int:
    value = self_checking(0, n)
    handle = pool.allocate(value)
    held[handle] = value
    return handle


@dataclass
class Snapshot:
    slots: dict[int, tuple]  # global index -> (generation, state, owner entry, length, sequence)
    listed: set[int]  # global indices on the free lists
    extents: int
    capacity: int
    tokens: int
    lock_acquisitions: int
    growths: int


def snapshot(pool) -> Snapshot:
    slots, listed = {}, set()
    for e in pool._core.slot_states():
        slots.update({e["first"] + local: row for local, row in enumerate(e["slots"])})
        listed |= {e["first"] + local for local in e["free_list"]}
    stats = pool.statistics()
    return Snapshot(slots, listed, pool._q[L.HDR_EXTENTS], pool._q[L.HDR_CAPACITY], pool._core.semaphore_value,
                    stats.lock_acquisitions, stats.growth_count)


def run_child_to_its_death(name: str, op: str, point: str, n: int, victims: list[int], marker: Path) -> int:
    env = dict(os.environ, FASTALLOC_FAULT=f"{point}:kill:{n}", FASTALLOC_FAULT_FILE=str(marker))
    child = subprocess.Popen([sys.executable, "-m", "tests.matrix_child", name, op, *map(str, victims)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, (
        f"the child never reached {point}:{n} in {op} (exit status {child.returncode}): {stderr[-2000:]}")
    lines = marker.read_text().splitlines() if marker.exists() else []
    assert lines == [f"{child.pid} begin {op}", f"{child.pid} {point} {n}"], (
        f"the marker does not say that child {child.pid} died at {point}:{n} inside {op}: {lines}")
    return child.pid


def owned(snap: Snapshot, state: int, entry: int) -> set[int]:
    return {i for i, (_g, st, owner, _len, _seq) in snap.slots.items() if st == state and owner == entry}


def next_generation(generation: int) -> int:
    g = ((generation & L.GENERATION_MASK) + 1) & L.GENERATION_MASK
    return g or 1


def check_what_the_point_left(pool, kind, op, point, n, s0: Snapshot, s1: Snapshot, child: int, victims) -> None:
    """The raw state the child left at its death is the one `point` implies."""
    changed = {i for i in s1.slots if s0.slots.get(i) != s1.slots[i]}
    moved = {i for i in changed if i not in s0.slots or s0.slots[i][:3] != s1.slots[i][:3]}  # (gen, state, owner)
    writing, cached = owned(s1, L.WRITING, child), owned(s1, L.CACHED, child)
    where = f"after the child's {op} died at {point}:{n}"
    if point == "lock.acquired" or (point == "lock.released" and op in ("recover", "reset_statistics")) \
            or point in ("alloc.token", "grow.created", "recover.rebuilding"):
        assert not moved, f"{where}: slots {sorted(moved)} changed: {[(s0.slots.get(i), s1.slots[i]) for i in moved]}"
    if point == "lock.acquired":
        assert s1.lock_acquisitions - s0.lock_acquisitions == n, f"{where}: not the child's lock acquisition {n}"
    if point == "alloc.token":
        assert s1.tokens == s0.tokens - 1, f"{where}: tokens {s0.tokens} -> {s1.tokens}, not one taken"
    if op == "grow":
        extent = Path(f"/dev/shm/fastalloc.{pool.name}.x{s0.extents}")
        if point == "lock.released":
            assert (s1.extents, s1.growths) == (s0.extents + 1, s0.growths + 1), f"{where}: growth not committed"
            assert s1.capacity > s0.capacity
        else:
            assert extent.exists(), f"{where}: no extent segment {extent} was created"
            assert (s1.extents, s1.capacity, s1.growths) == (s0.extents, s0.capacity, s0.growths), (
                f"{where}: the header records a growth that was not committed")
        return
    if op == "steal":
        (i,) = moved
        assert s0.slots[i][1] == L.CACHED and s0.slots[i][2] != child and cached == {i}, (
            f"{where}: slot {i} went {s0.slots[i]} -> {s1.slots[i]}, not from another magazine into the child's")
        assert s0.slots[i][0] == s1.slots[i][0], f"{where}: a steal changed slot {i}'s generation"
        return
    magazine_claimed = kind.startswith("threadlocal") and op == "allocate" and point in ("magazine.claimed",
                                                                                         "alloc.writing")
    if magazine_claimed:
        # The refill cached two slots; the pop claimed the top one for writing.
        assert len(writing) == 1 and len(cached) == 1 and moved == writing | cached, (
            f"{where}: the child's slots being written {sorted(writing)}, cached {sorted(cached)}")
        assert all(s1.slots[i][0] & L.UNREADABLE for i in moved), f"{where}: a slot is readable before its value"
    elif op in ("allocate", "allocate_many") and point != "lock.acquired" and point != "alloc.token":
        threadlocal = kind.startswith("threadlocal")
        state, mine = (L.CACHED, cached) if threadlocal and op == "allocate" else (L.WRITING, writing)
        taken = {"alloc.marked": 1, "alloc.popped": 1, "batch.taking": 1}.get(
            point, 2 if threadlocal and op == "allocate" else 3 if op == "allocate_many" else 1)
        assert len(mine) == taken and mine == moved, (
            f"{where}: the child's slots in state {state} are {sorted(mine)} (changed: {sorted(moved)}), not {taken}")
        for i in mine:
            assert s1.slots[i][0] & L.UNREADABLE, f"{where}: slot {i} is readable before its value is written"
        if point == "alloc.marked":
            assert mine <= s0.listed and mine <= s1.listed, f"{where}: the marked slot was not the free list's head"
        else:
            assert not (mine & s1.listed), f"{where}: a slot the child took is still on the free list"
    victim_indices = {h & 0xFFFFFFFF for h in victims}
    if op in ("release", "release_many") and point in RELEASED_AT:
        for i in victim_indices:
            g0, g1 = s0.slots[i][0], s1.slots[i][0]
            assert next_generation(g0) == g1 & L.GENERATION_MASK and g1 & L.UNREADABLE, (
                f"{where}: slot {i} generation {g0:#x} -> {g1:#x}, not bumped")
        freed = {i for i in victim_indices if s1.slots[i][1] == L.FREE}
        if point == "magazine.release":
            assert cached == victim_indices and not (victim_indices & s1.listed), f"{where}: not in the magazine"
        else:
            assert freed == victim_indices, f"{where}: victims {sorted(victim_indices)} free: {sorted(freed)}"
            on_list = victim_indices & s1.listed
            expected = {"release.freed": 0, "batch.releasing": 1}.get(point, len(victim_indices))
            assert len(on_list) == expected, f"{where}: {len(on_list)} victims on the free list, not {expected}"
        assert moved == victim_indices, f"{where}: slots {sorted(moved - victim_indices)} changed too"
    elif op in ("release", "release_many", "set") and point == "lock.acquired":
        assert not moved
    if op == "set":
        (i,) = victim_indices
        g0, st0, _o, len0, seq0 = s0.slots[i]
        g1, st1, _o, len1, seq1 = s1.slots[i]
        expected_state, expected_seq = {"lock.acquired": (st0, seq0), "set.claimed": (L.SETTING, seq0),
                                        "set.writing": (L.SETTING, seq0 | 1),
                                        "lock.released": (L.ALLOCATED, (seq0 | 1) + 1)}[point]
        assert (g1, st1, seq1) == (g0, expected_state, expected_seq), (
            f"{where}: slot {i} is (gen {g1:#x}, state {st1}, seq {seq1}), not (gen {g0:#x}, {expected_state}, "
            f"{expected_seq})")
        assert moved <= {i}
    if op == "cycle":
        # batch.releasing:1 in a drain: the first slot given back is free and listed, the rest still cached.
        drained = {i for i in moved if s1.slots[i][1] == L.FREE and i in s1.listed}
        assert len(drained) == 1 and cached, f"{where}: drained {sorted(drained)}, cached {sorted(cached)}"


def settle_victim(pool, op: str, point: str, handle: int, before) -> object:
    """What became of a handle the child was releasing or setting; None if it is stale now."""
    if op == "set" and point == "set.writing":
        with pytest.raises(SerializationError):
            pool.get(handle)  # the child died mid-copy: torn, never half a value
        pool.set(handle, "rewritten")
        return "rewritten"
    if op in ("release", "release_many") and point in RELEASED_AT:
        with pytest.raises(StaleHandle):
            pool.get(handle)
        return None
    got = pool.get(handle)
    expected = child_value(1) if (op, point) == ("set", "lock.released") else before
    assert got == expected, f"handle {handle:#x} reads {got!r}, not {expected!r}, after the child's {op} at {point}"
    return got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, op, point, n", CASES, ids=[case_id(case) for case in CASES])
def test_kill_at_fault_point_then_survive_recover_and_lose_nothing(pool_name, tmp_path, kind, op, point, n):
    with make_pool(kind, pool_name) as pool:
        held: dict[int, object] = {}
        # A GrowingPool: extent 0 full. "steal": every slot taken, one back in the survivor's magazine.
        for k in range(pool.capacity - (op == "steal") if op in ("grow", "steal") or kind == "growing" else 3):
            allocate(pool, held, k)
        if op != "grow":
            if kind == "growing":
                allocate(pool, held, 100)  # grows: what follows happens in extent 1
            spare = allocate(pool, held, 101)
            pool.release(spare)  # a non-empty free list for the child to pop from and recover to rebuild
            del held[spare]
        victims = [allocate(pool, held, 200 + i) for i in range({"release_many": 2, "release": 1, "set": 1}.get(op, 0))]
        before = {h: held.pop(h) for h in victims}

        s0 = snapshot(pool)
        child_pid = run_child_to_its_death(pool_name, op, point, n, victims, tmp_path / "marker")
        (child,) = [c.entry for c in pool.clients() if c.pid == child_pid and not c.alive]
        s1 = snapshot(pool)
        check_what_the_point_left(pool, kind, op, point, n, s0, s1, child, victims)

        repairs_before = pool.statistics().recoveries
        survivor = next(iter(held))
        started = time.monotonic()
        held[survivor] = self_checking(0, 300)
        pool.set(survivor, held[survivor])  # the next locker
        waited = time.monotonic() - started
        repairs = pool.statistics().recoveries - repairs_before
        assert repairs == (point in IN_LOCK), (
            f"the child died at {point} {'holding' if point in IN_LOCK else 'not holding'} the lock, "
            f"yet the next locker repaired it {repairs} times")
        if point in IN_LOCK:
            # What the repair must have done: free lists rebuilt from slot states, the child's
            # half-taken slots freed, the free-slot count and the usage re-derived.
            counts = check_invariants(pool)
            left = owned(snapshot(pool), L.WRITING, child) | owned(snapshot(pool), L.CACHED, child)
            assert not left, f"the repair left slots {sorted(left)} being written or cached by the dead child"
            assert pool._core.semaphore_value == counts["free"], (
                f"{pool._core.semaphore_value} free-slot tokens after the repair, {counts['free']} slots free")
            assert len(pool) == counts["allocated"] + counts["torn"], (len(pool), counts)
        started = time.monotonic()
        allocate(pool, held, 301)
        waited = max(waited, time.monotonic() - started)
        assert waited < 2 * LOCK_TIMEOUT, f"the survivor waited {waited:.3f} s for the lock of a dead holder"

        report = pool.recover(orphan_policy="reclaim")
        repaired = point in IN_LOCK
        expected = {
            "lock_taken_over": False,  # the survivor's set() took it over already
            "dead_clients": (child_pid,),
            "half_written_freed": 0 if repaired else len(owned(s1, L.WRITING, child)),
            "cached_returned": 0 if repaired else len(owned(s1, L.CACHED, child)),
            "orphans_reclaimed": len(owned(s1, L.ALLOCATED, child)),
            "torn_values": 0,
            "corrupt_slots": 0,
        }
        got = {k: getattr(report, k) for k in expected}
        assert got == expected, f"recover() after the child's {op} died at {point}: {got}, not {expected}"
        s2 = snapshot(pool)
        left = {i for i, row in s2.slots.items() if row[2] == child and row[1] != L.FREE}
        assert not left, f"slots {sorted(left)} still belong to the dead child after recovery"
        for handle in victims:
            if (got := settle_victim(pool, op, point, handle, before[handle])) is not None:
                held[handle] = got
        assert_sound(pool, held)


def test_every_fault_point_of_the_core_has_a_case():
    """The core's table of fault points and the matrix agree: a point with no case fails here."""
    covered = {point for _kind, _op, point, _n in CASES} | CHANNEL_CRASH_POINTS
    missing = set(_core.FAULT_POINTS) - covered
    unknown = covered - set(_core.FAULT_POINTS)
    assert not missing, f"fault points with no crash-matrix case: {sorted(missing)}"
    assert not unknown, f"crash-matrix cases name points the core does not have: {sorted(unknown)}"


def test_the_repair_is_reached_for_every_operation_that_takes_the_lock():
    """Each operation that takes the pool lock has a case that dies holding it (so its next locker repairs)."""
    repaired = {(kind.split("-")[0], op) for kind, op, point, _n in CASES if point in IN_LOCK}
    for kind in ("fixed", "threadsafe", "growing", "threadlocal"):
        for op in ("allocate", "release_many", "set", "allocate_many", "recover", "reset_statistics"):
            assert (kind, op) in repaired, (kind, op)
    for kind, op in (("fixed", "release"), ("growing", "grow"), ("threadlocal", "grow"), ("threadlocal", "cycle")):
        assert (kind, op) in repaired, (kind, op)

"""The crash matrix extended to the repair itself: a process killed inside the lock repair that
follows another process's death.

1. A first child attaches and dies inside an allocate holding the pool lock
   (FASTALLOC_FAULT=lock.acquired:kill, or later in the same critical section, with a slot
   half-taken: alloc.popped, or batch.taking for a ThreadLocalPool's magazine refill).
2. A second child attaches and runs an ordinary allocate. Its lock acquisition gets EOWNERDEAD
   and repairs: the repair marks itself pending, then rebuilds the free lists from the slot
   states, and the child is killed half-way through that rebuild
   (FASTALLOC_FAULT=recover.rebuilding:kill; inside an allocate the rebuild runs only as the lock
   repair). The marker file proves where each child died.
3. The header still says a repair is owed and no repair was counted; the survivor (this process)
   takes the lock at once, repairs from scratch (one repair counted), and loses nothing: the free
   lists, the free-slot count and the usage agree with the slot states, no slot is left to either
   dead child, recover() has nothing left to do, and every value the survivor holds reads back,
   every free slot is allocatable exactly once (tests/invariants.assert_sound).

The helpers are tests/test_crash_matrix.py's (its children, pools and snapshots).
"""

from __future__ import annotations

import time

import pytest

from fastalloc_shm import _layout as L

from .invariants import assert_sound, check_invariants
from .test_crash_matrix import LOCK_TIMEOUT, allocate, make_pool, owned, run_child_to_its_death, snapshot
from .workers import self_checking

FIRST_DEATHS = {
    "fixed": ("lock.acquired", "alloc.popped"),
    "growing": ("lock.acquired", "alloc.popped"),
    "threadlocal": ("lock.acquired", "batch.taking"),
}
CASES = [(kind, point) for kind, points in FIRST_DEATHS.items() for point in points]


def dead_entries(pool, pid: int) -> set[int]:
    return {c.entry for c in pool.clients() if c.pid == pid and not c.alive}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, first_point", CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_a_process_killed_inside_the_lock_repair_leaves_it_for_the_next_locker(pool_name, tmp_path, kind, first_point):
    with make_pool(kind, pool_name) as pool:
        held: dict[int, object] = {}
        for k in range(pool.capacity if kind == "growing" else 5):  # a GrowingPool: extent 0 full, then grown
            allocate(pool, held, k)
        if kind == "growing":
            allocate(pool, held, 100)
        for k in range(2):  # a free list for the children to pop from and the repair to rebuild
            spare = allocate(pool, held, 101 + k)
            pool.release(spare)
            del held[spare]
        recoveries = pool._q[L.HDR_RECOVERIES]

        first = run_child_to_its_death(pool_name, "allocate", first_point, 1, [], tmp_path / "first")
        assert pool._q[L.HDR_LOCK_HOLDER] & 0xFFFFFFFF == first, "the first child did not die holding the lock"
        left_by_first = snapshot(pool)
        repairer = run_child_to_its_death(pool_name, "allocate", "recover.rebuilding", 1, [], tmp_path / "repairer")

        # The repair that died is still owed, and none was counted.
        assert pool._q[L.HDR_REPAIR_PENDING] == 1, "the dead repairer's repair is not pending any more"
        assert pool._q[L.HDR_RECOVERIES] == recoveries, "a repair was counted that never finished"
        assert pool._q[L.HDR_LOCK_HOLDER] & 0xFFFFFFFF == repairer, "the repairer did not die holding the lock"

        # The survivor: the next locker repairs at once, from scratch.
        survivor = next(iter(held))
        started = time.monotonic()
        held[survivor] = self_checking(0, 300)
        pool.set(survivor, held[survivor])
        waited = time.monotonic() - started
        assert pool._q[L.HDR_RECOVERIES] == recoveries + 1, "the survivor's lock acquisition did not repair once"
        assert pool._q[L.HDR_REPAIR_PENDING] == 0
        assert waited < 2 * LOCK_TIMEOUT, f"the survivor waited {waited:.3f} s for a lock whose holder is dead"

        counts = check_invariants(pool)
        s = snapshot(pool)
        dead = dead_entries(pool, first) | dead_entries(pool, repairer)
        for entry in dead:
            left = owned(s, L.WRITING, entry) | owned(s, L.CACHED, entry) | owned(s, L.ALLOCATED, entry)
            assert not left, f"slots {sorted(left)} still belong to dead entry {entry} after the repair"
        assert pool._core.semaphore_value == counts["free"], (pool._core.semaphore_value, counts)
        assert len(pool) == counts["allocated"] + counts["torn"] == len(held), (len(pool), counts, len(held))
        if first_point != "lock.acquired":  # the first child had a slot half-taken: the repair freed it
            half = {i for e in dead for i in owned(left_by_first, L.WRITING, e) | owned(left_by_first, L.CACHED, e)}
            assert half, f"the first child died at {first_point} holding no slot: the case tests nothing"

        report = pool.recover(orphan_policy="reclaim")
        assert repairer in report.dead_clients, report  # (the repairer took the first child's entry over)
        nothing_left = {"lock_taken_over": False, "half_written_freed": 0, "cached_returned": 0, "orphans_reclaimed": 0,
                        "torn_values": 0, "corrupt_slots": 0}
        assert {k: getattr(report, k) for k in nothing_left} == nothing_left, report
        allocate(pool, held, 400)
        assert_sound(pool, held)

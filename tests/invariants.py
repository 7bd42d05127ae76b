"""Invariant checks over a pool's shared state, for the stress and crash tests."""

from __future__ import annotations

from fastalloc_shm import _layout as L


def check_invariants(pool) -> dict:
    """Assert free + allocated + cached (+ being written) = capacity, no index twice on
    a free list, every listed index free; return the counts by state."""
    counts = {"free": 0, "allocated": 0, "cached": 0, "writing": 0, "torn": 0}
    names = {L.FREE: "free", L.ALLOCATED: "allocated", L.CACHED: "cached", L.WRITING: "writing", L.TORN: "torn"}
    for number, e in enumerate(pool._core.slot_states()):
        fresh, slots, listed = e["fresh"], e["slots"], e["free_list"]
        assert fresh <= e["capacity"], (fresh, e["capacity"])
        assert len(listed) == len(set(listed)), f"extent {number}: an index is twice on the free list"
        for local, (generation, state, _owner, _length, _seq) in enumerate(slots):
            assert state in names, f"slot {local}: state {state}"
            assert generation & L.GENERATION_MASK != 0, f"slot {local}: generation 0"
            counts[names[state]] += 1
        for local in listed:
            assert slots[local][1] == L.FREE, f"slot {local} is on the free list but {names[slots[local][1]]}"
        unlisted = [local for local, row in enumerate(slots) if row[1] == L.FREE and local not in set(listed)]
        assert not unlisted, f"extent {number}: free slots missing from the free list: {unlisted[:5]}"
        counts["free"] += e["capacity"] - fresh
    assert sum(counts.values()) == pool.capacity
    return counts

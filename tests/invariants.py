"""Invariant checks over a pool's shared state, for the stress and crash tests."""

from __future__ import annotations

from fastalloc_shm import _layout as L


def check_invariants(pool) -> dict:
    """Assert free + allocated + cached (+ being written) = capacity, no index twice on
    a free list, every listed index free; return the counts by state."""
    pool._map_new_extents()
    counts = {"free": 0, "allocated": 0, "cached": 0, "writing": 0, "torn": 0}
    names = {L.FREE: "free", L.ALLOCATED: "allocated", L.CACHED: "cached", L.WRITING: "writing", L.TORN: "torn"}
    for e in pool._extents:
        u = e.u
        fresh, top = u[e.fresh_w], u[e.top_w]
        assert fresh <= e.cap and top <= fresh, (fresh, top, e.cap)
        listed = [u[e.fl_w + i] for i in range(top)]
        assert len(listed) == len(set(listed)), f"extent {e.number}: an index is twice on the free list"
        states = {}
        for local in range(fresh):
            state = u[e.meta_w + 4 * local + 1] >> L.STATE_SHIFT
            assert state in names, f"slot {local}: state {state}"
            assert u[e.meta_w + 4 * local] & 0x7FFFFFFF != 0, f"slot {local}: generation 0"
            states[local] = state
            counts[names[state]] += 1
        for local in listed:
            assert states[local] == L.FREE, f"slot {local} is on the free list but {names[states[local]]}"
        free_unlisted = [local for local, s in states.items() if s == L.FREE and local not in set(listed)]
        assert not free_unlisted, f"extent {e.number}: free slots missing from the free list: {free_unlisted[:5]}"
        counts["free"] += e.cap - fresh
    assert sum(counts.values()) == pool.capacity
    return counts

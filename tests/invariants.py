"""Invariant checks over a pool's shared state, for the stress and crash tests."""

from __future__ import annotations

from typing import Any

from fastalloc_shm import StaleHandle
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


def _reads_back(pool, handle: int, value: Any) -> bool:
    try:
        return pool.get(handle) == value
    except StaleHandle:
        return False


def audit(pool, held: dict[int, Any]) -> dict:
    """Measure, through the public API only, what a pool's slots hold.

    Every value in `held` (handle -> value) must read back; then every other slot
    is allocated (a growing pool grows to its max_capacity) with a value naming
    its turn, read back and released again. Returns figures: values that read
    back wrong, slots handed out twice (a duplicate, or a slot `held` still owns),
    slots lost (neither held nor allocatable), and how far len(pool) was off.
    """
    limit = pool.config.max_capacity or pool.capacity
    wrong = sum(not _reads_back(pool, h, v) for h, v in held.items())
    len_off = abs(len(pool) - len(held))
    filled: list[int] = []
    # A pool that hands out more than it has would loop for ever; a few past the limit prove it.
    while len(filled) < limit + 4 and (handle := pool.try_allocate({"audit": len(filled)})) is not None:
        filled.append(handle)
    wrong += sum(not _reads_back(pool, h, {"audit": n}) for n, h in enumerate(filled))
    wrong += sum(not _reads_back(pool, h, v) for h, v in held.items())
    len_off += abs(len(pool) - len(held) - len(filled))
    indices = {h & 0xFFFFFFFF for h in filled}
    held_indices = {h & 0xFFFFFFFF for h in held}
    figures = {
        "values_wrong": wrong,
        "handed_out_twice": len(filled) - len(indices) + len(indices & held_indices),
        "slots_lost": max(0, pool.capacity - len(held_indices | indices)),
        "len_off": len_off,
        "capacity": pool.capacity,
        "free": len(indices),
    }
    for handle in dict.fromkeys(filled):
        try:
            pool.release(handle)
        except StaleHandle:
            pass  # a slot handed out twice: counted above
    figures["len_off"] += abs(len(pool) - len(held))
    return figures


def assert_sound(pool, held: dict[int, Any]) -> dict:
    """audit() the pool and insist that nothing read back wrong, was handed out twice or was lost."""
    figures = audit(pool, held)
    bad = {k: figures[k] for k in ("values_wrong", "handed_out_twice", "slots_lost", "len_off") if figures[k]}
    assert not bad, f"pool {pool.name!r}: {figures}"
    return figures

"""Rebuild a pool from its slot states after a process died in it.

Nothing a dead process wrote half-way is trusted: each extent's free list is
rebuilt from the per-slot states (see the operation order in _layout.py).
Runs with the pool lock held, by exactly one process.

    being-written by a dead owner   -> freed (the handle never left that process)
    cached by a dead owner          -> freed (its magazine died with it)
    allocated by a dead owner       -> kept (a consumer may hold the handle), or
                                       freed under orphan_policy="reclaim"
    sequence odd on an allocated    -> marked torn: get() raises, set() repairs
    metadata that makes no sense    -> reset to free
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import _fault
from . import _layout as L
from ._extent import Extent
from ._liveness import is_alive

_NOT_FREE = re.compile(rb"[^\x00]")
_FREE = re.compile(rb"\x00")


@dataclass
class Tally:
    """Counts gathered while repairing (becomes a RecoveryReport)."""

    cached_returned: int = 0
    half_written_freed: int = 0
    torn_values: int = 0
    orphans_kept: int = 0
    orphans_reclaimed: int = 0
    corrupt_slots: int = 0
    in_use: int = 0
    dead_owners: set[int] = field(default_factory=set)


class OwnerLiveness:
    """Memoised liveness of slot owners: a pid attached to the pool is checked
    with its recorded start time, any other pid by existence."""

    def __init__(self, live_client_pids: Iterable[int]) -> None:
        self._known = {pid: True for pid in live_client_pids}

    def __call__(self, pid: int) -> bool:
        alive = self._known.get(pid)
        if alive is None:
            alive = self._known[pid] = is_alive(pid)
        return alive


def rebuild_extent(ext: Extent, alive: OwnerLiveness, reclaim: bool, tally: Tally) -> None:
    """Repair one extent's slot states and rebuild its free list."""
    u, meta_w, cap = ext.u, ext.meta_w, ext.cap
    fresh = min(u[ext.fresh_w], cap)
    meta = ext.meta_bytes()
    untouched = meta[fresh * L.META_BYTES:]
    if untouched.tobytes().count(0) != len(untouched):
        # Marked by a process that died before it moved the fresh mark: never handed out.
        untouched[:] = bytes(len(untouched))
    states = meta[L.STATE_BYTE::L.META_BYTES].tobytes()[:fresh]
    for match in _NOT_FREE.finditer(states):
        _repair_slot(u, meta_w + L.META_WORDS * match.start(), alive, reclaim, tally)
    states = meta[L.STATE_BYTE::L.META_BYTES].tobytes()[:fresh]
    free = array("I", (match.start() for match in _FREE.finditer(states)))
    free.reverse()  # pop low indices first, as a fresh pool does
    if _fault.ACTIVE:
        _fault.hit("recover.rebuilding")
    ext.free_list_bytes()[: 4 * len(free)] = free.tobytes()
    u[ext.top_w] = len(free)
    u[ext.fresh_w] = fresh
    meta.release()
    untouched.release()


def _repair_slot(u: memoryview, m: int, alive: OwnerLiveness, reclaim: bool, tally: Tally) -> None:
    word = u[m + L.META_WORD]
    state, owner = word >> L.STATE_SHIFT, word & L.OWNER_MASK
    if u[m + L.META_GEN] & L.GENERATION_MASK == 0 or state not in L.STATE_NAMES:
        tally.corrupt_slots += 1
        _free(u, m)
        return
    owner_alive = alive(owner)
    if not owner_alive:
        tally.dead_owners.add(owner)
    if state == L.WRITING:
        if owner_alive:
            tally.in_use += 1
        else:
            tally.half_written_freed += 1
            _free(u, m)
    elif state == L.CACHED:
        if not owner_alive:
            tally.cached_returned += 1
            _free(u, m)
    elif state == L.ALLOCATED and u[m + L.META_GEN] & L.UNREADABLE:
        # Only a release under the lock writes this pair (generation bumped,
        # state not yet free); the lock's holder died there.
        tally.half_written_freed += 1
        u[m + L.META_WORD] = L.FREE
    else:  # allocated or torn
        if state == L.TORN and not u[m + L.META_GEN] & L.UNREADABLE:
            u[m + L.META_WORD] = L.ALLOCATED_TAG | owner  # set() repaired it, then died
        if u[m + L.META_SEQ] & 1:
            tally.torn_values += 1
            u[m + L.META_SEQ] = (u[m + L.META_SEQ] + 1) & 0xFFFFFFFF
            u[m + L.META_WORD] = L.TORN_TAG | owner
            u[m + L.META_GEN] |= L.UNREADABLE
        if owner_alive:
            tally.in_use += 1
        elif reclaim:
            tally.orphans_reclaimed += 1
            _free(u, m)
        else:
            tally.orphans_kept += 1
            tally.in_use += 1


def _free(u: memoryview, m: int) -> None:
    u[m + L.META_GEN] = L.next_generation(u[m + L.META_GEN] & L.GENERATION_MASK) | L.UNREADABLE
    u[m + L.META_WORD] = L.FREE

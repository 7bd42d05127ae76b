"""ThreadLocalPool: allocations from a private magazine, no lock on the fast path."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from . import _fastpath
from . import _layout as L
from .config import PoolConfig
from .pool import SharedPool, _live_state


class _Magazine:
    """Free slots (pool-wide indices) one thread took from the shared free lists.

    Its counters not yet published: releases into it, and `baseline`, what its
    length would be had nothing been allocated from it since the last publish.
    So allocations = baseline + deallocations - len(slots), and an allocate
    costs no shared counter update at all. `high` is the most slots this
    magazine had out at once (allocations - deallocations) since the last
    publish, which then adds it to the shared usage to raise the peak.
    """

    __slots__ = ("slots", "baseline", "deallocations", "high", "thread")

    def __init__(self) -> None:
        self.slots: list[int] = []
        self.baseline = 0
        self.deallocations = 0
        self.high = 0
        self.thread = weakref.ref(threading.current_thread())

    def unpublished_allocations(self) -> int:
        return self.baseline + self.deallocations - len(self.slots)

    def note_high(self) -> None:
        net = self.unpublished_allocations() - self.deallocations
        if net > self.high:
            self.high = net

    def thread_alive(self) -> bool:
        thread = self.thread()
        return thread is not None and thread.is_alive()


class ThreadLocalPool(SharedPool):
    """A pool where each process (and each thread in it) allocates from a private magazine.

    A magazine is refilled from the shared free list `batch_size` slots at a
    time under one lock acquisition, and drained back when it holds more than
    twice that; in between, allocate() and release() touch no semaphore. Slots
    in a magazine are marked cached-by-this-pid in the shared slot states, so
    a process killed with a full magazine loses nothing: recover() (or the
    daemon) returns them. `close()` returns them too.

    Trade-offs: free slots in other processes' magazines are invisible, so the
    pool can report PoolExhausted with up to batch_size*2 slots per process
    cached elsewhere; statistics published by other processes lag by up to a
    batch. Handles still work from any process.
    """

    kind = "threadlocal"
    may_grow = True

    def _open(self, name: str, segment: Any, sem: Any, cfg: PoolConfig, creating: bool) -> None:
        self._reset_magazines()
        self._batch = cfg.batch_size
        super()._open(name, segment, sem, cfg, creating)

    def _reset_magazines(self) -> None:
        self._local = threading.local()
        self._magazines: list[_Magazine] = []

    def _set_pid(self, pid: int) -> None:
        super()._set_pid(pid)
        self._cached_tag = L.CACHED_TAG | pid

    def _after_fork_in_child(self) -> None:
        # The parent's magazines stay the parent's: its slots are cached by its pid.
        self._reset_magazines()
        super()._after_fork_in_child()

    def _magazine(self) -> _Magazine:
        try:
            return self._local.magazine
        except AttributeError:
            pass
        magazine = self._local.magazine = _Magazine()
        # Adopt the slots of threads that ended since, so they are not stranded.
        for old in self._magazines:
            if not old.thread_alive():
                magazine.slots.extend(old.slots)
                magazine.baseline += old.baseline
                magazine.deallocations += old.deallocations
                magazine.high += old.high
                old.slots.clear()
                old.baseline = old.deallocations = old.high = 0
        self._magazines = [m for m in self._magazines if m.thread_alive()]
        self._magazines.append(magazine)
        return magazine

    def _bind_fast_path(self) -> None:
        _fastpath.bind_threadlocal(self)

    def allocate(self, value: Any) -> int:
        """Store `value` in a slot from this thread's magazine and return its handle."""
        self._check_open()
        data = self._pack_checked(value)
        magazine = self._magazine()
        if not magazine.slots:
            self._refill(magazine)
        e, local = self._extent_of(magazine.slots.pop())
        magazine.note_high()
        return self._write_new(e, local, data)

    def release(self, handle: int) -> None:
        """Give the slot back to this thread's magazine; `handle` is stale from now on."""
        self._check_open()
        e, local = self._locate(handle)
        u = e.u
        m = e.meta_w + (local << 2)
        generation = handle >> 32
        if u[m] != generation and _live_state(u, m, generation) < 0:
            raise self._bad_handle(handle)
        # Cached first: a crash in between leaves a cached slot with a readable
        # old value, which recovery frees; never "allocated but unreadable".
        u[m + 1] = self._cached_tag
        u[m] = L.next_generation(generation) | L.UNREADABLE
        self._keep(e.base + local)

    def _keep(self, index: int) -> None:
        """Put a released slot in this thread's magazine; drain it when it is too full."""
        magazine = self._magazine()
        magazine.slots.append(index)
        magazine.deallocations += 1
        if len(magazine.slots) > 2 * self._batch:
            self._drain(magazine, len(magazine.slots) - self._batch)

    def _take_many(self, count: int, tag: int, minimum: int | None = None, counts_as_allocation: bool = True,
                   also_locked: Any = None) -> list[Any]:
        if counts_as_allocation and also_locked is None:
            # allocate_many() and acquire() take from the shared free lists, where slots
            # cached in this thread's magazine are invisible: give those back first.
            # (Only this thread's: another thread pops its own without a lock.)
            magazine = self._magazine()
            if magazine.slots:
                self._drain(magazine, len(magazine.slots))
        return super()._take_many(count, tag, minimum, counts_as_allocation, also_locked)

    def _refill(self, magazine: _Magazine) -> None:
        """Take up to batch_size slots from the shared free lists (PoolExhausted if none)."""
        taken = self._take_many(self._batch, self._cached_tag, minimum=1, counts_as_allocation=False,
                                also_locked=lambda: self._publish_locked(magazine))
        magazine.slots.extend(e.base + local for e, local in reversed(taken))  # pop() takes the lowest first
        magazine.baseline += len(taken)

    def _drain(self, magazine: _Magazine, count: int) -> None:
        """Give `count` cached slots back to the shared free lists under one lock acquisition."""
        giving = magazine.slots[:count]
        del magazine.slots[:count]
        magazine.baseline -= count
        with self._lock:
            for index in giving:
                e, local = self._extent_of(index)
                u = e.u
                u[e.meta_w + (local << 2) + 1] = L.FREE
                top = u[e.top_w]
                u[e.fl_w + top] = local
                u[e.top_w] = top + 1
            self._publish_locked(magazine)

    def _publish_locked(self, magazine: _Magazine) -> None:
        """Add a magazine's counters to the shared ones (lock held)."""
        q = self._q
        peak = L.in_use(q) + magazine.high
        q[L.HDR_ALLOCATIONS] += magazine.unpublished_allocations()
        q[L.HDR_DEALLOCATIONS] += magazine.deallocations
        peak = max(peak, L.in_use(q))
        if peak > q[L.HDR_PEAK]:
            q[L.HDR_PEAK] = min(peak, q[L.HDR_CAPACITY])
        magazine.baseline = len(magazine.slots)
        magazine.deallocations = magazine.high = 0

    def _publish_all_locked(self) -> None:
        for magazine in self._magazines:
            self._publish_locked(magazine)

    def statistics(self):  # noqa: ANN201 - same as the base
        """A snapshot of the shared counters, after publishing this process's own."""
        self._check_open()
        if any(m.unpublished_allocations() or m.deallocations for m in self._magazines):
            with self._lock:
                self._publish_all_locked()
        return super().statistics()

    def _reset_counters_locked(self) -> None:
        # Published first: this process's allocations before the reset must not count after it.
        self._publish_all_locked()
        super()._reset_counters_locked()

    def _rebuild_locked(self, reclaim: bool):  # noqa: ANN201 - same as the base
        # The rebuild sets the shared counters from the slot states, which already
        # show this process's unpublished allocations: publishing them afterwards
        # (or len() adding them) would count them twice.
        self._publish_all_locked()
        return super()._rebuild_locked(reclaim)

    def __len__(self) -> int:
        """Slots in use now: the shared counters plus this process's unpublished ones."""
        shared = super().__len__()
        return shared + sum(m.unpublished_allocations() - m.deallocations for m in self._magazines)

    def cached(self) -> int:
        """Slots held in this process's magazines now."""
        self._check_open()
        return sum(len(m.slots) for m in self._magazines)

    def _before_close(self) -> None:
        for magazine in self._magazines:
            if magazine.slots or magazine.unpublished_allocations() or magazine.deallocations:
                self._drain(magazine, len(magazine.slots))
        self._reset_magazines()

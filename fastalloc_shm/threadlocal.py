"""ThreadLocalPool: allocations from a private magazine, no lock on the fast path."""

from __future__ import annotations

from . import _layout as L
from ._value_types import V
from .pool import KindPolicy, SharedPool


class ThreadLocalPool(SharedPool[V]):
    """A pool where each process allocates from a private magazine of free slots.

    The magazine is refilled from the shared free lists `batch_size` slots at a
    time under one lock acquisition, and drained back when it holds more than
    twice that; in between, allocate() and release() take no lock (a release
    claims its slot with one compare-and-swap, so two racing releases of one
    handle free it once). Slots in a magazine are marked cached-by-this-process
    in the shared slot states, so a process killed with a full magazine loses
    nothing: recover() (or the daemon) returns them, and `close()` does too.
    The threads of a process share its magazine (each touch holds the GIL).

    Trade-offs: free slots in other processes' magazines are invisible, so the
    pool can report PoolExhausted with up to 2 * batch_size slots per process
    cached elsewhere. Handles work from any process.
    """

    _policy = KindPolicy(L.KIND_THREADLOCAL, may_grow=True)

    def cached(self) -> int:
        """Slots held in this process's magazine now."""
        self._check_open()
        return self._core.cached

"""ThreadSafePool: many threads and processes on one pool, with contention counters."""

from __future__ import annotations

from . import _layout as L
from ._value_types import V
from .pool import KindPolicy, SharedPool


class ThreadSafePool(SharedPool[V]):
    """A pool for heavy contention from many threads and processes.

    Same layout and operations as FixedPool (or GrowingPool, when given a
    growth strategy), with a lock that spins adaptively (yielding) before it
    blocks, as parking_lot advises: a holder is usually about to finish. Every
    contended wait is timed into `lock_wait_ns`; waits are bounded by
    `lock_timeout` and fail with LockTimeout naming the holder's pid.
    """

    _policy = KindPolicy(L.KIND_THREADSAFE, may_grow=True)

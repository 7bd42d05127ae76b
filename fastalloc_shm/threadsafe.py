"""ThreadSafePool: many threads and processes on one pool, with contention counters."""

from __future__ import annotations

from .pool import SharedPool


class ThreadSafePool(SharedPool):
    """A pool for heavy contention from many threads and processes.

    Same layout and operations as FixedPool (or GrowingPool, when given a
    growth strategy), with a lock that spins adaptively before it blocks
    (parking_lot's advice: a holder is usually about to finish), and that
    times every contended wait into `lock_wait_ns`. Waits are bounded by
    `lock_timeout` and fail with LockTimeout naming the holder's pid.
    """

    kind = "threadsafe"
    may_grow = True
    measure_lock_wait = True
    spin_lock = True

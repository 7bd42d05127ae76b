"""GrowingPool: starts at `capacity` and adds extents by its GrowthStrategy up to `max_capacity`."""

from __future__ import annotations

from .pool import SharedPool


class GrowingPool(SharedPool):
    """A pool that grows when full, by adding shared-memory extents.

    Growth happens under the pool lock, so two processes that find the pool
    full at once grow it once. Other processes map new extents lazily, the
    first time they meet a handle or a free slot there; handles from older
    extents stay valid. `unlink()` removes every extent.

    >>> pool = GrowingPool.create("jobs", capacity=1000, max_capacity=100_000,
    ...                           growth_strategy=GrowthStrategy.exponential(2.0))  # doctest: +SKIP
    """

    kind = "growing"
    may_grow = True

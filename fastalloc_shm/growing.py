"""GrowingPool: starts at `capacity` and adds extents by its GrowthStrategy up to `max_capacity`."""

from __future__ import annotations

from . import _layout as L
from ._value_types import V
from .config import GrowthStrategy, PoolConfig
from .pool import KindPolicy, SharedPool

DEFAULT_GROWTH = GrowthStrategy.exponential(2.0)


class GrowingPool(SharedPool[V]):
    """A pool that grows when full, by adding shared-memory extents.

    Growth is serialized across processes, so two processes that find the pool
    full at once grow it once. Other processes map new extents lazily, the
    first time they meet a handle or a free slot there; handles from older
    extents stay valid. `unlink()` removes every extent. Without a
    growth_strategy it doubles (GrowthStrategy.exponential(2.0)), as the crate does.

    >>> pool = GrowingPool.create("jobs", capacity=1000, max_capacity=100_000,
    ...                           growth_strategy=GrowthStrategy.exponential(2.0))  # doctest: +SKIP
    """

    _policy = KindPolicy(L.KIND_GROWING, may_grow=True)

    @classmethod
    def _prepare_config(cls, cfg: PoolConfig) -> PoolConfig:
        """A GrowingPool given no strategy doubles, as the Rust crate's default does."""
        if cfg.growth_strategy.kind == "none":
            cfg = cfg.with_overrides(growth_strategy=DEFAULT_GROWTH)
        return cfg

"""This project's four pool kinds behind the benchmark's store interface.

The store hands out the pool's own bound methods, so a timed loop calls
``pool.allocate`` directly: no wrapper is measured. ``fastalloc_shm`` is imported lazily so
that the floor and the peers can be benchmarked while the library does not import.
"""

from __future__ import annotations

KINDS = ("FixedPool", "GrowingPool", "ThreadLocalPool", "ThreadSafePool")
# GrowingPool in steady state: room to grow, but the benchmark's live set never makes it.
GROWTH_STEP = 1000


def pool_class(kind: str):
    import fastalloc_shm

    return getattr(fastalloc_shm, kind)


def create_pool(kind: str, name: str, capacity: int, slot_size: int, **options):
    """Create a pool of ``kind``; a GrowingPool grows linearly by GROWTH_STEP up to 4x capacity."""
    if kind == "GrowingPool":
        from fastalloc_shm import GrowthStrategy

        options.setdefault("max_capacity", capacity * 4)
        options.setdefault("growth_strategy", GrowthStrategy.linear(GROWTH_STEP))
    return pool_class(kind).create(name, capacity=capacity, slot_size=slot_size, **options)


def destroy_pool(pool) -> None:
    """Unlink (while still mapped: a growing pool finds its extents through the header), then close."""
    try:
        pool.unlink()
    finally:
        pool.close()


class PoolStore:
    """A pool seen as a store; the creator's close() also unlinks."""

    max_live = None

    def __init__(self, kind: str, pool, owner: bool):
        self.kind, self.pool, self.owner = kind, pool, owner
        self.allocate, self.get, self.set, self.release = pool.allocate, pool.get, pool.set, pool.release
        self.allocate_many, self.release_many = pool.allocate_many, pool.release_many

    @classmethod
    def create(cls, kind: str, name: str, capacity: int, slot_size: int) -> PoolStore:
        return cls(kind, create_pool(kind, name, capacity, slot_size), owner=True)

    @classmethod
    def attach(cls, spec, worker_id: int = 0) -> PoolStore:
        kind, name = spec
        return cls(kind, pool_class(kind).attach(name), owner=False)

    def worker_spec(self):
        return (self.kind, self.pool.name)

    def close(self) -> None:
        if self.owner:
            destroy_pool(self.pool)
        else:
            self.pool.close()

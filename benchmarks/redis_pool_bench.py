"""RedisPool against plain redis-py on the same server: what the pool's bookkeeping costs.

``measure(url, quick)`` returns rows ``{"system", "op", "ns_per_op"}``:

* ``cycle``: RedisPool ``allocate + get + release`` against redis-py ``SET + GET + DEL`` of
  the same ~100 B msgpack value (``values.SMALL``). Both sides pack and unpack with msgpack,
  so the difference is the pool: three script calls (free list, generations, owners,
  counters) against three plain commands.
* ``batch100``: ``allocate_many`` of 100 values then ``release_many`` (one script call
  each) against ``MSET`` of 100 keys then ``DEL`` of them; reported per value.

Timing follows the rest of the suite (``timing.py``: warm-up, garbage collector paused,
median of repeats), with one difference: the two systems' repeats alternate, so that load
from elsewhere on the machine falls on both alike and their ratio stays meaningful. ``url``
must be a standalone server (MSET of many keys spans cluster slots). Everything created is
deleted afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import msgpack
import redis

from fastalloc_shm.redis_pool import RedisPool

from .timing import clock, gc_paused, median
from .values import SMALL

BATCH = 100


def measure(url: str, quick: bool) -> list[dict]:
    """Time RedisPool and raw redis-py on the Redis at ``url``; rows of ns per operation (per value for batches)."""
    cycles, batches, reps = (300, 20, 3) if quick else (3000, 200, 7)
    # The run's tag (bench-<pid>), as everything else the benchmarks create carries.
    name = f"bench-{os.getpid()}-redispool"
    raw = redis.Redis.from_url(url)
    keys = [f"{name}:raw:{i}" for i in range(BATCH)]
    values = [SMALL] * BATCH
    packb, unpackb = msgpack.packb, msgpack.unpackb
    try:
        with RedisPool.create(name, url=url, capacity=2 * BATCH, slot_size=256) as pool:
            allocate, get, release = pool.allocate, pool.get, pool.release
            allocate_many, release_many = pool.allocate_many, pool.release_many
            key = keys[0]
            set_, get_, delete, mset = raw.set, raw.get, raw.delete, raw.mset

            def pool_cycles() -> float:
                start = clock()
                for _ in range(cycles):
                    handle = allocate(SMALL)
                    get(handle)
                    release(handle)
                return (clock() - start) / cycles

            def raw_cycles() -> float:
                start = clock()
                for _ in range(cycles):
                    set_(key, packb(SMALL))
                    unpackb(get_(key))
                    delete(key)
                return (clock() - start) / cycles

            def pool_batches() -> float:
                start = clock()
                for _ in range(batches):
                    release_many(allocate_many(values))
                return (clock() - start) / (batches * BATCH)

            def raw_batches() -> float:
                start = clock()
                for _ in range(batches):
                    mset({k: packb(v) for k, v in zip(keys, values, strict=True)})
                    delete(*keys)
                return (clock() - start) / (batches * BATCH)

            return [
                *_alternate("cycle", {"RedisPool": pool_cycles, "redis-py": raw_cycles}, reps),
                *_alternate("batch100", {"RedisPool": pool_batches, "redis-py": raw_batches}, reps),
            ]
    finally:
        raw.delete(*keys)
        raw.close()


def _alternate(op: str, loops: dict[str, Callable[[], float]], reps: int) -> list[dict]:
    """One warm-up run of each loop, then ``reps`` rounds running each once; one row per system."""
    for loop in loops.values():
        gc_paused(loop)
    samples: dict[str, list[float]] = {system: [] for system in loops}
    for _ in range(reps):
        for system, loop in loops.items():
            samples[system].append(gc_paused(loop))
    return [{"system": system, "op": op, "ns_per_op": median(s)} for system, s in samples.items()]


if __name__ == "__main__":
    # python -m benchmarks.redis_pool_bench redis://127.0.0.1:6379/0 [--quick]
    for result in measure(sys.argv[1], "--quick" in sys.argv[2:]):
        print(f"{result['system']:<10} {result['op']:<9} {result['ns_per_op']:>12,.0f} ns")

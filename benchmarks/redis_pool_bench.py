"""RedisPool against plain redis-py on the same server: what the pool's bookkeeping costs.

``measure(url, quick)`` returns rows ``{"system", "op", "ns_per_op"}``:

* ``cycle``: RedisPool ``allocate + get + release`` against redis-py ``SET + GET + DEL`` of
  the same ~100 B msgpack value (``values.SMALL``). Both sides pack and unpack with msgpack,
  so the difference is the pool: three script calls (free list, generations, owners,
  counters) against three plain commands.
* ``batch100``: ``allocate_many`` of 100 values then ``release_many`` (one script call
  each) against ``MSET`` of 100 keys then ``DEL`` of them; reported per value.

Timing follows the rest of the suite (``timing.py``): a warm-up run, then the median of
several runs with the garbage collector paused. ``url`` must be a standalone server (MSET
of many keys spans cluster slots). Everything created is deleted afterwards.
"""

from __future__ import annotations

import os
import sys

import msgpack
import redis

from fastalloc_shm.redis_pool import RedisPool

from .timing import clock, median, repeat
from .values import SMALL

BATCH = 100


def measure(url: str, quick: bool) -> list[dict]:
    """Time RedisPool and raw redis-py on the Redis at ``url``; rows of ns per operation (per value for batches)."""
    cycles, batches, reps = (300, 20, 3) if quick else (3000, 200, 5)
    # The run's tag (bench-<pid>), as everything else the benchmarks create carries.
    name = f"bench-{os.getpid()}-redispool"
    raw = redis.Redis.from_url(url)
    keys = [f"{name}:raw:{i}" for i in range(BATCH)]
    values = [SMALL] * BATCH
    try:
        with RedisPool.create(name, url=url, capacity=2 * BATCH, slot_size=256) as pool:
            allocate, get, release = pool.allocate, pool.get, pool.release
            allocate_many, release_many = pool.allocate_many, pool.release_many

            def pool_cycles() -> float:
                start = clock()
                for _ in range(cycles):
                    handle = allocate(SMALL)
                    get(handle)
                    release(handle)
                return (clock() - start) / cycles

            def pool_batches() -> float:
                start = clock()
                for _ in range(batches):
                    release_many(allocate_many(values))
                return (clock() - start) / (batches * BATCH)

            rows = [
                _row("RedisPool", "cycle", repeat(pool_cycles, reps)),
                _row("RedisPool", "batch100", repeat(pool_batches, reps)),
            ]
        key = keys[0]
        packb, unpackb = msgpack.packb, msgpack.unpackb
        set_, get_, delete, mset = raw.set, raw.get, raw.delete, raw.mset

        def raw_cycles() -> float:
            start = clock()
            for _ in range(cycles):
                set_(key, packb(SMALL))
                unpackb(get_(key))
                delete(key)
            return (clock() - start) / cycles

        def raw_batches() -> float:
            start = clock()
            for _ in range(batches):
                mset({k: packb(v) for k, v in zip(keys, values, strict=True)})
                delete(*keys)
            return (clock() - start) / (batches * BATCH)

        rows += [
            _row("redis-py", "cycle", repeat(raw_cycles, reps)),
            _row("redis-py", "batch100", repeat(raw_batches, reps)),
        ]
        return rows
    finally:
        raw.delete(*keys)
        raw.close()


def _row(system: str, op: str, samples: list[float]) -> dict:
    return {"system": system, "op": op, "ns_per_op": median(samples)}


if __name__ == "__main__":
    # python -m benchmarks.redis_pool_bench redis://127.0.0.1:6379/0 [--quick]
    for result in measure(sys.argv[1], "--quick" in sys.argv[2:]):
        print(f"{result['system']:<10} {result['op']:<9} {result['ns_per_op']:>12,.0f} ns")

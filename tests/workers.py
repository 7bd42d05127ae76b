"""Functions run in child processes by the multi-process tests (importable under spawn)."""

from __future__ import annotations

import random

from fastalloc_shm import PoolExhausted, attach


def self_checking(worker: int, n: int) -> dict:
    """A value that says who wrote it, so a reader can tell it was not overwritten."""
    return {"worker": worker, "n": n, "check": [worker * 1_000_003 + n] * 4}


def stress(name: str, worker: int, ops: int, seed: int) -> dict:
    """Allocate, check, overwrite and release at random; return what this worker still holds
    (handle -> the value it last stored there)."""
    rng = random.Random(seed)
    pool = attach(name)
    held: dict[int, dict] = {}
    counter = 0
    try:
        for _ in range(ops):
            roll = rng.random()
            if roll < 0.5 or not held:
                counter += 1
                value = self_checking(worker, counter)
                try:
                    held[pool.allocate(value)] = value
                except PoolExhausted:
                    pass
            elif roll < 0.7:
                handle = rng.choice(list(held))
                assert pool.get(handle) == held[handle], "a slot was handed out twice or torn"
                counter += 1
                held[handle] = self_checking(worker, counter)
                pool.set(handle, held[handle])
            else:
                handle = rng.choice(list(held))
                assert pool.get(handle) == held.pop(handle)
                pool.release(handle)
        for handle, value in held.items():
            assert pool.get(handle) == value
        return {"held": held}
    finally:
        pool.close()


def consume(pool, queue, results) -> None:
    """Take handles from a queue until None; read and release each (the pool arrives pickled)."""
    total = 0
    while (handle := queue.get()) is not None:
        total += pool.get(handle)["n"]
        pool.release(handle)
    results.put(total)
    pool.close()


def read_through_pickle(pool, handle: int):
    """Run in a ProcessPoolExecutor: the pool arrives pickled (attach by name)."""
    try:
        return pool.get(handle)
    finally:
        pool.close()

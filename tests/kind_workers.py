"""Child-process functions for tests/test_kinds.py, and the callables its pools record by import path.

Everything here is module-level so that spawned processes can import it and so
that pools can record the callables as "tests.kind_workers:<name>".
"""

from __future__ import annotations

import os
import random
import threading
import traceback

from fastalloc_shm import FastallocError, PoolExhausted, attach

from .workers import self_checking

# The longest any child waits for the test process or a sibling (seconds).
WAIT = 30


# -- callables a pool records by import path ------------------------------------------


def add_half_plus_one(capacity: int) -> int:
    """A custom growth function: add half the capacity, plus one."""
    return capacity // 2 + 1


def invalid_growth(capacity: int) -> int:
    """A custom growth function that breaks its contract (a negative amount)."""
    return -1


def new_record() -> dict:
    """reset_fn's create(): a record that says which process made it."""
    return {"made_by": os.getpid(), "uses": 0}


def reuse_in_place(record: dict) -> None:
    """reset_fn's reset() that mutates the previous value and returns None."""
    record["uses"] += 1
    record.pop("scratch", None)


def reuse_as_new(record: dict) -> dict:
    """reset_fn's reset() that returns a new value built from the previous one."""
    return {"made_by": record["made_by"], "uses": record["uses"] + 1, "renewed": True}


def initial_value() -> dict:
    """An initializer for pre_initialize=True."""
    return {"state": "ready", "hits": 0}


# -- the harness ---------------------------------------------------------------------------


def run(results, key: int, fn, *args) -> None:
    """Run fn(*args) and put (key, "ok", result) or (key, "error", traceback) on `results`."""
    try:
        results.put((key, "ok", fn(*args)))
    except BaseException:
        results.put((key, "error", traceback.format_exc()))


# -- what the children do ---------------------------------------------------------------------


def fill_until_grown(name: str) -> dict:
    """Allocate until the pool grows once; return the handles from the old extent and the new one."""
    pool = attach(name)
    try:
        start = pool.capacity
        old, new = [], []
        while pool.capacity == start:
            handle = pool.allocate({"by": "A", "n": len(old)})
            (old if handle & 0xFFFFFFFF < start else new).append(handle)
        new.append(pool.allocate({"by": "A", "n": "second in the new extent"}))
        return {"old": old, "new": new, "capacity": pool.capacity, "growths": pool.statistics().growth_count}
    finally:
        pool.close()


def read_after_growth(name: str, attached, inbox) -> dict:
    """Attach before the growth, then read (and release one of) the handles the test sends."""
    pool = attach(name)
    try:
        attached.put((pool.capacity, pool._core.extents))
        handles, to_release = inbox.get(timeout=WAIT)
        mapped_before = pool._core.extents
        values = [pool.get(h) for h in handles]
        pool.release(to_release)
        return {"mapped_before": mapped_before, "mapped_after": pool._core.extents, "values": values}
    finally:
        pool.close()


def allocate_in_rounds(name: str, barrier, worker: int, rounds: int) -> list[int]:
    """Each round, wait for the sibling at the barrier, then allocate one slot of a full pool."""
    pool = attach(name)
    try:
        handles = []
        for r in range(rounds):
            barrier.wait(WAIT)
            handles.append(pool.allocate({"worker": worker, "round": r}))
        return handles
    finally:
        pool.close()


def allocate_here(name: str, count: int) -> dict:
    """Try to allocate `count` values (one by one if 1, else as one batch); report what happened."""
    pool = attach(name)
    try:
        values = [{"by": os.getpid(), "n": n} for n in range(count)]
        try:
            handles = [pool.allocate(values[0])] if count == 1 else pool.allocate_many(values)
        except FastallocError as exc:
            return {"error": type(exc).__name__, "message": str(exc), "in_use": len(pool)}
        return {"error": None, "handles": handles, "capacity": pool.capacity, "in_use": len(pool)}
    finally:
        pool.close()


def cycle_and_close(name: str, count: int, rounds: int) -> dict:
    """ThreadLocalPool: allocate and release `count` slots `rounds` times, then close."""
    pool = attach(name)
    try:
        for _ in range(rounds):
            handles = [pool.allocate(i) for i in range(count)]
            for handle in handles:
                pool.release(handle)
        return {"cached_before_close": pool.cached(), "batch_size": pool.config.batch_size}
    finally:
        pool.close()


def read_and_allocate(name: str, handle: int, count: int) -> dict:
    """Read a handle the test allocated, and allocate `count` values for the test to read."""
    pool = attach(name)
    try:
        return {"value": pool.get(handle), "pid": os.getpid(),
                "handles": [pool.allocate({"from": "child", "n": n}) for n in range(count)]}
    finally:
        pool.close()


def acquire_twice(name: str) -> dict:
    """acquire() a reused slot (the test released one) and then a fresh one, in this process."""
    pool = attach(name)
    try:
        first = pool.acquire()
        second = pool.acquire()
        return {"pid": os.getpid(), "first": pool.get(first), "second": pool.get(second)}
    finally:
        pool.close()


def _hammer(pool, worker: int, ops: int, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    held: dict[int, dict] = {}
    counts = {"allocations": 0, "sets": 0, "releases": 0, "exhausted": 0}
    n = 0
    for _ in range(ops):
        roll = rng.random()
        if roll < 0.45 or not held:
            n += 1
            value = self_checking(worker, n)
            try:
                held[pool.allocate(value)] = value
                counts["allocations"] += 1
            except PoolExhausted:
                counts["exhausted"] += 1
        elif roll < 0.7:
            handle = rng.choice(list(held))
            assert pool.get(handle) == held[handle], f"worker {worker}: slot {handle:#x} changed under it"
            n += 1
            held[handle] = self_checking(worker, n)
            pool.set(handle, held[handle])
            counts["sets"] += 1
        else:
            handle = rng.choice(list(held))
            assert pool.get(handle) == held.pop(handle), f"worker {worker}: slot {handle:#x} changed under it"
            pool.release(handle)
            counts["releases"] += 1
    for handle, value in held.items():
        assert pool.get(handle) == value, f"worker {worker}: slot {handle:#x} changed under it"
    out.update(counts, held=held)


def hammer_with_threads(name: str, process: int, threads: int, ops: int) -> dict:
    """`threads` threads each allocate/set/get/release self-checking values; return the totals and what is held."""
    pool = attach(name)
    try:
        outs = [{} for _ in range(threads)]
        errors = []

        def body(t: int) -> None:
            try:
                _hammer(pool, process * 100 + t, ops, seed=process * 100 + t, out=outs[t])
            except BaseException:
                errors.append(traceback.format_exc())

        workers = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(WAIT)
        assert not any(w.is_alive() for w in workers), "a hammering thread did not finish"
        assert not errors, errors[0]
        totals = {k: sum(o[k] for o in outs) for k in ("allocations", "sets", "releases", "exhausted")}
        totals["held"] = {h: v for o in outs for h, v in o["held"].items()}
        return totals
    finally:
        pool.close()


def fill(name: str, count: int) -> list[int]:
    """Allocate `count` values (growing the pool if it must) and leave them allocated."""
    pool = attach(name)
    try:
        return [pool.allocate(n) for n in range(count)]
    finally:
        pool.close()

"""kill -9 at every fault point of every operation, for every kind, the general paths included.

Each case: the test process (the survivor) holds self-checking values; a child
(tests/matrix_child.py) attaches and runs one operation with
FASTALLOC_FAULT=<point>:kill, so it SIGKILLs itself there. Then the survivor
must take the lock at once (a short lock_timeout), `recover(orphan_policy="reclaim")` must
leave every slot either held by the survivor (reading back what it wrote) or
free, each free one allocatable exactly once (tests/invariants.audit), and the
handles the child was working on must be either untouched or cleanly stale,
as far as the point says the operation had got.

The GrowingPool cases work in extent 1 (extent 0 is filled first), the
ThreadLocalPool cases in magazine refills, drains and lock-free releases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastalloc_shm import (
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    SerializationError,
    StaleHandle,
    ThreadLocalPool,
    ThreadSafePool,
)

from .invariants import assert_sound
from .matrix_child import value as child_value
from .workers import self_checking

ROOT = Path(__file__).resolve().parent.parent
# Short on purpose: the next locker repairs a dead holder's lock at once, so with one live
# process at a time no wait may come near it. A takeover that first waits to guess whether
# the holder is dead (the first build: >= 110 ms) cannot keep within twice this; scheduling
# on a loaded machine can.
LOCK_TIMEOUT = 0.05

ALLOCATE = ("alloc.token", "lock.acquired", "alloc.marked", "alloc.popped", "lock.released", "alloc.writing")
RELEASE = ("lock.acquired", "release.freed", "release.pushed", "lock.released")
SET = ("lock.acquired", "set.writing", "lock.released")
TAKE_MANY = ("lock.acquired", "batch.taking", "lock.released", "alloc.writing")  # then each value is written
RELEASE_MANY = ("lock.acquired", "batch.releasing", "lock.released")

SHARED_LIST_OPS = [("allocate", ALLOCATE), ("release", RELEASE), ("set", SET), ("allocate_many", TAKE_MANY),
                   ("release_many", RELEASE_MANY), ("recover", ("recover.rebuilding",))]
THREADLOCAL_OPS = [
    ("allocate", TAKE_MANY),  # a magazine refill
    ("release", ("magazine.release",)),  # lock-free, into the child's magazine
    ("cycle", ("batch.releasing",)),  # the magazine overflows and drains
    ("set", SET),
    ("allocate_many", TAKE_MANY),
    ("release_many", RELEASE_MANY),  # under the lock, straight to the free lists
    ("recover", ("recover.rebuilding",)),
]
CASES = [(kind, op, point) for kind in ("fixed", "threadsafe", "growing") for op, points in SHARED_LIST_OPS
         for point in points]
CASES += [("growing", "grow", "grow.created")]
CASES += [("threadlocal", op, point) for op, points in THREADLOCAL_OPS for point in points]

# Where the point lies after the operation took effect (handles it released are stale)
# or before it changed anything (they still hold their values).
DONE_AT = {"release.freed", "release.pushed", "lock.released", "magazine.release"}
UNTOUCHED_AT = {"lock.acquired"}


def make_pool(kind: str, name: str):
    if kind == "growing":
        return GrowingPool.create(name, capacity=4, max_capacity=16, growth_strategy=GrowthStrategy.linear(4),
                                  lock_timeout=LOCK_TIMEOUT)
    if kind == "threadlocal":
        return ThreadLocalPool.create(name, capacity=16, batch_size=2, lock_timeout=LOCK_TIMEOUT)
    cls = ThreadSafePool if kind == "threadsafe" else FixedPool
    return cls.create(name, capacity=16, lock_timeout=LOCK_TIMEOUT)


def allocate(pool, held: dict, n: int) -> int:
    value = self_checking(0, n)
    handle = pool.allocate(value)
    held[handle] = value
    return handle


def run_child_to_its_death(name: str, op: str, point: str, victims: list[int]) -> None:
    env = dict(os.environ, FASTALLOC_FAULT=f"{point}:kill")
    env.pop("FASTALLOC_FAULT_FILE", None)
    child = subprocess.run([sys.executable, "-m", "tests.matrix_child", name, op, *map(str, victims)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert child.returncode == -signal.SIGKILL, (
        f"the child never reached {point} in {op} (exit status {child.returncode}): {child.stderr[-2000:]}")


def settle_victim(pool, op: str, point: str, handle: int, before) -> object:
    """What became of a handle the child was releasing or setting; None if it is stale now."""
    try:
        got = pool.get(handle)
    except StaleHandle:
        assert op in ("release", "release_many") and point not in UNTOUCHED_AT, (
            f"handle {handle:#x} went stale though the child's {op} stopped at {point}")
        return None
    except SerializationError:
        assert op == "set" and point == "set.writing", f"handle {handle:#x} unreadable after {op} at {point}"
        pool.set(handle, "rewritten")
        return "rewritten"
    if op == "set":
        expected = {"lock.acquired": [before], "lock.released": [child_value(1)]}.get(point, [before, child_value(1)])
        assert got in expected, f"handle {handle:#x} reads {got!r} after the child's set died at {point}"
    else:
        assert got == before, f"handle {handle:#x} reads {got!r}, not its value, after the child's {op} at {point}"
        assert point not in DONE_AT, f"handle {handle:#x} is still live though the child's {op} got to {point}"
    return got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, op, point", CASES, ids=["-".join(case) for case in CASES])
def test_kill_at_fault_point_then_survive_recover_and_lose_nothing(pool_name, kind, op, point):
    with make_pool(kind, pool_name) as pool:
        held: dict[int, object] = {}
        for n in range(pool.capacity if kind == "growing" else 3):  # a GrowingPool: extent 0 full
            allocate(pool, held, n)
        if op != "grow":
            if kind == "growing":
                allocate(pool, held, 100)  # grows: what follows happens in extent 1
            spare = allocate(pool, held, 101)
            pool.release(spare)  # a non-empty free list for the child to pop from and recover to rebuild
            del held[spare]
        victims = [allocate(pool, held, 200 + i) for i in range({"release_many": 2, "release": 1, "set": 1}.get(op, 0))]
        before = {h: held.pop(h) for h in victims}

        run_child_to_its_death(pool_name, op, point, victims)

        survivor = next(iter(held))
        started = time.monotonic()
        held[survivor] = self_checking(0, 300)
        pool.set(survivor, held[survivor])
        allocate(pool, held, 301)
        waited = time.monotonic() - started
        assert waited < 2 * LOCK_TIMEOUT, f"the survivor waited {waited:.3f} s for the lock of a dead holder"

        pool.recover(orphan_policy="reclaim")
        for handle in victims:
            if (got := settle_victim(pool, op, point, handle, before[handle])) is not None:
                held[handle] = got
        assert_sound(pool, held)

"""kill -9 inside every critical step: survivors go on within lock_timeout, recover() restores the invariants.

A child process attaches the pool and runs one operation with FASTALLOC_FAULT
naming a step; it pauses there (or SIGSTOPs itself), the test SIGKILLs it, and
the test process carries on as the survivor.
"""

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
    LockTimeout,
    SerializationError,
    StaleHandle,
    ThreadLocalPool,
    attach,
)

from .invariants import check_invariants

ROOT = Path(__file__).resolve().parent.parent
LOCK_TIMEOUT = 5.0


class Child:
    """A crash_child process paused at a fault point."""

    def __init__(self, tmp_path, name, op, point, action="pause", handle=0):
        self.marker = tmp_path / f"fault-{point}-{op}"
        env = dict(os.environ, FASTALLOC_FAULT=f"{point}:{action}", FASTALLOC_FAULT_FILE=str(self.marker))
        args = [sys.executable, "-m", "tests.crash_child", name, op] + ([str(handle)] if handle else [])
        if point is None:
            del env["FASTALLOC_FAULT"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        if point is None:
            self.output = self.proc.stdout.readline()  # the operation finished
        else:
            self.wait_at_fault(point)

    def wait_at_fault(self, point):
        deadline = time.monotonic() + 30
        while not (self.marker.exists() and point in self.marker.read_text()):
            assert self.proc.poll() is None, f"child exited ({self.proc.returncode}) before reaching {point}"
            assert time.monotonic() < deadline, f"child never reached {point}"
            time.sleep(0.01)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


CRITICAL_STEPS = [
    # (pool kind, operation the child runs, fault point)
    ("fixed", "allocate", "lock.acquired"),
    ("fixed", "allocate", "lock.released"),
    ("fixed", "allocate", "alloc.marked"),
    ("fixed", "allocate", "alloc.popped"),
    ("fixed", "allocate", "alloc.writing"),
    ("fixed", "release", "release.freed"),
    ("fixed", "set", "set.writing"),
    ("fixed", "allocate_many", "batch.taking"),
    ("growing", "allocate", "grow.created"),
    ("threadlocal", "allocate", "batch.taking"),
    ("threadlocal", "hold_magazine", "lock.released"),
]


def make_pool(kind, name):
    if kind == "growing":
        return GrowingPool.create(name, capacity=4, max_capacity=12, growth_strategy=GrowthStrategy.linear(4),
                                  lock_timeout=LOCK_TIMEOUT)
    if kind == "threadlocal":
        return ThreadLocalPool.create(name, capacity=16, batch_size=4, lock_timeout=LOCK_TIMEOUT)
    return FixedPool.create(name, capacity=16, lock_timeout=LOCK_TIMEOUT)


@pytest.mark.parametrize("kind, op, point", CRITICAL_STEPS, ids=lambda v: str(v))
def test_kill_inside_critical_step_then_survivor_and_recover(tmp_path, pool_name, kind, op, point):
    with make_pool(kind, pool_name) as pool:
        mine = {pool.allocate({"mine": i}): {"mine": i} for i in range(3)}
        if kind == "growing":
            mine.update({pool.allocate({"mine": i}): {"mine": i} for i in range(3, 4)})  # full: child must grow
        victim = pool.allocate({"victim": True}) if op in ("release", "set") else 0
        child = Child(tmp_path, pool_name, op, point, handle=victim)
        child.kill()

        extra, waited = timed(pool.allocate, {"after": "kill"})
        assert waited < LOCK_TIMEOUT
        mine[extra] = {"after": "kill"}

        report = pool.recover()
        counts = check_invariants(pool)
        for h, value in mine.items():
            assert pool.get(h) == value
        if point in ("alloc.marked", "alloc.popped", "alloc.writing"):
            assert counts["writing"] == 0
        if op == "release":
            # the child died after marking the slot free: the handle is stale and the slot reusable
            with pytest.raises(StaleHandle):
                pool.get(victim)
        if op == "set":
            with pytest.raises(SerializationError, match="torn"):
                pool.get(victim)
            pool.set(victim, "repaired")
            assert pool.get(victim) == "repaired"
        if kind == "threadlocal":
            assert counts["cached"] == 0, "a dead process's magazine was not returned"
        # the pool is fully usable: fill it and empty it
        more = []
        while (h := pool.try_allocate("fill")) is not None:
            more.append(h)
        assert len(more) + len(mine) + (1 if op == "set" else 0) + report.orphans_kept == pool.capacity
        pool.release_many(more)
        check_invariants(pool)


def test_orphans_are_kept_by_default_and_reclaimed_on_request(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=LOCK_TIMEOUT) as pool:
        child = Child(tmp_path, pool_name, "hold_magazine", None)  # allocated one slot, then sleeps
        child.kill()
        kept = pool.recover()
        assert kept.orphans_kept == 1 and len(pool) == 1
        reclaimed = pool.recover(orphan_policy="reclaim")
        assert reclaimed.orphans_reclaimed == 1 and len(pool) == 0
        assert check_invariants(pool)["free"] == 8


def test_a_stopped_live_holder_is_never_robbed(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=0.5) as pool:
        child = Child(tmp_path, pool_name, "allocate", "alloc.popped", action="stop")
        try:
            with pytest.raises(LockTimeout, match=f"pid {child.proc.pid} .alive"):
                pool.allocate(1)
            assert pool.statistics().lock_timeouts == 1
            os.kill(child.proc.pid, signal.SIGCONT)
            assert child.proc.wait(10) == 0
            assert pool.get(pool.allocate(2)) == 2
            assert len(pool) == 2
        finally:
            child.kill()


def test_a_live_process_stopped_between_acquire_and_record_is_not_robbed(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=0.5) as pool:
        child = Child(tmp_path, pool_name, "allocate", "lock.acquired", action="stop")
        try:
            with pytest.raises(LockTimeout):
                pool.allocate(1)
            os.kill(child.proc.pid, signal.SIGCONT)
            assert child.proc.wait(10) == 0
            check_invariants(pool)
            assert len(pool) == 1
        finally:
            child.kill()


def test_repairer_killed_while_rebuilding_is_repaired_in_turn(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=LOCK_TIMEOUT) as pool:
        h = pool.allocate("kept")
        Child(tmp_path, pool_name, "recover", "recover.rebuilding").kill()
        pool.allocate("after")
        pool.recover()
        check_invariants(pool)
        assert pool.get(h) == "kept"


def test_other_attachers_keep_working_after_a_takeover(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=LOCK_TIMEOUT) as pool:
        other = attach(pool_name)
        Child(tmp_path, pool_name, "allocate", "alloc.popped").kill()
        h, _ = timed(other.allocate, "via other")
        assert pool.get(h) == "via other"
        assert pool.statistics().recoveries == 1
        other.close()


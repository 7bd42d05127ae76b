"""Unit: lock.c, the robust pool mutex and its repair after a dead holder.

Its invariant (the top of lock.c): the next locker after a holder that died
repairs the pool from slot states and only then clears HDR_REPAIR_PENDING; a
locker that cannot see every extent writes nothing and leaves the word set for
the next one; a live holder, however slow or stopped, is never robbed; waits
are bounded, signals run during them, and a wait that runs out raises
LockTimeout naming the holder. Real processes: a child that stops or dies with
the lock held (FASTALLOC_FAULT=lock.acquired:<stop|kill>).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from fastalloc_shm import FastallocError, FixedPool, GrowingPool, GrowthStrategy, LockTimeout, ThreadSafePool, attach
from fastalloc_shm import _layout as L

from .alarms import Interrupted, interrupted_after

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys, fastalloc_shm
p = fastalloc_shm.attach(sys.argv[1])
h = p.allocate("child")  # the fault point stops or kills it here, the lock held
p.release(h)
p.close()
"""


def word(pool, index: int) -> int:
    return struct.unpack_from("<Q", pool._segment.mm, 8 * index)[0]


def put_word(pool, index: int, value: int) -> None:
    struct.pack_into("<Q", pool._segment.mm, 8 * index, value)


class Holder:
    """A child that reaches lock.acquired with the pool lock and stops (or dies) there."""

    def __init__(self, tmp_path: Path, name: str, action: str, script: str = HOLD, point: str = "lock.acquired") -> None:
        self.marker = tmp_path / f"marker-{name}"
        env = dict(os.environ, FASTALLOC_FAULT=f"{point}:{action}", FASTALLOC_FAULT_FILE=str(self.marker))
        self.proc = subprocess.Popen([sys.executable, "-c", script, name], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        try:
            while not (self.marker.exists() and f"{self.pid} {point} 1" in self.marker.read_text()):
                if action != "kill":
                    assert self.proc.poll() is None, self.proc.stderr.read()
                assert time.monotonic() < deadline, f"the child never reached {point}"
                time.sleep(0.005)
            if action == "kill":
                assert self.proc.wait(timeout=30) == -signal.SIGKILL
            else:
                while psutil.Process(self.pid).status() != psutil.STATUS_STOPPED:
                    assert time.monotonic() < deadline, "the child never stopped"
                    time.sleep(0.002)
        except BaseException:
            self.kill()
            raise

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def test_a_dead_holders_lock_is_repaired_by_the_next_locker(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=5) as pool:
        kept = pool.allocate("mine")
        recoveries = word(pool, L.HDR_RECOVERIES)
        Holder(tmp_path, pool_name, "kill")  # died in allocate with a token taken and the lock: owner-dead
        assert word(pool, L.HDR_LOCK_HOLDER) != 0, "the dead child's pid stays recorded until the next locker"
        started = time.monotonic()
        report = pool.recover()  # the next locker: EOWNERDEAD, repaired at once (no timer)
        assert time.monotonic() - started < 2
        assert report.lock_taken_over and report.dead_clients == (report.dead_clients[0],)
        assert word(pool, L.HDR_REPAIR_PENDING) == 0
        assert word(pool, L.HDR_RECOVERIES) == recoveries + 1
        assert word(pool, L.HDR_LOCK_HOLDER) == 0
        assert pool.get(kept) == "mine" and len(pool) == 1
        assert pool._core.semaphore_value == 7, "the token the child took before it died is not back"


def test_any_operation_that_locks_repairs_and_reports_nothing_extra(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=4, lock_timeout=5) as pool:
        Holder(tmp_path, pool_name, "kill")
        handles = [pool.allocate(i) for i in range(4)]  # the repair inside returned the dead child's slot
        assert word(pool, L.HDR_REPAIR_PENDING) == 0
        assert [pool.get(h) for h in handles] == [0, 1, 2, 3]
        report = pool.recover()
        assert not report.lock_taken_over and not report.free_list_rebuilt


def test_a_repair_that_cannot_map_an_extent_leaves_the_word_set(tmp_path, pool_name):
    """A repairer with a partial view writes nothing: the capacity stays, the next locker repairs."""
    grow = """
import sys, fastalloc_shm
p = fastalloc_shm.attach(sys.argv[1])
mine = [p.allocate(i) for i in range(6)]  # grows: extent 1 exists
p.release(mine[-1])  # release.pushed: killed with the lock held
"""
    with GrowingPool.create(pool_name, capacity=4, max_capacity=8, growth_strategy=GrowthStrategy.linear(4),
                            lock_timeout=5) as pool:
        h0 = pool.allocate("zero")  # in extent 0: releasing it needs no new extent mapped first
        Holder(tmp_path, pool_name, "kill", script=grow, point="release.pushed")
        assert pool._core.extents == 1 and word(pool, L.HDR_EXTENTS) == 2
        extent = Path(f"/dev/shm/fastalloc.{pool_name}.x1")
        hidden = extent.with_name(extent.name + ".hidden")
        extent.rename(hidden)
        try:
            with pytest.raises(FastallocError, match="cannot open a growth extent"):
                pool.release(h0)
            assert word(pool, L.HDR_REPAIR_PENDING) == 1
            assert word(pool, L.HDR_CAPACITY) == 8, "a partial view wrote the capacity"
            assert word(pool, L.HDR_LOCK_HOLDER) == 0, "the failed repairer kept the lock"
        finally:
            hidden.rename(extent)
        pool.release(h0)  # this locker sees every extent: it repairs, then releases
        assert word(pool, L.HDR_REPAIR_PENDING) == 0
        assert pool._core.extents == 2 and word(pool, L.HDR_CAPACITY) == 8
        report = pool.recover(orphan_policy="reclaim")
        assert report.orphans_reclaimed == 5 and len(pool) == 0


def test_a_stopped_holder_is_never_robbed_and_the_timeout_names_it(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=4, lock_timeout=0.2) as pool:
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            timeouts = word(pool, L.HDR_LOCK_TIMEOUTS)
            for attempt in (lambda: pool.allocate("x"), lambda: pool.recover(lock_wait=0.1)):
                with pytest.raises(LockTimeout, match=f"held by pid {holder.pid} "):
                    attempt()
            assert word(pool, L.HDR_LOCK_TIMEOUTS) == timeouts + 2
            assert (word(pool, L.HDR_LOCK_HOLDER) & 0xFFFFFFFF) == holder.pid and word(pool, L.HDR_REPAIR_PENDING) == 0
            holder.resume()
            holder.proc.communicate(timeout=30)
            assert holder.proc.returncode == 0, "the holder was robbed"
            assert pool.get(pool.allocate("after")) == "after" and len(pool) == 1
        finally:
            holder.kill()


def test_the_timeout_names_the_futex_owner_when_no_pid_is_recorded(tmp_path, pool_name):
    """Caught inside glibc's lock or unlock the header word is 0: the futex word's thread id is named."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=0.1) as pool:
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            put_word(pool, L.HDR_LOCK_HOLDER, 0)
            with pytest.raises(LockTimeout, match=f"held by pid {holder.pid} "):
                pool.allocate("x")
        finally:
            holder.kill()
        pool.recover()


def test_a_wait_for_a_holder_that_lets_go_is_counted(tmp_path, pool_name):
    with ThreadSafePool.create(pool_name, capacity=4, lock_timeout=10) as pool:  # spins first, then sleeps
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            waited = word(pool, L.HDR_LOCK_WAIT_NS)
            threading.Timer(0.3, holder.resume).start()
            started = time.monotonic()
            h = pool.allocate("waited")
            assert time.monotonic() - started >= 0.25
            assert word(pool, L.HDR_LOCK_WAIT_NS) - waited >= 200_000_000
            assert pool.get(h) == "waited"
            holder.proc.communicate(timeout=30)
            assert holder.proc.returncode == 0
        finally:
            holder.kill()



def test_a_signal_handler_runs_during_a_wait_and_nothing_stays_held(tmp_path, pool_name):
    """A wait of centuries is still interruptible: the handler's exception comes out, no lock with it."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=5) as pool:
        holder = Holder(tmp_path, pool_name, "stop")

        try:
            started = time.monotonic()
            with interrupted_after(0.2), pytest.raises(Interrupted):
                pool.recover(lock_wait=1e300)
            assert time.monotonic() - started < 3
            assert (word(pool, L.HDR_LOCK_HOLDER) & 0xFFFFFFFF) == holder.pid
        finally:
            holder.kill()
        report = pool.recover()  # the stopped holder was killed: this locker repairs
        assert report.lock_taken_over and pool._core.semaphore_value == 4


def test_a_pending_repair_is_done_by_a_trylock_too(pool_name):
    """ThreadLocalPool's drain after a release takes the lock only if it is free now (core_trylock)."""
    from fastalloc_shm import ThreadLocalPool

    with ThreadLocalPool.create(pool_name, capacity=32, batch_size=2) as pool:
        handles = [pool.allocate(i) for i in range(6)]
        recoveries = word(pool, L.HDR_RECOVERIES)
        put_word(pool, L.HDR_REPAIR_PENDING, 1)  # as a repairer that died would leave it
        for h in handles:
            pool.release(h)  # the magazine passes 2 x batch: a drain with a trylock repairs first
        assert word(pool, L.HDR_REPAIR_PENDING) == 0
        assert word(pool, L.HDR_RECOVERIES) == recoveries + 1
        assert len(pool) == 0


def test_a_second_pool_of_this_process_waits_like_another_process(pool_name):
    """Two attachments in one process are two lockers (the mutex is per pool, not per process)."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=0.2) as pool, attach(pool_name) as other:
        assert other._core.entry != pool._core.entry
        h = other.allocate("other")
        assert pool.get(h) == "other"
        pool.release(h)
        assert len(other) == 0

"""Unit coverage, round 2: lock.c's waits that end in EOWNERDEAD (issue 22, item 7).

Pinned: a locker that is already waiting (asleep in its timed lock, the GIL
released) when the holder dies takes the lock with EOWNERDEAD, repairs at once
and goes on with its operation: no LockTimeout, no second wait, the repair
counted once and the time waited counted. The same for recover() (whose
report then says the lock was taken over) and for a ThreadLocalPool release's
drain, which only tries the lock.
"""

from __future__ import annotations

import threading
import time

from fastalloc_shm import FixedPool, ThreadLocalPool

from . import test_unit_lock as lock_tests
from .test_unit_lock import Holder, word

L = lock_tests.L


def kill_later(holder: Holder, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, holder.proc.kill)
    timer.start()
    return timer


def test_a_holder_killed_while_we_wait_is_repaired_by_the_waiter(tmp_path, pool_name):
    """allocate() waits for a stopped holder; the holder is killed 0.3 s into the wait: the
    waiter's timed lock returns EOWNERDEAD, it repairs (the holder's token is back, one
    recovery counted), the wait is counted and the allocate returns a live handle."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=20) as pool:
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            recoveries, waited = word(pool, L.HDR_RECOVERIES), word(pool, L.HDR_LOCK_WAIT_NS)
            timer = kill_later(holder, 0.3)
            started = time.monotonic()
            h = pool.allocate("after the death")
            elapsed = time.monotonic() - started
            timer.join()
            assert 0.25 <= elapsed < 10, "the waiter did not wait for the death, or waited out a timeout"
            assert pool.get(h) == "after the death"
            assert word(pool, L.HDR_RECOVERIES) == recoveries + 1
            assert word(pool, L.HDR_REPAIR_PENDING) == 0 and word(pool, L.HDR_LOCK_HOLDER) == 0
            assert word(pool, L.HDR_LOCK_WAIT_NS) - waited >= 200_000_000
            # The repair derived the count while this allocate held a token of its own: one high
            # until the next derivation (tokens.c: the count heals), never low.
            assert len(pool) == 1 and pool._core.semaphore_value >= 3, "a free slot without its token"
            pool.recover()
            assert pool._core.semaphore_value == 3
        finally:
            holder.kill()


def test_recover_waiting_for_a_holder_that_dies_reports_the_lock_taken_over(tmp_path, pool_name):
    """recover() asleep on the lock when its holder is killed: the report says the lock was taken
    over and names the holder among the dead clients (it died while recover() waited), and the
    pool is whole."""
    with FixedPool.create(pool_name, capacity=4, lock_timeout=20) as pool:
        kept = pool.allocate("kept")
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            timer = kill_later(holder, 0.3)
            report = pool.recover(lock_wait=20)
            timer.join()
            assert report.lock_taken_over and holder.pid in report.dead_clients, report
            assert pool.get(kept) == "kept" and len(pool) == 1 and pool._core.semaphore_value == 3
        finally:
            holder.kill()


def test_a_magazine_drain_after_a_dead_holder_repairs_first(tmp_path, pool_name):
    """A ThreadLocalPool release past twice the batch tries the lock for its drain; when the holder
    has died the try gets EOWNERDEAD and repairs before it drains: the magazine goes back to the
    batch, one recovery counted, the holder's token restored."""
    with ThreadLocalPool.create(pool_name, capacity=32, batch_size=2, lock_timeout=5) as pool:
        handles = [pool.allocate(i) for i in range(6)]
        Holder(tmp_path, pool_name, "kill")
        recoveries = word(pool, L.HDR_RECOVERIES)
        for h in handles:
            pool.release(h)
        assert word(pool, L.HDR_RECOVERIES) == recoveries + 1
        assert word(pool, L.HDR_REPAIR_PENDING) == 0
        assert pool._core.cached <= 4
        assert len(pool) == 0 and pool._core.semaphore_value + pool._core.cached == 32



def test_the_waiters_repair_judges_the_dead_holder_dead_though_its_liveness_lock_lingers(tmp_path, pool_name):
    """A holder stopped at alloc.popped (its slot taken, being written) is killed while another
    process waits for the lock. The kernel hands the mutex on (EOWNERDEAD) before the dead
    process's files close, so its liveness lock may still look held; the waiter's repair must
    judge the holder dead all the same (it recorded its owner in HDR_LOCK_HOLDER): the half-
    written slot is freed by that repair, not left WRITING for a later recover(). Repeated,
    as the window is the kernel's."""
    for round_ in range(5):
        name = f"{pool_name}-{round_}"
        with FixedPool.create(name, capacity=2, lock_timeout=20) as pool:
            holder = Holder(tmp_path, name, "stop", point="alloc.popped")
            try:
                timer = kill_later(holder, 0.1)
                mine = pool.allocate("mine")
                timer.join()
                states = [row[1] for row in pool._core.slot_states()[0]["slots"]]
                assert L.WRITING not in states, f"round {round_}: the dead holder's slot still WRITING: {states}"
                assert pool.recover().half_written_freed == 0  # nothing left for a later recovery
                assert pool.get(mine) == "mine" and len(pool) == 1
            finally:
                holder.kill()

"""Unit coverage: magazines.c beyond test_unit_magazines.py (issue 22, item 7).

Pinned: a magazine larger than its first allocation (a batch past 16 slots)
grows and drains as any; threads of one process share one magazine and never
hand a slot out twice; processes each with a magazine keep the pool's counts
true; a drain that finds the lock held does not wait (the release succeeds and
the magazine drains at a later release); a drain never pushes a slot that is
no longer CACHED by this process.
"""

from __future__ import annotations

import multiprocessing as mp
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

from fastalloc_shm import PoolExhausted, ThreadLocalPool, attach
from fastalloc_shm import _layout as L

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60


def meta_at(index: int) -> int:
    return L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES


def assert_counts_true(pool, held: int) -> None:
    """Every slot is held, cached here or has a token: nothing lost, nothing twice."""
    core = pool._core
    assert len(pool) == held
    assert core.semaphore_value + core.cached + held == pool.capacity


def test_a_batch_past_sixteen_grows_the_magazine_and_drains_back(pool_name):
    """batch_size 40: one refill caches 40 slots (the magazine grows past its first 16);
    releasing 3 batches' worth drains it back to at most twice the batch, counts true."""
    with ThreadLocalPool.create(pool_name, capacity=256, batch_size=40) as pool:
        handles = [pool.allocate(i) for i in range(120)]
        assert pool._core.cached == 0 and pool._core.semaphore_value == 256 - 120
        assert [pool.get(h) for h in handles[:3]] == [0, 1, 2]
        for h in handles:
            pool.release(h)
            assert pool._core.cached <= 80
        assert_counts_true(pool, 0)
        assert pool._core.counters()["cached"] == pool._core.cached > 0


def _churn(pool, rounds: int, seen: set, errors: list) -> None:
    try:
        for i in range(rounds):
            hs = [pool.allocate((threading.get_ident(), i, k)) for k in range(3)]
            for k, h in enumerate(hs):
                assert pool.get(h) == [threading.get_ident(), i, k]
            seen.update(hs)
            for h in hs:
                pool.release(h)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_threads_share_one_magazine_and_never_see_each_others_values(pool_name):
    """Four threads allocating and releasing through one magazine: each reads back its own
    values (no slot handed to two threads at once), and the counts are true after."""
    with ThreadLocalPool.create(pool_name, capacity=32, batch_size=4) as pool:
        seen: set = set()
        errors: list = []
        threads = [threading.Thread(target=_churn, args=(pool, 300, seen, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert errors == []
        assert_counts_true(pool, 0)
        assert pool.statistics().total_allocations == 4 * 300 * 3


def _process_churn(name: str, rounds: int, done) -> None:
    pool = attach(name)
    try:
        for i in range(rounds):
            hs = [pool.allocate((os.getpid(), i, k)) for k in range(3)]
            assert [pool.get(h) for h in hs] == [[os.getpid(), i, k] for k in range(3)]
            for h in hs:
                pool.release(h)
        done.put(pool._core.cached)
    finally:
        pool.close()


def test_processes_with_magazines_keep_the_counts_true(pool_name):
    """Three processes, each with its own magazine, churn a small pool (stealing from each
    other when its free lists run dry): each reads back its own values, and once they close
    every slot is free with its token."""
    ctx = mp.get_context("fork")
    with ThreadLocalPool.create(pool_name, capacity=12, batch_size=4) as pool:
        done = ctx.Queue()
        children = [ctx.Process(target=_process_churn, args=(pool_name, 200, done)) for _ in range(3)]
        for c in children:
            c.start()
        results = [done.get(timeout=WAIT) for _ in children]
        for c in children:
            c.join(WAIT)
        assert [c.exitcode for c in children] == [0, 0, 0] and len(results) == 3
        assert len(pool) == 0 and pool._core.semaphore_value == 12
        assert pool.statistics().total_allocations == 3 * 200 * 3


HOLD = """
import sys, fastalloc_shm
p = fastalloc_shm.attach(sys.argv[1])
h = p.allocate("child")
p.release(h)
p.close()
"""


def test_a_release_past_twice_the_batch_never_waits_for_a_held_lock(pool_name, tmp_path):
    """With another process stopped holding the lock, releases past twice the batch succeed at
    once (the drain is skipped: the lock is busy) and the magazine holds them; once the holder
    goes on, the next release drains it back to the batch."""
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=2, lock_timeout=30) as pool:
        handles = [pool.allocate(i) for i in range(12)]
        assert pool._core.cached == 0
        marker = tmp_path / "marker"
        env = dict(os.environ, FASTALLOC_FAULT="lock.acquired:stop", FASTALLOC_FAULT_FILE=str(marker))
        # The stop fires at the child's first lock acquisition: its attach takes none, its allocate's refill does.
        child = subprocess.Popen([sys.executable, "-c", HOLD, pool_name], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + WAIT
            while not (marker.exists() and f"{child.pid} lock.acquired" in marker.read_text()):
                assert child.poll() is None, child.stderr.read()
                assert time.monotonic() < deadline, "the child never took the lock"
                time.sleep(0.005)
            while psutil.Process(child.pid).status() != psutil.STATUS_STOPPED:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            started = time.monotonic()
            for h in handles[:10]:
                pool.release(h)
            assert time.monotonic() - started < 2, "a release waited for the held lock"
            assert pool._core.cached == 10, "the drain was skipped, the magazine holds every release"
        finally:
            os.kill(child.pid, signal.SIGCONT)
            out, err = child.communicate(timeout=WAIT)
        assert child.returncode == 0, err
        pool.release(handles[10])
        assert pool._core.cached == 2, "the next release drained back to the batch"
        pool.release(handles[11])
        assert_counts_true(pool, 0)


def test_a_drain_skips_a_slot_no_longer_cached_by_this_process(pool_name):
    """A magazine slot that is no longer CACHED by this process (a repair gave it away; forged
    here as another owner's ALLOCATED slot) is not pushed to the free lists by the drain at
    close(): it stays as it is and off the free list, while the other cached slots go back."""
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=4) as pool:
        other = attach(pool_name)
        other.release(other.allocate("x"))
        assert other._core.cached == 4
        victim = max(row_index for row_index, row in enumerate(pool._core.slot_states()[0]["slots"])
                     if row[1] == L.CACHED)
        mm = pool._segment.mm
        gen, word, length, seq = struct.unpack_from("<4I", mm, meta_at(victim))
        forged_word = (L.ALLOCATED << L.STATE_SHIFT) | (pool._core.entry << L.INCARNATION_BITS)
        struct.pack_into("<4I", mm, meta_at(victim), gen & L.GENERATION_MASK, forged_word, length, seq)
        other.close()
        states = pool._core.slot_states()[0]
        assert states["slots"][victim][1] == L.ALLOCATED
        assert victim not in states["free_list"]
        assert sum(row[1] == L.CACHED for row in states["slots"]) == 0
        assert len(states["free_list"]) == 3, "the three other cached slots went back"
        assert pool._core.semaphore_value == 7, "a token for each free slot, none for the skipped one"


def test_a_full_threadlocal_pool_without_timeout_is_exhausted_with_its_magazine_empty(pool_name):
    """Every slot held: allocate() refills nothing and raises PoolExhausted at once, counting
    one failure; the magazine stays empty."""
    with ThreadLocalPool.create(pool_name, capacity=4, batch_size=4) as pool:
        held = [pool.allocate(i) for i in range(4)]
        with pytest.raises(PoolExhausted):
            pool.allocate("no room")
        assert pool._core.cached == 0 and pool.statistics().allocation_failures == 1
        pool.release_many(held)
        assert_counts_true(pool, 0)

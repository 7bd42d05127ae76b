"""Unit coverage, round 2: magazines.c's release of a slot another process is setting (issue 22, item 7).

Pinned (magazine_release): a ThreadLocalPool release that finds the slot held by
a set() in another process (SETTING, the lock held by the setter) does not put
it in the magazine: it waits for the lock, then frees the slot straight to the
free lists (its token posted, the magazine unchanged, the handle stale). A
wait that runs out is a LockTimeout that leaves the handle live. A setter that
died mid-write is repaired by the release's lock; the torn value is then freed
like any. And allocate_many, finding the free lists short while this process's
magazine holds slots, drains the magazine and takes them (slots.c take_many).
"""

from __future__ import annotations

import threading
import time

import pytest

from fastalloc_shm import LockTimeout, StaleHandle, ThreadLocalPool
from fastalloc_shm import _layout as L

from .test_unit_lock import Holder, word

SETTER = """
import sys, fastalloc_shm
p = fastalloc_shm.attach(sys.argv[1])
p.set({handle}, "x" * 200)  # set.writing stops or kills it here: the slot SETTING, the lock held
p.close()
"""


def state_of(pool, handle: int) -> int:
    return pool._core.slot_states()[0]["slots"][handle & 0xFFFFFFFF][1]


def test_a_release_waits_for_a_setter_in_another_process_then_frees_the_slot(tmp_path, pool_name):
    """The setter is stopped mid-write; our release waits on the lock, the setter is resumed 0.3 s
    later and finishes; the release then frees the slot to the free lists (not the magazine): the
    token is posted, the handle is stale, the setter exited cleanly."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=2, lock_timeout=20) as pool:
        h = pool.allocate("mine")
        cached, tokens = pool._core.cached, pool._core.semaphore_value
        setter = Holder(tmp_path, pool_name, "stop", script=SETTER.format(handle=h), point="set.writing")
        try:
            assert state_of(pool, h) == L.SETTING
            timer = threading.Timer(0.3, setter.resume)
            timer.start()
            started = time.monotonic()
            pool.release(h)
            timer.join()
            assert time.monotonic() - started >= 0.25, "the release did not wait for the setter"
            setter.proc.communicate(timeout=30)
            assert setter.proc.returncode == 0
        finally:
            setter.kill()
        assert state_of(pool, h) == L.FREE
        assert h & 0xFFFFFFFF in pool._core.slot_states()[0]["free_list"], "freed but not on the free list"
        assert pool._core.cached == cached, "a slot a setter held went into the magazine"
        assert pool._core.semaphore_value == tokens + 1
        with pytest.raises(StaleHandle):
            pool.get(h)
        assert len(pool) == 0


def test_a_release_that_cannot_get_the_setters_lock_times_out_and_keeps_the_handle(tmp_path, pool_name):
    """With the setter stopped, the release's wait runs out: LockTimeout naming the setter, the slot
    still the setter's to finish; once it has, the value is the setter's and the release works."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=2, lock_timeout=0.2) as pool:
        h = pool.allocate("mine")
        setter = Holder(tmp_path, pool_name, "stop", script=SETTER.format(handle=h), point="set.writing")
        try:
            with pytest.raises(LockTimeout, match=f"held by pid {setter.pid} "):
                pool.release(h)
            assert state_of(pool, h) == L.SETTING
            setter.resume()
            setter.proc.communicate(timeout=30)
            assert setter.proc.returncode == 0
        finally:
            setter.kill()
        assert pool.get(h) == "x" * 200
        pool.release(h)
        assert len(pool) == 0


def test_a_release_after_a_setter_died_mid_write_repairs_and_frees_the_slot(tmp_path, pool_name):
    """The setter is killed mid-write with the lock: our release finds the slot busy, its lock gets
    EOWNERDEAD and repairs (the value torn), and the release frees the slot: counted once, stale after."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=2, lock_timeout=5) as pool:
        h = pool.allocate("mine")
        Holder(tmp_path, pool_name, "kill", script=SETTER.format(handle=h), point="set.writing")
        recoveries = word(pool, L.HDR_RECOVERIES)
        pool.release(h)
        assert word(pool, L.HDR_RECOVERIES) == recoveries + 1
        assert state_of(pool, h) == L.FREE
        with pytest.raises(StaleHandle):
            pool.get(h)
        assert len(pool) == 0
        pool.recover()
        assert pool._core.semaphore_value + pool._core.cached == 16


def test_allocate_many_takes_from_its_own_magazine_when_the_free_lists_run_short(pool_name):
    """capacity 8, batch 4: one allocate caches 3 more slots; allocate_many of 7 finds 4 on the free
    lists, drains its own magazine and takes all 7, each with its value; the pool is then full."""
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=4) as pool:
        first = pool.allocate("first")
        assert pool._core.cached == 3 and pool._core.semaphore_value == 4
        many = pool.allocate_many([f"v{i}" for i in range(7)])
        assert [pool.get(h) for h in many] == [f"v{i}" for i in range(7)]
        assert len(set(many) | {first}) == 8 and len(pool) == 8
        assert pool._core.cached == 0 and pool._core.semaphore_value == 0
        for h in [first, *many]:
            pool.release(h)
        assert len(pool) == 0


def test_two_releases_waiting_on_a_setter_free_the_slot_once(tmp_path, pool_name):
    """Two threads release the same handle while another process's set() holds it: both wait on
    the lock; when the setter finishes exactly one release frees the slot and the other is
    StaleHandle (its claim after the wait fails), the slot on the free list once."""
    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=2, lock_timeout=20) as pool:
        h = pool.allocate("mine")
        tokens = pool._core.semaphore_value
        setter = Holder(tmp_path, pool_name, "stop", script=SETTER.format(handle=h), point="set.writing")
        outcomes: list = []

        def release() -> None:
            try:
                pool.release(h)
                outcomes.append("freed")
            except StaleHandle:
                outcomes.append("stale")
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcomes.append(repr(exc))

        threads = [threading.Thread(target=release) for _ in range(2)]
        try:
            for t in threads:
                t.start()
            time.sleep(0.5)  # both threads asleep on the lock (each wait is a timed lock, the GIL released)
            setter.resume()
            for t in threads:
                t.join(30)
            setter.proc.communicate(timeout=30)
        finally:
            setter.kill()
        assert sorted(outcomes) == ["freed", "stale"]
        free_list = pool._core.slot_states()[0]["free_list"]
        assert free_list.count(h & 0xFFFFFFFF) == 1
        assert pool._core.semaphore_value == tokens + 1 and len(pool) == 0

"""The named semaphore counts free slots: derived state, which a crash may skew and which heals.

White-box where it must be: the count itself is read through the core (`semaphore_value`)."""

import os
import subprocess
import sys
from pathlib import Path

from fastalloc_shm import FixedPool, ThreadLocalPool

ROOT = Path(__file__).resolve().parent.parent


def _die_holding_a_token(name: str, cls: str = "FixedPool") -> None:
    code = f"from fastalloc_shm import {cls}\np = {cls}.attach({name!r})\np.allocate('never stored')"
    env = dict(os.environ, FASTALLOC_FAULT="alloc.token:kill")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=60)
    assert result.returncode == -9, "the child should have died at alloc.token"


def test_the_count_is_the_number_of_free_slots(pool_name):
    with FixedPool.create(pool_name, capacity=6) as pool:
        assert pool._core.semaphore_value == 6
        handles = pool.allocate_many(range(4))
        assert pool._core.semaphore_value == 2
        pool.release(handles.pop())
        assert pool._core.semaphore_value == 3
        pool.release_many(handles)
        assert pool._core.semaphore_value == 6


def test_a_token_lost_to_a_crash_costs_no_slot_and_recovery_restores_the_count(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        _die_holding_a_token(pool_name)
        assert pool._core.semaphore_value == 3  # the dead process took one and never popped
        handles = [pool.allocate(n) for n in range(4)]  # the free list is the truth: all four are there
        assert [pool.get(h) for h in handles] == [0, 1, 2, 3]
        pool.release_many(handles)
        _die_holding_a_token(pool_name)
        assert pool._core.semaphore_value == 3
        report = pool.recover()
        assert not report.repaired  # no slot needed repair: only the count, which is derived
        assert pool._core.semaphore_value == 4


def test_magazines_hold_their_tokens(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=8) as pool:
        h = pool.allocate("first")
        assert pool.cached() == 7
        assert pool._core.semaphore_value == 64 - 8  # the refill took a token for every slot it cached
        pool.release(h)
        pool.close()  # the magazine drains: its tokens come back
        other = ThreadLocalPool.attach(pool_name)
        assert other._core.semaphore_value == 64
        other.close()

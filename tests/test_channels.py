"""Channels: FIFOs of a pool's slots between processes (DESIGN "Channels"; issue 19).

Real processes only. What is pinned: FIFO order, each item to exactly one
consumer, queue.Queue's wait semantics, handles that change owner, a dead
consumer's item put back at the head (at-least-once), asyncio without a thread
per task, and the limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fastalloc_shm import (
    ChannelEmpty,
    ConfigError,
    FastallocError,
    FixedPool,
    GrowingPool,
    PoolExhausted,
    StaleHandle,
    ThreadLocalPool,
    attach,
)
from fastalloc_shm import _layout as L

from . import channel_soak
from .invariants import assert_sound

ROOT = Path(__file__).resolve().parent.parent
KINDS = [FixedPool, GrowingPool, ThreadLocalPool]


def child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.channel_child", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_items_come_out_in_the_order_they_went_in(pool_name, kind):
    with kind.create(pool_name, capacity=16) as pool:
        todo = pool.channel("todo")
        values = [{"id": 1}, "two", b"three", 4, [5], None]
        for v in values:
            todo.put(v)
        assert len(todo) == len(values) and len(pool) == len(values)  # queued items hold their slots
        assert [todo.get() for _ in values] == values
        assert len(todo) == 0 and len(pool) == 0
        stats = todo.statistics()
        assert (stats["puts"], stats["gets"], stats["length"]) == (6, 6, 0)


def test_a_channel_is_found_by_name_from_another_attachment(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        pool.channel("jobs").put("hello")
        other = attach(pool_name)
        try:
            assert other.channel("jobs").get(timeout=1) == "hello"
            assert other.channel("jobs").name == "jobs"
        finally:
            other.close()


def test_get_waits_as_queue_queue_does(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        todo = pool.channel("todo")
        with pytest.raises(ChannelEmpty):
            todo.get(timeout=0)
        started = time.monotonic()
        with pytest.raises(queue.Empty):  # ChannelEmpty is a queue.Empty too
            todo.get(timeout=0.2)
        assert 0.18 < time.monotonic() - started < 2
        threading.Timer(0.1, todo.put, args=("late",)).start()
        started = time.monotonic()
        assert todo.get() == "late"  # timeout=None: as long as it takes
        assert time.monotonic() - started < 2


def test_put_waits_for_a_slot_and_raises_only_when_its_timeout_runs_out(pool_name):
    with FixedPool.create(pool_name, capacity=2) as pool:
        todo = pool.channel("todo")
        todo.put(1)
        todo.put(2)
        with pytest.raises(PoolExhausted):
            todo.put(3, timeout=0)
        threading.Timer(0.1, todo.get).start()
        todo.put(3, timeout=5)  # a get frees a slot
        assert [todo.get(), todo.get()] == [2, 3]


def test_put_handle_moves_the_slot_and_makes_the_old_handle_stale(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        todo = pool.channel("todo")
        h = pool.allocate({"big": "payload"})
        todo.put_handle(h)
        with pytest.raises(StaleHandle):
            pool.get(h)
        with pytest.raises(StaleHandle):
            pool.release(h)
        taken = todo.get_handle(timeout=1)
        assert taken != h and pool.get(taken) == {"big": "payload"}
        assert len(pool) == 1
        pool.set(taken, "changed")  # the consumer's to use until it releases it
        todo.put_handle(taken)  # or puts it on
        assert todo.get() == "changed"
        assert len(pool) == 0


def test_every_taken_item_reads_back_whatever_its_place_in_the_list(pool_name):
    """A queued slot's sequence word is the channel's link; a taken one must read as a value again."""
    with FixedPool.create(pool_name, capacity=16) as pool:
        todo = pool.channel("todo")
        todo.put_many([{"n": n} for n in range(10)])
        handles = [todo.get_handle(timeout=1) for _ in range(10)]
        assert [pool.get(h) for h in handles] == [{"n": n} for n in range(10)]
        pool.release_many(handles)


def test_many_items_under_one_lock_acquisition(pool_name):
    with FixedPool.create(pool_name, capacity=64) as pool:
        todo = pool.channel("todo")
        before = pool.statistics().lock_acquisitions
        todo.put_many(range(50))
        assert todo.get_many(64) == list(range(50))
        assert pool.statistics().lock_acquisitions - before == 2
        with pytest.raises(PoolExhausted):
            todo.put_many(range(65), timeout=0)  # all or nothing
        assert len(todo) == 0 and len(pool) == 0


def test_each_item_goes_to_exactly_one_of_several_consumer_processes(pool_name):
    n = 2000
    with FixedPool.create(pool_name, capacity=64) as pool:
        consumers = [child(pool_name, "work", "consume", str(n // 2)) for _ in range(2)]
        producer = child(pool_name, "work", "produce", str(n))
        assert producer.wait(60) == 0, producer.stderr.read()
        got = []
        for c in consumers:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
            part = json.loads(out)
            assert [v["n"] for v in part] == sorted(v["n"] for v in part)  # FIFO as each consumer sees it
            got += part
        assert sorted(v["n"] for v in got) == list(range(n))
        assert all(v["check"] == [v["n"]] * 4 for v in got)
        assert len(pool) == 0 and len(pool.channel("work")) == 0


def test_an_item_taken_by_a_consumer_that_dies_goes_back_to_the_head(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        for v in ("first", "second"):
            todo.put(v)
        dying = child(pool_name, "todo", "take_and_die")
        out, err = dying.communicate(timeout=30)
        assert dying.returncode == -9, err
        taken = int(out)
        assert pool.get(taken) == "first" and len(todo) == 1  # the dead consumer's, until recovery
        report = pool.recover()
        assert report.requeued == 1 and report.orphans_kept == 0
        with pytest.raises(StaleHandle):
            pool.get(taken)  # what it held is the channel's again, under a new generation
        assert [todo.get(), todo.get()] == ["first", "second"]  # back at the head
        assert todo.statistics()["requeued"] == 1
        assert len(pool) == 0


def test_a_thousand_asyncio_tasks_wait_without_a_thread_each(pool_name):
    async def main(todo):
        async def produce():
            await asyncio.sleep(0.05)
            for i in range(1000):
                await todo.put_async(i)

        producer = asyncio.create_task(produce())
        got = await asyncio.gather(*(todo.get_async(timeout=30) for _ in range(1000)), return_exceptions=False)
        await producer
        return got, threading.active_count()

    with FixedPool.create(pool_name, capacity=16) as pool:
        threads_before = threading.active_count()
        got, threads_during = asyncio.run(main(pool.channel("todo")))
        assert sorted(got) == list(range(1000))
        assert threads_during <= threads_before + 1


def test_a_cancelled_get_async_takes_no_item(pool_name):
    async def main(todo):
        task = asyncio.create_task(todo.get_async())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        todo.put("kept")
        await asyncio.sleep(0.05)
        return await todo.get_async(timeout=1)

    with FixedPool.create(pool_name, capacity=4) as pool:
        assert asyncio.run(main(pool.channel("todo"))) == "kept"


def test_channel_names_are_checked_and_a_pool_has_at_most_64(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        for bad in ("", "a b", "x" * 32):
            with pytest.raises((ConfigError, ValueError)):
                pool.channel(bad)
        for i in range(L.MAX_CHANNELS):
            pool.channel(f"c{i}")
        assert pool.channel("c7").name == "c7"  # opening an existing one needs no entry
        with pytest.raises(FastallocError, match="64 channels"):
            pool.channel("one-too-many")


def test_a_closed_pools_channel_says_so(pool_name):
    pool = FixedPool.create(pool_name, capacity=4)
    todo = pool.channel("todo")
    pool.unlink()
    with pytest.raises(FastallocError, match="closed"):
        todo.put(1)


# Each channel fault point, killed there: the crash matrix counts these as its cases.
CHANNEL_CRASH_CASES = [("put", "channel.queued"), ("get_handle", "channel.popped"), ("requeue", "channel.requeued")]
CHANNEL_CRASH_POINTS = {point for _op, point in CHANNEL_CRASH_CASES}


@pytest.mark.parametrize("op, point", CHANNEL_CRASH_CASES)
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_kill_inside_a_channel_operation_loses_no_item_and_queues_none_twice(pool_name, tmp_path, kind, op, point):
    bounded = {"max_capacity": 16} if kind is GrowingPool else {}  # the audit fills a pool to its bound
    with kind.create(pool_name, capacity=8, lock_timeout=0.05, **bounded) as pool:
        todo = pool.channel("m")
        todo.put("before")
        if op == "requeue":  # "before" is held by a consumer that died; the child's recover() puts it back
            dying = child(pool_name, "m", "take_and_die")
            dying.communicate(timeout=30)
            assert dying.returncode == -9
        marker = tmp_path / "marker"
        env = dict(os.environ, FASTALLOC_FAULT=f"{point}:kill", FASTALLOC_FAULT_FILE=str(marker))
        args = {"put": ["produce", "1"], "get_handle": ["take_and_die"], "requeue": ["recover"]}[op]
        proc = subprocess.Popen([sys.executable, "-m", "tests.channel_child", pool_name, "m", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -9, err
        assert marker.read_text().splitlines() == [f"{proc.pid} {point} 1"], "the child did not die where it was meant to"

        repairs = pool.statistics().recoveries
        todo.put("after")  # the next locker: the child died holding the lock
        assert pool.statistics().recoveries == repairs + 1
        report = pool.recover()
        assert report.requeued == 0 and report.half_written_freed == 0  # the repair already did it all
        items = []
        while True:
            try:
                items.append(todo.get(timeout=0))
            except ChannelEmpty:
                break
        expected = {"put": ["before", {"n": 0, "check": [0, 0, 0, 0]}, "after"],
                    "get_handle": ["before", "after"], "requeue": ["before", "after"]}[op]
        assert items == expected  # none lost, none twice
        assert len(pool) == 0
        assert_sound(pool, {})


def test_consumers_killed_at_random_lose_no_item(pool_name):
    """A small crash soak (tests/channel_soak.py; issue 19's full count is its command line): 1 producer,
    3 consumers, 25 of them killed at random while items flow through get_handle/release; recover() (as
    the daemon runs it) puts their items back: every item processed at least once, every value reads
    back right, nothing left queued or in use, the pool sound."""
    figures = channel_soak.run(pool_name, items=1500, kills=25, seconds=120)
    assert not channel_soak.anomalies(figures), figures
    assert figures["kills"] == 25 and figures["processed"] >= 1500
    assert figures["requeued"] >= 25 // 2, figures  # most kills landed while an item was held

"""RedisPool channels (issue 19, deliver 5): the shared-memory Channel's API and semantics on Redis and Redis
Cluster. Real redis-server processes, a real 3-node cluster, real consumer processes (this module run as a
program is the child: `python -m tests.test_redis_channels URL CLUSTER POOL CHANNEL OP [ARG]`).

What is pinned, as tests/test_channels.py pins it for shared memory: FIFO order, waits as queue.Queue's, put
waiting for a free slot, put_handle making the old handle stale, each item to exactly one of several consumer
processes, 1,000 asyncio tasks without a thread each, a cancelled get_async taking nothing. And Redis's own:
a consumer killed holding an item gets it requeued at the head once its lease expires (by recover() or by
another client's lease thread), a retry after a lost reply takes effect once, waits wake on a put without
polling, the keys share the pool's hash tag on a cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from fastalloc_shm import ChannelEmpty, ConfigError, FastallocError, PoolExhausted, RedisPool, StaleHandle
from fastalloc_shm.handle import unpack
from fastalloc_shm.redis_pool import MAX_BATCH

from .redis_servers import faulty_link, redis_cluster, redis_server

ROOT = Path(__file__).resolve().parent.parent
SLACK = 1.5  # scheduling on a loaded machine


@pytest.fixture(scope="module")
def cluster_url():
    with redis_cluster(3) as nodes:
        yield nodes[0].url


@pytest.fixture(params=["server", "cluster"])
def where(request, redis_url):
    """(url, cluster) of the run's server, or of the module's 3-node cluster."""
    if request.param == "server":
        return redis_url, False
    return request.getfixturevalue("cluster_url"), True


def create(where, name, **kwargs) -> RedisPool:
    url, cluster = where
    return RedisPool.create(name, url=url, cluster=cluster, **kwargs)


def child(where, name: str, channel: str, *args: str) -> subprocess.Popen:
    url, cluster = where
    return subprocess.Popen([sys.executable, "-m", "tests.test_redis_channels", url, str(int(cluster)), name, channel,
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def evalsha_calls(raw: redis.Redis) -> int:
    return raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_items_come_out_in_the_order_they_went_in(where, pool_name):
    with create(where, pool_name, capacity=16) as pool:
        todo = pool.channel("todo")
        values = [{"id": 1}, "two", b"three", 4, [5], None]
        for v in values:
            todo.put(v)
        assert len(todo) == len(values) and len(pool) == len(values)  # queued items hold their slots
        assert [todo.get() for _ in values] == values
        assert len(todo) == 0 and len(pool) == 0
        stats = todo.statistics()
        assert (stats["puts"], stats["gets"], stats["length"]) == (6, 6, 0)
        todo.put_many(range(10))
        assert todo.get_many(4) == [0, 1, 2, 3] and todo.get_many(64) == [4, 5, 6, 7, 8, 9]


def test_a_channel_is_found_by_name_from_another_attachment(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool:
        pool.channel("jobs").put("hello")
        pool.channel("other").put("not this one")
        with RedisPool.attach(pool_name, url=redis_url) as other:
            assert other.channel("jobs").get(timeout=1) == "hello"
            assert other.channel("jobs").name == "jobs"
        assert list(pool.statistics().channels) == ["jobs", "other"]
        assert pool.statistics().channels["other"].length == 1
        assert pool.channel("other").get(timeout=0) == "not this one"


def test_get_waits_as_queue_queue_does(where, pool_name):
    with create(where, pool_name, capacity=4) as pool:
        todo = pool.channel("todo")
        with pytest.raises(ChannelEmpty):
            todo.get(timeout=0)
        started = time.monotonic()
        with pytest.raises(queue.Empty):  # ChannelEmpty is a queue.Empty too
            todo.get(timeout=0.3)
        assert 0.28 < time.monotonic() - started < 0.3 + SLACK
        threading.Timer(0.2, todo.put, args=("late",)).start()
        started = time.monotonic()
        assert todo.get() == "late"  # timeout=None: as long as it takes
        assert time.monotonic() - started < 0.2 + SLACK


def test_a_waiting_get_is_woken_by_a_put_without_polling(redis_url, pool_name):
    """The waiter blocks in BLPOP on the channel's wake list: a put wakes it at once (not at the end of
    its slice), and a second of waiting costs a few scripts, not a poll every few milliseconds."""
    raw = redis.Redis.from_url(redis_url)
    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        todo = pool.channel("todo")
        got = []
        consumer = threading.Thread(target=lambda: got.append((todo.get(timeout=30), time.monotonic())))
        before = evalsha_calls(raw)
        consumer.start()
        time.sleep(1.0)
        assert todo.statistics()["waiting"] == 1
        idle = evalsha_calls(raw) - before - 1  # less the statistics call
        assert idle <= 3, f"{idle} scripts in a second of waiting: it polls"
        put_at = time.monotonic()
        todo.put("wake up")
        consumer.join(10)
        assert got and got[0][0] == "wake up"
        assert got[0][1] - put_at < 0.3, "the put did not wake the waiter: it waited out its slice"
        assert todo.statistics()["waiting"] == 0
    raw.close()


def test_put_waits_for_a_slot_and_raises_only_when_its_timeout_runs_out(where, pool_name):
    with create(where, pool_name, capacity=2) as pool:
        todo = pool.channel("todo")
        todo.put(1)
        todo.put(2)
        with pytest.raises(PoolExhausted):
            todo.put(3, timeout=0)
        started = time.monotonic()
        with pytest.raises(PoolExhausted):
            todo.put(3, timeout=0.2)
        assert 0.18 < time.monotonic() - started < 0.2 + SLACK
        threading.Timer(0.1, todo.get).start()
        todo.put(3, timeout=5)  # a get frees a slot
        assert [todo.get(), todo.get()] == [2, 3]


def test_put_many_is_all_or_nothing_and_each_batch_one_round_trip(redis_url, pool_name):
    raw = redis.Redis.from_url(redis_url)
    with RedisPool.create(pool_name, url=redis_url, capacity=64) as pool:
        todo = pool.channel("todo")
        before = evalsha_calls(raw)
        todo.put_many(range(50))
        assert todo.get_many(64) == list(range(50))
        assert evalsha_calls(raw) - before == 2
        with pytest.raises(PoolExhausted):
            todo.put_many(range(65), timeout=0)  # all or nothing
        assert len(todo) == 0 and len(pool) == 0
    raw.close()


def test_a_batch_costs_a_fixed_number_of_redis_commands_whatever_its_size(redis_url, pool_name):
    """A put_many is one RPUSH of the payloads and a get_many one LPOP (besides a fixed handful of calls
    for the request record, counters and wake-ups): nothing per item, as with a plain Redis list."""
    raw = redis.Redis.from_url(redis_url)
    with RedisPool.create(pool_name, url=redis_url, capacity=MAX_BATCH, lease_ttl=60) as pool:
        todo = pool.channel("todo")

        def commands(n: int) -> int:
            raw.config_resetstat()
            todo.put_many(range(n))
            assert todo.get_many(n) == list(range(n))
            stats = raw.info("commandstats")
            return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config"))

        commands(1)  # warm-up: scripts loaded, the server's identity checked
        assert commands(1) == commands(MAX_BATCH) <= 20
    raw.close()


def test_a_queued_item_counts_as_a_slot_in_use_and_holds_no_index(redis_url, pool_name):
    """Queued items are payloads in the channel's list: no slot index, owner or data entry is written for
    them, yet the pool counts them in use, so an allocation cannot take the room they hold."""
    raw = redis.Redis.from_url(redis_url)
    tag = f"{{fastalloc.{pool_name}}}"
    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        todo = pool.channel("todo")
        todo.put_many(["a", "b", "c"])
        assert raw.lrange(f"{tag}:chan:0", 0, -1) == [pool._pack(v) for v in "abc"]
        assert raw.exists(f"{tag}:owner", f"{tag}:data", f"{tag}:free") == 0
        assert len(pool) == 3
        mine = pool.allocate("mine")  # the fourth slot
        with pytest.raises(PoolExhausted):
            pool.allocate("one too many")
        with pytest.raises(PoolExhausted):
            todo.put("one too many", timeout=0)
        assert todo.get() == "a" and len(pool) == 3
        taken = todo.get_handle(timeout=0)  # an index now, with its payload
        assert pool.get(taken) == "b" and unpack(taken)[0] != unpack(mine)[0]
        assert pool.allocate("room again") and len(pool) == 4
    raw.close()


def test_a_batch_over_max_batch_is_refused_by_put_many_and_capped_by_get_many(redis_url, pool_name):
    """Issue 23, deliver 4: no script moves more than MAX_BATCH slots. put_many is all or nothing in one
    script, so a bigger batch is refused before anything is sent; get_many takes up to max_items, so it
    takes at most MAX_BATCH in its one script."""
    raw = redis.Redis.from_url(redis_url)
    with RedisPool.create(pool_name, url=redis_url, capacity=3 * MAX_BATCH, lease_ttl=60) as pool:
        todo = pool.channel("todo")
        before = evalsha_calls(raw)
        with pytest.raises(ValueError, match=f"put_many: {MAX_BATCH + 1} values .* the {MAX_BATCH} a RedisPool"):
            todo.put_many(range(MAX_BATCH + 1))
        assert evalsha_calls(raw) == before and len(todo) == 0 and len(pool) == 0
        todo.put_many(range(MAX_BATCH))
        todo.put_many(range(MAX_BATCH, MAX_BATCH + 10))
        before = evalsha_calls(raw)
        assert todo.get_many(5 * MAX_BATCH) == list(range(MAX_BATCH))
        assert evalsha_calls(raw) - before == 1
        assert todo.get_many(5 * MAX_BATCH) == list(range(MAX_BATCH, MAX_BATCH + 10))
        assert len(pool) == 0
    raw.close()


def test_items_queued_before_the_server_lost_writes_are_gone_and_not_counted(pool_name):
    """After a restart from an older snapshot the pool moves to a new epoch with no slot in use: the
    channel's items of the old epoch go too (none comes out twice, none counts against the capacity)."""
    with redis_server() as server:
        raw = redis.Redis.from_url(server.url)
        with RedisPool.create(pool_name, url=server.url, capacity=4, lease_ttl=60) as pool:
            todo = pool.channel("todo")
            todo.put_many(["old 1", "old 2", "old 3"])
            raw.save()
            todo.put("lost")
            raw.close()
            server.restart()
            assert len(todo) == 0 and len(pool) == 0
            with pytest.raises(ChannelEmpty):
                todo.get(timeout=0)
            todo.put_many(["new 1", "new 2", "new 3", "new 4"])  # the whole capacity is free again
            assert todo.get_many(8) == ["new 1", "new 2", "new 3", "new 4"] and len(pool) == 0


def test_put_handle_moves_the_slot_and_makes_the_old_handle_stale(where, pool_name):
    with create(where, pool_name, capacity=4) as pool:
        todo = pool.channel("todo")
        h = pool.allocate({"big": "payload"})
        todo.put_handle(h)
        with pytest.raises(StaleHandle):
            pool.get(h)
        with pytest.raises(StaleHandle):
            pool.release(h)
        with pytest.raises(StaleHandle):
            todo.put_handle(h)  # queued once
        taken = todo.get_handle(timeout=1)
        assert taken != h and pool.get(taken) == {"big": "payload"}
        assert len(pool) == 1 and len(todo) == 0
        pool.set(taken, "changed")  # the consumer's to use until it releases it
        todo.put_handle(taken)  # or puts it on
        assert todo.get() == "changed"
        assert len(pool) == 0


def test_each_item_goes_to_exactly_one_of_several_consumer_processes(redis_url, pool_name):
    n = 600
    where = (redis_url, False)
    with RedisPool.create(pool_name, url=redis_url, capacity=64) as pool:
        pool.channel("work")
        consumers = [child(where, pool_name, "work", "consume", str(n // 2)) for _ in range(2)]
        producer = child(where, pool_name, "work", "produce", str(n))
        assert producer.wait(120) == 0, producer.stderr.read()
        got = []
        for c in consumers:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err
            part = json.loads(out)
            assert [v["n"] for v in part] == sorted(v["n"] for v in part)  # FIFO as each consumer sees it
            got += part
        assert sorted(v["n"] for v in got) == list(range(n))
        assert all(v["check"] == [v["n"]] * 4 for v in got)
        assert len(pool) == 0 and len(pool.channel("work")) == 0


def test_a_killed_consumers_item_goes_back_to_the_head_once_its_lease_expires(where, pool_name):
    with create(where, pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        for v in ("first", "second"):
            todo.put(v)
        dying = child(where, pool_name, "todo", "take_and_die", "2.0")  # its lease_ttl
        out, err = dying.communicate(timeout=60)
        assert dying.returncode == -signal.SIGKILL, err
        taken = int(out)
        assert pool.get(taken) == "first" and len(todo) == 1  # the dead consumer's, until its lease expires
        assert pool.recover().requeued == 0  # its lease still runs: it may be alive
        deadline = time.monotonic() + 10
        while (report := pool.recover()).requeued == 0:
            assert time.monotonic() < deadline, "the dead consumer's item was never requeued"
            time.sleep(0.2)
        assert report.requeued == 1 and report.orphans_kept == 0 and len(report.dead_clients) == 1
        with pytest.raises(StaleHandle):
            pool.get(taken)  # what it held is the channel's again, under a new generation
        assert [todo.get(timeout=0), todo.get(timeout=0)] == ["first", "second"]  # back at the head
        assert todo.statistics()["requeued"] == 1
        assert len(pool) == 0


def test_another_clients_lease_thread_requeues_a_dead_consumers_item_and_wakes_a_waiter(redis_url, pool_name):
    """Nobody calls recover(): the lease thread of a live client puts the item back (as it prunes dead
    clients), and the consumer waiting on the channel is woken by that requeue."""
    where = (redis_url, False)
    with RedisPool.create(pool_name, url=redis_url, capacity=8, lease_ttl=0.3) as pool:
        pool.release(pool.allocate("register"))  # this client's lease thread runs from now on
        todo = pool.channel("todo")
        todo.put("only")
        dying = child(where, pool_name, "todo", "take_and_die", "0.3")
        out, err = dying.communicate(timeout=60)
        assert dying.returncode == -signal.SIGKILL, err
        assert len(todo) == 0
        assert todo.get(timeout=15) == "only"
        assert todo.statistics()["requeued"] == 1 and len(pool) == 0


def test_a_consumer_that_released_its_item_leaves_nothing_to_requeue(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool:
        todo = pool.channel("todo")
        todo.put_many(["a", "b"])
        dying = child((redis_url, False), pool_name, "todo", "take_release_and_die", "0.3")
        out, err = dying.communicate(timeout=60)
        assert dying.returncode == -signal.SIGKILL, err
        time.sleep(0.8)  # its lease expires
        report = pool.recover()
        assert report.requeued == 0 and len(report.dead_clients) == 1
        assert todo.get(timeout=0) == "b" and len(pool) == 0


@pytest.fixture
def server():
    with redis_server() as server:
        yield server


def test_a_retry_after_a_lost_reply_takes_effect_once(server, pool_name):
    with faulty_link(server) as link:
        url = link.url("?socket_timeout=0.5")
        with RedisPool.create(pool_name, url=url, capacity=8, lease_ttl=60) as pool:
            todo = pool.channel("todo")
            todo.put("warm-up")
            assert todo.get() == "warm-up"  # scripts loaded, one pooled connection
            link.cut_next_reply()  # the script runs, its reply never arrives, the client sends it again
            todo.put("once")
            assert len(todo) == 1 and todo.statistics()["puts"] == 2
            todo.put("second")
            link.cut_next_reply()
            assert todo.get() == "once"  # ran, reply lost, sent again: answered from its record
            assert len(todo) == 1 and todo.statistics()["gets"] == 2
            link.cut_next_reply()
            handle = todo.get_handle(timeout=0)
            assert pool.get(handle) == "second" and len(todo) == 0 and len(pool) == 1
            link.cut_next_reply()
            todo.put_handle(handle)
            assert len(todo) == 1 and todo.get_many(8) == ["second"]
            link.cut_next_reply()
            todo.put_many(["x", "y"])
            assert todo.get_many(8) == ["x", "y"] and len(pool) == 0


def test_a_thousand_asyncio_tasks_wait_without_a_thread_each(redis_url, pool_name):
    async def main(todo):
        async def produce():
            await asyncio.sleep(0.05)
            for i in range(1000):
                await todo.put_async(i)

        producer = asyncio.create_task(produce())
        got = await asyncio.gather(*(todo.get_async(timeout=60) for _ in range(1000)))
        await producer
        return got, threading.active_count()

    with RedisPool.create(pool_name, url=redis_url, capacity=64) as pool:
        pool.release(pool.allocate("register"))  # the lease thread is there before counting
        threads_before = threading.active_count()
        got, threads_during = asyncio.run(main(pool.channel("todo")))
        assert sorted(got) == list(range(1000))
        assert threads_during <= threads_before + 1
        assert len(pool) == 0


def test_get_async_wakes_on_a_put_from_another_process_and_times_out_as_asked(redis_url, pool_name):
    async def main(todo):
        with pytest.raises(ChannelEmpty):
            await todo.get_async(timeout=0.2)
        threading.Timer(0.2, lambda: other_channel.put("from elsewhere")).start()
        started = time.monotonic()
        value = await todo.get_handle_async(timeout=10)
        return value, time.monotonic() - started

    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool, \
            RedisPool.attach(pool_name, url=redis_url) as other:
        other_channel = other.channel("todo")
        handle, took = asyncio.run(main(pool.channel("todo")))
        assert pool.get(handle) == "from elsewhere" and took < 0.2 + SLACK
        pool.release(handle)


def test_a_cancelled_get_async_takes_no_item(redis_url, pool_name):
    async def main(todo):
        task = asyncio.create_task(todo.get_async())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        todo.put("kept")
        await asyncio.sleep(0.1)
        return await todo.get_async(timeout=1)

    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        assert asyncio.run(main(pool.channel("todo"))) == "kept"


def test_channel_names_are_checked_and_a_pool_has_at_most_64(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        for bad in ("", "a b", "x" * 32):
            with pytest.raises((ConfigError, ValueError)):
                pool.channel(bad)
        for i in range(64):
            pool.channel(f"c{i}")
        assert pool.channel("c7").name == "c7"  # opening an existing one needs no entry
        with pytest.raises(FastallocError, match="64 channels"):
            pool.channel("one-too-many")
        assert len(pool.statistics().channels) == 64


def test_a_closed_pools_channel_says_so(redis_url, pool_name):
    pool = RedisPool.create(pool_name, url=redis_url, capacity=4)
    todo = pool.channel("todo")
    pool.unlink()
    pool.close()
    with pytest.raises(FastallocError, match="closed"):
        todo.put(1)


def test_unlink_removes_the_channels_keys(redis_url, pool_name):
    raw = redis.Redis.from_url(redis_url)
    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool:
        todo = pool.channel("todo")
        todo.put_many([1, 2])
        todo.get_handle(timeout=0)
        assert raw.exists(f"{{fastalloc.{pool_name}}}:chan:0", f"{{fastalloc.{pool_name}}}:taken") == 2
    assert list(raw.scan_iter(match=f"{{fastalloc.{pool_name}}}*")) == []
    raw.close()


def test_a_pickled_channel_reattaches_by_name_without_the_password(pool_name, monkeypatch):
    with redis_server("--requirepass", "s3cret-pw") as server:
        url = server.url.replace("redis://", "redis://:s3cret-pw@")
        with RedisPool.create(pool_name, url=url, capacity=4) as pool:
            todo = pool.channel("todo")
            todo.put("travels")
            data = pickle.dumps(todo)
            assert b"s3cret-pw" not in data
            monkeypatch.setenv("REDISCLI_AUTH", "s3cret-pw")
            again = pickle.loads(data)
            assert again.name == "todo" and again.get(timeout=1) == "travels"
            again.pool.close()


def test_on_a_cluster_the_channels_keys_share_the_pools_slot(cluster_url, pool_name):
    where = (cluster_url, True)
    with create(where, pool_name, capacity=8, lease_ttl=1.0) as pool:
        todo = pool.channel("todo")
        todo.put_many(["a", "b"])
        handle = todo.get_handle(timeout=0)
        cluster = redis.RedisCluster.from_url(cluster_url)
        keys = [k.decode() for node in cluster.get_primaries()
                for k in cluster.get_redis_connection(node).scan_iter(match=f"{{fastalloc.{pool_name}}}*")]
        slot = cluster.keyslot(f"{{fastalloc.{pool_name}}}:meta")
        assert {f"{{fastalloc.{pool_name}}}:chan:0", f"{{fastalloc.{pool_name}}}:taken"} <= set(keys)
        assert {cluster.keyslot(k) for k in keys} == {slot}
        cluster.close()
        pool.release(handle)
        assert todo.get(timeout=0) == "b" and len(pool) == 0


# -- the child: a consumer or producer in a process of its own ------------------------------------------


def main() -> None:
    url, cluster, name, channel_name, op, *args = sys.argv[1:]
    lease_ttl = float(args[0]) if op.endswith("die") else 10.0
    pool = RedisPool.attach(name, url=url, cluster=cluster == "1", lease_ttl=lease_ttl)
    channel = pool.channel(channel_name)
    if op == "produce":
        for i in range(int(args[0])):
            channel.put({"n": i, "check": [i] * 4}, timeout=60)
    elif op == "consume":
        got = [channel.get(timeout=60) for _ in range(int(args[0]))]
        print(json.dumps(got), flush=True)
    elif op == "take_and_die":
        print(channel.get_handle(timeout=30), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    elif op == "take_release_and_die":
        pool.release(channel.get_handle(timeout=30))
        print(0, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    pool.close()


if __name__ == "__main__":
    main()

"""A server that lost acknowledged writes never makes RedisPool hand out a handle twice (issue 23,
finding 1): a restart from an older RDB snapshot, or a failover to a replica that missed writes, moves
the pool to a new epoch; every handle from before is StaleHandle ("the server lost writes") and none
issued after equals one of them. Real redis-server processes, killed with SIGKILL.
"""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest
import redis

from fastalloc_shm import ConfigError, RedisPool, StaleHandle
from fastalloc_shm._redis_connection import CONNECT_TIMEOUT
from fastalloc_shm.redis_pool import RedisNotDurable

from .redis_servers import faulty_link, redis_server


def meta(client: redis.Redis, name: str, field: str) -> bytes | None:
    return client.hget(f"{{fastalloc.{name}}}:meta", field)


def test_a_restart_from_an_older_snapshot_duplicates_no_handle(pool_name):
    with redis_server() as server:
        raw = redis.Redis.from_url(server.url)
        pool = RedisPool.create(pool_name, url=server.url, capacity=64, lease_ttl=60)
        other = RedisPool.attach(pool_name, url=server.url, lease_ttl=60)
        before = [pool.allocate(["before", i]) for i in range(5)]
        pool.release(before.pop(0))
        raw.save()  # the snapshot the server will come back with
        after = [pool.allocate(["after", i]) for i in range(10)] + [other.allocate(["other", i]) for i in range(5)]
        other.release(after.pop())  # acknowledged writes, all of them lost below
        raw.close()
        server.restart()
        fresh = [other.allocate(["fresh", i]) for i in range(30)]
        held = before + after
        assert not set(held) & set(fresh)
        for handle in held:
            with pytest.raises(StaleHandle, match="lost writes"):
                pool.get(handle)
            with pytest.raises(StaleHandle, match="lost writes"):
                other.release(handle)
        assert [other.get(h) for h in fresh] == [["fresh", i] for i in range(30)]
        assert [pool.get(h) for h in fresh] == [["fresh", i] for i in range(30)]
        assert len(pool) == 30
        pool.release_many(fresh)
        assert len(pool) == 0
        pool.unlink()
        pool.close()
        other.close()


def test_a_restart_that_kept_everything_still_starts_a_new_epoch_and_a_new_client_does_not(pool_name):
    # The server cannot tell what its AOF or snapshot missed: any restart is treated as a loss.
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as server:
        raw = redis.Redis.from_url(server.url)
        with RedisPool.create(pool_name, url=server.url, capacity=8, lease_ttl=60) as pool:
            handle = pool.allocate("kept by the AOF")
            raw.close()
            server.restart()
            with pytest.raises(StaleHandle, match="lost writes"):
                pool.get(handle)
            raw = redis.Redis.from_url(server.url)
            assert int(meta(raw, pool_name, "epoch")) == 1
            # A new client on the same server process: no new epoch.
            other = RedisPool.attach(pool_name, url=server.url)
            h = other.allocate("new")
            assert pool.get(h) == "new" and int(meta(raw, pool_name, "epoch")) == 1
            other.close()
        raw.close()


def test_a_failover_to_a_replica_that_missed_writes_duplicates_no_handle(pool_name):
    with redis_server() as primary, redis_server() as replica, faulty_link(primary) as link:
        raw_primary = redis.Redis.from_url(primary.url)
        raw_replica = redis.Redis.from_url(replica.url)
        raw_replica.replicaof("127.0.0.1", primary.port)
        pool = RedisPool.create(pool_name, url=link.url(), capacity=64, lease_ttl=60)
        early = [pool.allocate(["early", i]) for i in range(5)]
        deadline = time.monotonic() + 10
        while raw_replica.hget(f"{{fastalloc.{pool_name}}}:meta", "hwm") != b"5":
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.02)
        raw_replica.replicaof("NO", "ONE")  # it stops hearing from the primary: it misses what follows
        late = [pool.allocate(["late", i]) for i in range(10)]
        primary.process.kill()  # the primary dies; the replica takes over behind the same address
        link.retarget(replica.port)
        fresh = [pool.allocate(["fresh", i]) for i in range(20)]
        assert not set(early + late) & set(fresh)
        for handle in early + late:
            with pytest.raises(StaleHandle, match="lost writes"):
                pool.get(handle)
        assert [pool.get(h) for h in fresh] == [["fresh", i] for i in range(20)]
        pool.close()
        raw_primary.close()
        raw_replica.close()


# -- durability="replicas:N" / "aof" ------------------------------------------------------------------


def test_replicas_durability_returns_once_a_replica_has_the_write_and_says_so_when_none_confirms(pool_name):
    with redis_server() as primary, redis_server() as replica:
        raw_replica = redis.Redis.from_url(replica.url)
        raw_replica.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 10
        while raw_replica.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never connected"
            time.sleep(0.05)
        url = primary.url + "?socket_timeout=0.5"
        with RedisPool.create(pool_name, url=url, capacity=8, lease_ttl=60, durability="replicas:1") as pool:
            handle = pool.allocate("on two servers")
            # Returned only after the replica had it: it is there now, without waiting.
            assert raw_replica.hget(f"{{fastalloc.{pool_name}}}:meta", "in_use") == b"1"
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(RedisNotDurable, match="1 replicas did not confirm"):
                    pool.allocate("unconfirmed")
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            # The unconfirmed allocation was given up on: its slot is freed, not lost.
            other = pool.allocate("confirmed")
            assert len(pool) == 2 and pool.get(handle) == "on two servers" and pool.get(other) == "confirmed"
            clone = pickle.loads(pickle.dumps(pool))
            assert clone._durability == "replicas:1"
            clone.close()
        raw_replica.close()


def test_an_unconfirmed_write_is_redis_not_durable_at_once_on_the_retry_path_too(pool_name):
    """A script's first call on a server goes the retry path (NOSCRIPT, then load and send again): an
    unconfirmed write there is RedisNotDurable as on the fast path, not retried as if the server were
    down until the call's time is up and then reported as a plain RedisUnavailable."""
    with redis_server() as server:  # no replica: WAIT 1 never confirms
        url = server.url + "?socket_timeout=0.5"
        with RedisPool.create(pool_name, url=url, capacity=4, lease_ttl=60, durability="replicas:1") as pool:
            started = time.monotonic()
            with pytest.raises(RedisNotDurable, match="1 replicas did not confirm it within 0.4 s"):
                pool.allocate("first ALLOCATE this server runs")
            # Two waits of 0.4 s (the first send's, which NOSCRIPT voids, and the retry's), not the retries'
            # whole budget (the call's timeout plus the connect timeout).
            assert time.monotonic() - started < 0.5 + CONNECT_TIMEOUT
            assert len(pool) in (0, 1)  # applied (or freed as given up on): never taken twice


def test_aof_durability_is_refused_clearly_on_a_server_without_waitaof(redis_url, pool_name):
    version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):
        with RedisPool.create(pool_name, url=redis_url, capacity=2, durability="aof") as pool:
            with pytest.raises(RedisNotDurable, match="AOF"):  # the test server runs without an AOF
                pool.allocate(1)
        return
    with pytest.raises(ConfigError, match=r"WAITAOF.*7\.2.*replicas:N"):
        RedisPool.create(pool_name, url=redis_url, capacity=2, durability="aof")
    for wrong in ("replicas", "replicas:0", "replicas:x", "disk"):
        with pytest.raises(ConfigError, match="durability"):
            RedisPool.create(pool_name, url=redis_url, capacity=2, durability=wrong)

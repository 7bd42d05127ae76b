"""RedisPool on a Redis Cluster whose pool slot is being migrated (issue 23, findings 8 and 9): TRYAGAIN,
ASK and MOVED are retried with backoff within the call's timeout, under the same request id, then a
typed error names the slot and the node; a migration that completes meanwhile is followed, and loses
nothing (the pool keeps its epoch and its handles). A real 3-node cluster; the slot is moved by hand
with CLUSTER SETSLOT and MIGRATE, as `redis-cli --cluster reshard` does.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.cluster import RedisCluster

from fastalloc_shm import RedisPool
from fastalloc_shm._redis_connection import CONNECT_TIMEOUT
from fastalloc_shm.redis_pool import RedisResharding

from .redis_servers import HOST, redis_cluster

TIMEOUT = 0.5
SLACK = 1.0


@pytest.fixture(scope="module")
def cluster():
    with redis_cluster(3) as nodes:
        # A node that started within 2 s of a pool's last check counts as restarted (uptime is whole
        # seconds); these tests move a pool to a node that has long been running.
        time.sleep(max(0.0, 3.0 - min(redis.Redis(HOST, n.port).info("server")["uptime_in_seconds"] for n in nodes)))
        yield nodes


class Slot:
    """The pool's cluster slot, its node and another node, as raw clients."""

    def __init__(self, nodes, name: str) -> None:
        client = RedisCluster(HOST, nodes[0].port)
        self.slot = client.keyslot(f"{{fastalloc.{name}}}:meta")
        owner = client.get_node_from_key(f"{{fastalloc.{name}}}:meta")
        client.close()
        self.source = redis.Redis(HOST, owner.port)
        self.source_port = owner.port
        self.dest_port = next(n.port for n in nodes if n.port != owner.port)
        self.dest = redis.Redis(HOST, self.dest_port)
        self.others = [redis.Redis(HOST, n.port) for n in nodes]
        self.source_id = self.source.execute_command("CLUSTER", "MYID").decode()
        self.dest_id = self.dest.execute_command("CLUSTER", "MYID").decode()

    def start(self) -> None:
        """Mark the slot IMPORTING on the destination and MIGRATING on the source; no key moves yet."""
        self.dest.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        self.source.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.dest_id)

    def finish(self) -> None:
        """Move every key of the slot and give the slot to the destination."""
        while keys := self.source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 1000):
            self.source.execute_command("MIGRATE", HOST, self.dest_port, "", 0, 5000, "KEYS", *keys)
        for client in (self.dest, self.source, *self.others):
            client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.dest_id)

    def abort(self) -> None:
        """Call the migration off: the slot stays with the source."""
        for client in (self.dest, self.source):
            client.execute_command("CLUSTER", "SETSLOT", self.slot, "STABLE")

    def close(self) -> None:
        for client in (self.source, self.dest, *self.others):
            client.close()


def test_a_migrating_slot_is_retried_within_the_timeout_then_named_with_its_node(cluster, pool_name):
    url = cluster[0].url + f"?socket_timeout={TIMEOUT}"
    with RedisPool.create(pool_name, url=url, cluster=True, capacity=8, lease_ttl=60) as pool:
        held = pool.allocate("before")
        slot = Slot(cluster, pool_name)
        slot.start()  # some of the pool's keys (a lane's record, the free list) do not exist: TRYAGAIN
        try:
            for call in (lambda: len(pool), lambda: pool.allocate("during")):
                started = time.monotonic()
                with pytest.raises(RedisResharding) as info:
                    call()
                assert time.monotonic() - started < TIMEOUT + CONNECT_TIMEOUT + SLACK
                message = str(info.value)
                assert f"slot {slot.slot}" in message and f"127.0.0.1:{slot.source_port}" in message
                assert "TRYAGAIN" in message
        finally:
            slot.abort()
            slot.close()
        # The given-up allocation, if it ran, is freed: one slot in use, the one held from before.
        assert pool.get(held) == "before" and pool.allocate("after") and len(pool) == 2


def test_a_migration_finishing_during_a_call_is_followed_once_and_loses_nothing(cluster, pool_name):
    url = cluster[0].url + "?socket_timeout=2"
    with RedisPool.create(pool_name, url=url, cluster=True, capacity=8, lease_ttl=60) as pool:
        held = [pool.allocate(["before", i]) for i in range(3)]
        slot = Slot(cluster, pool_name)
        slot.start()
        finisher = threading.Timer(0.3, slot.finish)
        finisher.start()
        try:
            moved = pool.allocate("during")  # TRYAGAIN, then ASK or MOVED to the new node: taken once
        finally:
            finisher.join()
            slot.close()
        assert [pool.get(h) for h in held] == [["before", i] for i in range(3)]  # not a loss: same epoch
        assert pool.get(moved) == "during"
        stats = pool.statistics()
        assert (stats.current_usage, stats.total_allocations) == (4, 4)
        client = redis.Redis(HOST, slot.dest_port)
        assert client.hget(f"{{fastalloc.{pool_name}}}:meta", "epoch") is None  # no new epoch began
        assert client.hget(f"{{fastalloc.{pool_name}}}:meta", "in_use") == b"4"  # served by the new node
        client.close()
        pool.release_many([*held, moved])

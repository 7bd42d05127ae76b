"""Each RedisPool call takes effect once (issue 23, findings 3 and 5): a mutating call carries a request
id, the script records its reply under it, and a call sent again after a lost reply, a timeout or a
stopped node is answered from the record. A call returns within its timeout plus the connect timeout;
an allocation given up on is freed, never lost. Real redis-server processes, a real TCP proxy that
loses replies (tests/redis_servers.FaultyLink), a real 3-node cluster.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from fastalloc_shm import RedisPool, StaleHandle
from fastalloc_shm._redis_connection import CONNECT_TIMEOUT
from fastalloc_shm.redis_pool import RedisUnavailable

from .redis_servers import faulty_link, redis_cluster, redis_server

TIMEOUT = 0.5  # the calls' socket timeout in these tests (?socket_timeout=)
SLACK = 1.0  # scheduling on a loaded machine


@pytest.fixture
def server():
    with redis_server() as server:
        yield server


@pytest.fixture
def link(server):
    with faulty_link(server) as link:
        yield link


def test_an_allocation_whose_reply_was_lost_is_answered_from_its_record(server, link, pool_name):
    with RedisPool.create(pool_name, url=link.url(f"?socket_timeout={TIMEOUT}"), capacity=8, lease_ttl=60) as pool:
        pool.release(pool.allocate("warm-up"))  # registered, scripts loaded, one pooled connection
        link.cut_next_reply()  # the script runs; its reply never arrives; the client sends it again
        handle = pool.allocate("once")
        stats = pool.statistics()
        assert (stats.current_usage, stats.total_allocations) == (1, 2)
        assert pool.get(handle) == "once"
        link.cut_next_reply()
        pool.release(handle)  # ran, reply lost, sent again: the record says released, not StaleHandle
        assert len(pool) == 0 and pool.statistics().total_deallocations == 2
        with pytest.raises(StaleHandle):
            pool.release(handle)


def test_a_batch_whose_reply_was_lost_takes_its_slots_once(server, link, pool_name):
    with RedisPool.create(pool_name, url=link.url(f"?socket_timeout={TIMEOUT}"), capacity=100, lease_ttl=60) as pool:
        pool.release(pool.allocate(0))
        link.cut_next_reply()
        handles = pool.allocate_many(range(50))
        assert len(set(handles)) == 50 and len(pool) == 50
        assert [pool.get(h) for h in handles] == list(range(50))
        link.cut_next_reply()
        pool.release_many(handles)
        assert len(pool) == 0


def test_a_call_that_hears_nothing_gives_up_in_time_and_its_slot_is_freed_not_lost(server, link, pool_name):
    raw = redis.Redis.from_url(server.url)
    with RedisPool.create(pool_name, url=link.url(f"?socket_timeout={TIMEOUT}"), capacity=8, lease_ttl=60) as pool:
        kept = pool.allocate("kept")
        link.black_hole(True)  # requests reach the server, no reply comes back
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{link.port}"):
            pool.allocate("lost reply")
        assert time.monotonic() - started < TIMEOUT + CONNECT_TIMEOUT + SLACK
        # The script ran (the server counted it) though nobody holds its handle...
        assert int(raw.hget(f"{{fastalloc.{pool_name}}}:meta", "in_use")) == 2
        link.black_hole(False)
        # ...and the next call frees it before anything else.
        again = pool.allocate("next")
        assert len(pool) == 2 and pool.get(kept) == "kept" and pool.get(again) == "next"
    raw.close()


def test_a_call_paused_past_its_timeout_returns_in_time_and_takes_effect_once(server, pool_name):
    raw = redis.Redis.from_url(server.url)
    with RedisPool.create(pool_name, url=server.url + f"?socket_timeout={TIMEOUT}", capacity=8, lease_ttl=60) as pool:
        pool.release(pool.allocate(0))
        raw.client_pause(1500)  # CLIENT PAUSE ALL: the server holds every command for 1.5 s
        started = time.monotonic()
        handle = pool.allocate("paused")
        assert time.monotonic() - started < TIMEOUT + CONNECT_TIMEOUT + SLACK
        stats = pool.statistics()
        assert (stats.current_usage, stats.total_allocations) == (1, 2)
        assert pool.get(handle) == "paused"
    raw.close()


def test_a_stopped_cluster_node_fails_the_call_in_time_naming_it_and_loses_no_slot(make_name):
    name = make_name()
    with redis_cluster(3) as nodes:
        url = nodes[0].url + f"?socket_timeout={TIMEOUT}"
        with RedisPool.create(name, url=url, cluster=True, capacity=8, lease_ttl=60) as pool:
            kept = pool.allocate("kept")
            cluster = redis.RedisCluster.from_url(nodes[0].url)
            owner = cluster.get_node_from_key(f"{{fastalloc.{name}}}:meta")
            cluster.close()
            node = next(n for n in nodes if n.port == owner.port)
            os.kill(node.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                # redis-py 5's cluster client re-sent the script on its own here, for ~20 s and several slots.
                with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{node.port}"):
                    pool.allocate("while stopped")
                assert time.monotonic() - started < TIMEOUT + CONNECT_TIMEOUT + SLACK
            finally:
                os.kill(node.process.pid, signal.SIGCONT)
            # Whether or not the stopped node ran the script when it woke, one slot is in use afterwards.
            later = pool.allocate("later")
            assert len(pool) == 2 and pool.get(kept) == "kept" and pool.get(later) == "later"
            assert pool.statistics().total_allocations in (2, 3)

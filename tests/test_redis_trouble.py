"""RedisPool when Redis misbehaves (issue 23): an evicting server, a pool whose meta key is gone, a server
at maxmemory, and clients that exit without close(). Real redis-server processes only: the shared one
where it will do, private ones (own config, loopback or a unix socket) where a test needs a setting.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from fastalloc_shm import ConfigError, IncompatiblePool, PoolNotFound, RedisPool
from fastalloc_shm.cli import main as cli_main
from fastalloc_shm.redis_pool import RedisOutOfMemory, unlink_pool

from .redis_servers import redis_server

ROOT = Path(__file__).resolve().parents[1]


def keys_of(client: redis.Redis, name: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{{fastalloc.{name}}}*"))


def registry(client: redis.Redis, name: str) -> set[int]:
    return {int(c) for c in client.smembers(f"{{fastalloc.{name}}}:clients")}


def leases(client: redis.Redis, name: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{{fastalloc.{name}}}:lease:*"))


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- 2. eviction refused up front; a damaged pool is reported and removable ---------------------------


@pytest.fixture(scope="module", params=["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"])
def evicting_server(request):
    with redis_server("--maxmemory", "64mb", "--maxmemory-policy", request.param) as server:
        yield server, request.param


def test_an_evicting_server_is_refused_naming_the_policy_and_the_fix(evicting_server, pool_name):
    server, policy = evicting_server
    with pytest.raises(ConfigError) as info:
        RedisPool.create(pool_name, url=server.url, capacity=4)
    message = str(info.value)
    assert policy in message and "noeviction" in message and "allow_eviction=True" in message
    assert f"127.0.0.1:{server.port}" in message
    client = redis.Redis.from_url(server.url)
    try:
        assert keys_of(client, pool_name) == []  # refused before anything was written
        # Who knows the risk says so; attach is checked the same way, and a pickle keeps the choice.
        with RedisPool.create(pool_name, url=server.url, capacity=4, allow_eviction=True) as pool:
            h = pool.allocate("kept")
            with pytest.raises(ConfigError, match=policy):
                RedisPool.attach(pool_name, url=server.url)
            other = RedisPool.attach(pool_name, url=server.url, allow_eviction=True)
            clone = pickle.loads(pickle.dumps(other))
            assert other.get(h) == clone.get(h) == "kept"
            other.close()
            clone.close()
        assert keys_of(client, pool_name) == []
    finally:
        client.close()


def test_a_pool_whose_meta_key_is_gone_is_damaged_and_unlink_pool_clears_it(redis_url, pool_name, raw):
    pool = RedisPool.create(pool_name, url=redis_url, capacity=8)
    other = RedisPool.attach(pool_name, url=redis_url)
    handles = [pool.allocate(i) for i in range(3)]
    other.allocate("x")
    pool.release(handles[0])
    raw.delete(f"{{fastalloc.{pool_name}}}:meta")  # what an evicting server does to it
    for step in (lambda: RedisPool.attach(pool_name, url=redis_url),
                 lambda: RedisPool.create(pool_name, url=redis_url, capacity=8),
                 lambda: pool.get(handles[1]),
                 lambda: other.allocate("y")):
        with pytest.raises(IncompatiblePool, match="damaged") as info:
            step()
        assert f"unlink_pool({pool_name!r}, url)" in str(info.value) and ":meta" in str(info.value)
    assert unlink_pool(pool_name, redis_url) is True
    assert keys_of(raw, pool_name) == []
    assert unlink_pool(pool_name, redis_url) is False
    with pytest.raises(PoolNotFound):
        other.get(handles[1])
    pool.close()
    other.close()
    with RedisPool.create(pool_name, url=redis_url, capacity=2) as again:  # the name is usable again
        assert again.get(again.allocate("new")) == "new"


def test_the_cli_removes_a_damaged_pool(redis_url, pool_name, raw, capsys):
    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        pool.allocate(1)
        raw.delete(f"{{fastalloc.{pool_name}}}:meta")
        assert cli_main(["rm", pool_name, "--url", redis_url]) == 0
        assert "removed" in capsys.readouterr().out
        assert keys_of(raw, pool_name) == []


def test_keys_of_another_type_under_a_pool_name_are_still_not_ours(redis_url, pool_name, raw):
    free = f"{{fastalloc.{pool_name}}}:free"
    raw.set(free, "someone else's string")
    try:
        for step in (lambda: RedisPool.create(pool_name, url=redis_url, capacity=1),
                     lambda: unlink_pool(pool_name, redis_url)):
            with pytest.raises(IncompatiblePool, match="did not create"):
                step()
        assert raw.get(free) == b"someone else's string"
    finally:
        raw.delete(free)


# -- 10. reads keep working at maxmemory; a refused write is a typed error -----------------------------


@pytest.fixture
def full_server(tmp_path):
    """A server on a unix socket with little memory and noeviction."""
    socket_path = tmp_path / "redis.sock"
    with redis_server("--unixsocket", str(socket_path), "--unixsocketperm", "700",
                      "--maxmemory", "3mb", "--maxmemory-policy", "noeviction") as server:
        yield server, f"unix://{socket_path}?db=0"


def test_at_maxmemory_reads_work_and_a_write_is_refused_by_name(full_server, pool_name):
    server, url = full_server
    pool = RedisPool.create(pool_name, url=url, capacity=400, slot_size=70_000, lease_ttl=0.3)
    try:
        handles = []
        with pytest.raises(RedisOutOfMemory) as info:
            for i in range(400):
                handles.append(pool.allocate(f"{i:08d}" + "x" * 60_000))
        assert "OOM" in str(info.value) and "maxmemory" in str(info.value)
        assert handles, "the server refused even the first value: maxmemory too low for the test"
        time.sleep(1.0)  # lease refreshes run at maxmemory too (allow-oom), so this client stays alive
        assert pool.get(handles[0]).startswith("00000000")
        assert pool.get(handles[-1]).startswith(f"{len(handles) - 1:08d}")
        stats = pool.statistics()
        assert stats.current_usage == len(handles) == len(pool) and pool.capacity == 400
        other = RedisPool.attach(pool_name, url=url)
        assert other.get(handles[1]) == pool.get(handles[1])
        assert pool.recover().dead_clients == ()
        with pytest.raises(RedisOutOfMemory):
            other.allocate("small")
        other.close()
        pool.release_many(handles)
        pool.unlink()  # deletes work at maxmemory (allow-oom), and free it
        pool.close()
        with RedisPool.create(pool_name, url=url, capacity=2) as again:
            assert again.get(again.allocate("room again")) == "room again"
    finally:
        pool.close()


# -- 11. clients come and go cleanly ---------------------------------------------------------------------


EXITING_CHILD = "import sys; from fastalloc_shm import RedisPool; " \
    "p = RedisPool.attach(sys.argv[1], url=sys.argv[2], lease_ttl=0.5); p.release(p.allocate(1)); sys.exit(0)"
# A parent and 50 children, none calling close(): interpreter exit says goodbye. The children are started
# as new interpreters, not forked: a fork beside the lease thread may inherit a lock that thread holds.
SPAWN_50 = textwrap.dedent("""
    import subprocess, sys
    from fastalloc_shm import RedisPool
    name, url, child = sys.argv[1], sys.argv[2], sys.argv[3]
    parent = RedisPool.attach(name, url=url, lease_ttl=0.5)
    parent.release(parent.allocate("parent"))
    for _ in range(5):
        batch = [subprocess.Popen([sys.executable, "-c", child, name, url]) for _ in range(10)]
        assert [p.wait(60) for p in batch] == [0] * 10
    print(parent._client_id, flush=True)
    sys.stdin.readline()  # the test looks at the registry now; then this process exits, also without close()
""")


def test_processes_that_exit_without_close_leave_no_lease_and_no_registry_entry(redis_url, pool_name, raw):
    with RedisPool.create(pool_name, url=redis_url, capacity=64) as pool:
        run = subprocess.Popen([sys.executable, "-c", SPAWN_50, pool_name, redis_url, EXITING_CHILD], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            parent_id = int(run.stdout.readline())
            # 50 clients came and went; only the live parent is left, its lease intact.
            assert registry(raw, pool_name) == {parent_id}
            assert [int(k.rsplit(b":", 1)[1]) for k in leases(raw, pool_name)] == [parent_id]
            run.stdin.write("\n")
            run.stdin.flush()
            assert run.wait(timeout=60) == 0, run.stderr.read()
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert registry(raw, pool_name) == set() and leases(raw, pool_name) == []
        time.sleep(0.6)  # one lease period, then a prune: still nothing
        pool.recover()
        assert registry(raw, pool_name) == set() and len(pool) == 0


KILLED = textwrap.dedent("""
    import os, sys
    from fastalloc_shm import RedisPool
    pool = RedisPool.attach(sys.argv[1], url=sys.argv[2], lease_ttl=float(sys.argv[3]))
    pool.release(pool.allocate("x"))
    os._exit(0)  # no atexit, no goodbye: as a kill -9 leaves it
""")


def test_the_registry_of_a_live_pool_drops_clients_dead_for_a_lease_period(redis_url, pool_name, raw):
    with RedisPool.create(pool_name, url=redis_url, capacity=8, lease_ttl=0.5) as pool:
        held = pool.allocate("alive")  # this client's lease thread is what prunes; nobody calls recover()
        me = pool._client_id
        # Their leases last 5 s, so all 8 are still registered when the last has started and exited,
        # however loaded the machine; then this client's lease thread (every 0.5 s) prunes them.
        dead = [subprocess.Popen([sys.executable, "-c", KILLED, pool_name, redis_url, "5"], cwd=ROOT)
                for _ in range(8)]
        assert [p.wait(timeout=60) for p in dead] == [0] * 8
        assert len(registry(raw, pool_name)) == 9
        deadline = time.monotonic() + 20
        while registry(raw, pool_name) != {me} and time.monotonic() < deadline:
            time.sleep(0.1)
        # Dead for at most their lease period (5 s), then gone within the next prune (0.5 s more).
        assert registry(raw, pool_name) == {me}
        assert pool.get(held) == "alive"
        pool.release(held)


def test_close_removes_the_lease_and_the_entry_of_a_client_that_owns_nothing(redis_url, pool_name, raw):
    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        other = RedisPool.attach(pool_name, url=redis_url)
        kept = other.allocate("handed on")
        other.close()  # owns a slot: stays registered for recover(), its lease gone
        assert len(registry(raw, pool_name)) == 1 and leases(raw, pool_name) == []
        third = RedisPool.attach(pool_name, url=redis_url)
        third.release(third.allocate(1))
        del third  # garbage, never closed: the finalizer says goodbye
        assert len(registry(raw, pool_name)) == 1
        pool.release(kept)
        pool.recover()
        assert registry(raw, pool_name) == set()


# -- 4. bounded work per script ----------------------------------------------------------------------------


@pytest.fixture
def timed_server():
    """A private server that logs the duration of every command (SLOWLOG), to see each script's share."""
    with redis_server("--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000") as server:
        yield server


HOARD = textwrap.dedent("""
    import os, sys
    from fastalloc_shm import RedisPool
    pool = RedisPool.attach(sys.argv[1], url=sys.argv[2], lease_ttl=0.3)
    for _ in range(int(sys.argv[3]) // 1000):
        pool.allocate_many([None] * 1000)
    os._exit(0)  # dies holding every slot
""")


def test_recover_reclaims_a_big_pool_in_bounded_steps(timed_server, pool_name):
    slots = 60_001  # one for this client, 60,000 for the one that dies
    client = redis.Redis.from_url(timed_server.url)
    with RedisPool.create(pool_name, url=timed_server.url, capacity=slots, slot_size=8,
                          orphan_policy="reclaim") as pool:
        mine = pool.allocate("mine")
        hoard = subprocess.run([sys.executable, "-c", HOARD, pool_name, timed_server.url, str(slots - 1)], cwd=ROOT)
        assert hoard.returncode == 0 and len(pool) == slots
        time.sleep(0.5)  # its lease expires
        client.slowlog_reset()
        report = pool.recover()
        steps = [e for e in client.slowlog_get(100_000) if e["command"].startswith(b"EVALSHA")]
        assert report.orphans_reclaimed == slots - 1 and len(pool) == 1 and pool.get(mine) == "mine"
        assert pool.statistics().recoveries == 1
        # Each script touches at most a batch of ~1000 slots: many short steps, none long.
        assert len(steps) >= (slots - 1) // 2000
        longest = max(e["duration"] for e in steps)  # microseconds
        assert longest < 50_000, f"one recover step ran {longest / 1000:.1f} ms"
        for _ in range((slots - 1) // 1000):  # every reclaimed slot is usable again
            assert pool.allocate_many([1] * 1000)
        client.config_resetstat()
        pool.unlink()
        # UNLINK, not DEL: the server frees the big hashes in the background.
        calls = client.info("commandstats")
        assert "cmdstat_unlink" in calls and "cmdstat_del" not in calls, sorted(calls)
    client.close()

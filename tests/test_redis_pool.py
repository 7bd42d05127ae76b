"""RedisPool's own behaviour against real Redis (a standalone server, a TLS server with a password, a 3-node
cluster); the contract every backend shares is in test_contract.py."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster

from fastalloc_shm import (
    ConfigError,
    FastallocError,
    GrowthStrategy,
    IncompatiblePool,
    PoolConfig,
    PoolExhausted,
    PoolNotFound,
    RedisPool,
    StaleHandle,
)
from fastalloc_shm.handle import unpack
from fastalloc_shm.redis_pool import MAX_BATCH, RedisUnavailable, SharedMemoryOnly, list_pools, unlink_pool

from .redis_servers import free_port, redis_cluster, redis_server, tls_certificates

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Pw_42"


@pytest.fixture(scope="module")
def cluster_url():
    with redis_cluster(3) as nodes:
        yield nodes[0].url


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def pool(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=8, slot_size=128) as pool:
        yield pool


def pool_keys_on_server(client, name: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{{fastalloc.{name}}}*"))


# Functions the pools below record by import path; module level so other processes import them.
def new_list() -> list:
    return []


def append_one(previous: list) -> None:
    previous.append(1)


def count_of(previous: list) -> list:
    return [len(previous)]


def failing_reset(previous: list) -> list:
    raise RuntimeError("reset failed")


def add_one(capacity: int) -> int:
    return 1


def add_three(capacity: int) -> int:
    return 3


# -- values and handles -------------------------------------------------------------------


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=16) | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def roomy_pool(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=2, slot_size=4096) as pool:
        yield pool


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=msgpack_values)
def test_any_msgpack_value_round_trips(roomy_pool, value):
    with roomy_pool.borrowed(value) as h:
        assert roomy_pool.get(h) == value


def test_buffer_says_it_is_shared_memory_only(pool):
    h = pool.allocate(1)
    with pytest.raises(SharedMemoryOnly, match="shared-memory") as info:
        pool.buffer(h)
    assert isinstance(info.value, FastallocError)


# -- batches ------------------------------------------------------------------------------


def test_allocate_many_and_release_many_are_one_round_trip_each(redis_url, pool_name, raw):
    def script_calls() -> int:
        return raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    # A long lease keeps the refresh thread quiet while counting.
    with RedisPool.create(pool_name, url=redis_url, capacity=200, lease_ttl=60) as pool:
        pool.release(pool.allocate("register this client first"))
        before = script_calls()
        handles = pool.allocate_many(range(100))
        pool.release_many(handles)
        assert script_calls() - before == 2
        assert len({unpack(h)[0] for h in handles}) == 100


def test_a_batch_of_max_batch_slots_is_one_script_and_one_more_is_refused_up_front(redis_url, pool_name, raw):
    """Issue 23, deliver 4: no script moves more than MAX_BATCH slots. allocate_many and release_many are
    all or nothing in one script, so a bigger batch is refused before anything is sent, not split."""
    def script_calls() -> int:
        return raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    with RedisPool.create(pool_name, url=redis_url, capacity=3 * MAX_BATCH, slot_size=32, lease_ttl=60) as pool:
        pool.release(pool.allocate("register this client first"))
        before = script_calls()
        with pytest.raises(ValueError, match=f"allocate_many: {MAX_BATCH + 1} values .* the {MAX_BATCH} a RedisPool"):
            pool.allocate_many(range(MAX_BATCH + 1))
        assert script_calls() == before
        handles = pool.allocate_many(range(MAX_BATCH))
        extra = pool.allocate("one more")
        assert script_calls() - before == 2
        with pytest.raises(ValueError, match=f"release_many: {MAX_BATCH + 1} handles .* the {MAX_BATCH} a RedisPool"):
            pool.release_many([*handles, extra])
        assert script_calls() - before == 2
        assert len(pool) == MAX_BATCH + 1  # none released
        assert [pool.get(h) for h in handles[::250]] == [0, 250, 500, 750]
        before = script_calls()
        pool.release_many(handles)
        assert script_calls() - before == 1 and len(pool) == 1
    assert RedisPool.MAX_BATCH == MAX_BATCH == 1000


# -- growth -------------------------------------------------------------------------------


def test_linear_growth_stops_at_max_capacity(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=2, max_capacity=7,
                          growth_strategy=GrowthStrategy.linear(2)) as pool:
        capacities = []
        for i in range(7):
            pool.allocate(i)
            capacities.append(pool.capacity)
        assert capacities == [2, 2, 4, 4, 6, 6, 7]
        assert pool.statistics().growth_count == 3
        with pytest.raises(PoolExhausted, match="max_capacity 7"):
            pool.allocate(8)


def test_exponential_growth_adds_what_the_config_says(redis_url, pool_name):
    config = PoolConfig(capacity=3, max_capacity=40, growth_strategy=GrowthStrategy.exponential(1.5))
    expected, capacity = [], 3
    for used in range(1, 41):
        if used > capacity:
            capacity += config.growth_amount(capacity)
        expected.append(capacity)
    with RedisPool.create(pool_name, url=redis_url, config=config) as pool:
        seen = []
        for i in range(40):
            pool.allocate(i)
            seen.append(pool.capacity)
        assert seen == expected
        with pytest.raises(PoolExhausted):
            pool.allocate(41)


def test_a_batch_grows_the_pool_as_often_as_needed(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=2, growth_strategy=GrowthStrategy.linear(3)) as pool:
        pool.allocate_many(range(10))
        stats = pool.statistics()
        assert (stats.capacity, stats.growth_count) == (11, 3)


def test_custom_growth_runs_in_the_client_and_attachers_import_it(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=1, max_capacity=8,
                          growth_strategy=GrowthStrategy.custom(add_three)) as pool:
        pool.allocate(0)
        with RedisPool.attach(pool_name, url=redis_url) as other:
            other.allocate(1)
            assert other.capacity == 4
        pool.allocate_many(range(4))
        assert pool.capacity == 7
        pool.allocate_many(range(2))
        assert pool.statistics().capacity == 8
        assert pool.statistics().growth_count == 3


def test_custom_growth_by_a_lambda_is_refused_in_attachers(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=1,
                          growth_strategy=GrowthStrategy.custom(lambda capacity: 1)) as pool:
        pool.allocate(0)
        with RedisPool.attach(pool_name, url=redis_url) as other, pytest.raises(ConfigError, match="growth_strategy"):
            other.allocate(1)
        assert len(pool) == 1


def test_concurrent_clients_never_apply_one_custom_growth_twice(redis_url, pool_name):
    # Each growth adds one slot only when the pool is full, so after n
    # allocations the capacity is exactly n unless some growth was applied twice.
    with RedisPool.create(pool_name, url=redis_url, capacity=1, growth_strategy=GrowthStrategy.custom(add_one)) as pool:
        clients = [RedisPool.attach(pool_name, url=redis_url) for _ in range(2)]
        errors: list[BaseException] = []

        def allocate(client: RedisPool) -> None:
            try:
                for i in range(40):
                    client.allocate(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=allocate, args=(c,)) for c in clients for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        assert not errors
        stats = pool.statistics()
        assert (stats.current_usage, stats.capacity, stats.growth_count) == (160, 160, 159)


# -- acquire ------------------------------------------------------------------------------


def test_acquire_stores_what_reset_returns_also_in_attachers(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=1, reset=(new_list, count_of)) as pool:
        pool.release(pool.acquire())
        with RedisPool.attach(pool_name, url=redis_url) as other:
            h = other.acquire()
            assert other.get(h) == [0]
            other.set(h, [1, 2, 3])
            other.release(h)
        assert pool.get(pool.acquire()) == [3]


# -- statistics ---------------------------------------------------------------------------


# -- creation, attachment, lifetime -------------------------------------------------------


def test_a_foreign_key_or_another_layout_is_incompatible(redis_url, pool_name, raw):
    meta = f"{{fastalloc.{pool_name}}}:meta"
    raw.set(meta, "not a pool")
    for open_pool in (lambda: RedisPool.attach(pool_name, url=redis_url),
                      lambda: RedisPool.create(pool_name, url=redis_url, capacity=1)):
        with pytest.raises(IncompatiblePool, match="did not create"):
            open_pool()
    raw.delete(meta)
    raw.hset(meta, mapping={"layout": "fastalloc-redis/999"})
    with pytest.raises(IncompatiblePool, match="layout"):
        RedisPool.attach(pool_name, url=redis_url)
    raw.delete(meta)
    raw.rpush(f"{{fastalloc.{pool_name}}}:free", 1)
    with pytest.raises(IncompatiblePool, match=":free"):
        RedisPool.create(pool_name, url=redis_url, capacity=1)
    raw.delete(f"{{fastalloc.{pool_name}}}:free")


def test_a_pool_whose_registry_was_replaced_says_unlink_it_and_unlink_works(redis_url, pool_name, raw):
    with RedisPool.create(pool_name, url=redis_url, capacity=2) as pool:
        pool.allocate("registered")
        clients = f"{{fastalloc.{pool_name}}}:clients"
        raw.delete(clients)
        raw.set(clients, "not a set")
        with pytest.raises(IncompatiblePool, match="replaced by one of another type .*; unlink the pool and create it"):
            pool.recover()
        assert unlink_pool(pool_name, redis_url)  # as the error says: the damaged pool goes, every key of it
        assert raw.keys(f"{{fastalloc.{pool_name}}}*") == []


def test_unlink_removes_every_key_and_later_calls_raise_pool_not_found(redis_url, pool_name, raw):
    pool = RedisPool.create(pool_name, url=redis_url, capacity=4)
    other = RedisPool.attach(pool_name, url=redis_url)
    h = pool.allocate(1)
    other.allocate(2)
    assert pool_keys_on_server(raw, pool_name)
    pool.unlink()
    assert pool_keys_on_server(raw, pool_name) == []
    with pytest.raises(PoolNotFound):
        pool.get(h)
    with pytest.raises(PoolNotFound):
        other.allocate(3)
    pool.close()
    other.close()
    assert pool_keys_on_server(raw, pool_name) == []
    assert unlink_pool(pool_name, redis_url) is False


def test_a_pool_created_again_under_the_same_name_is_not_the_old_one(redis_url, pool_name):
    old = RedisPool.create(pool_name, url=redis_url, capacity=2)
    attached = RedisPool.attach(pool_name, url=redis_url)
    h = old.allocate("old value")
    old.unlink()
    with RedisPool.create(pool_name, url=redis_url, capacity=2) as new:
        assert new.allocate("new value") == h
        with pytest.raises(PoolNotFound, match="created again"):
            attached.get(h)
        with pytest.raises(PoolNotFound, match="created again"):
            attached.allocate("x")
        old.unlink()
        old.close()
        attached.close()
        assert new.get(h) == "new value" and len(new) == 1


def test_list_pools_and_unlink_pool_for_the_cli(redis_url, make_name, raw):
    names = sorted(make_name() for _ in range(3))
    foreign = f"{{fastalloc.{make_name()}}}:meta"
    raw.set(foreign, "a string, not a pool")
    pools = [RedisPool.create(n, url=redis_url, capacity=1) for n in names]
    for p in pools:
        p.close()
    assert set(names) <= set(list_pools(redis_url))
    assert [unlink_pool(n, redis_url) for n in names] == [True, True, True]
    assert not set(names) & set(list_pools(redis_url))
    raw.delete(foreign)


def test_properties_and_repr(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=3, slot_size=64, max_capacity=9,
                          growth_strategy=GrowthStrategy.linear(3)) as pool:
        assert (pool.name, pool.capacity, pool.slot_size) == (pool_name, 3, 64)
        assert pool.config.max_capacity == 9
        assert repr(pool) == f"<RedisPool {pool_name!r} at {redis_url}, slot_size=64, creator>"
        with RedisPool.attach(pool_name, url=redis_url) as other:
            assert other.config.growth_strategy == GrowthStrategy.linear(3)


@pytest.mark.parametrize("kwargs, field", [
    ({"capacity": None}, "capacity"),
    ({"capacity": 2, "lease_ttl": 0}, "lease_ttl"),
    ({"capacity": 2, "url": "http://x"}, "url"),
    ({"capacity": 2, "no_such_field": 1}, "no_such_field"),
])
def test_invalid_arguments_are_config_errors_naming_the_field(redis_url, pool_name, kwargs, field):
    kwargs = {"url": redis_url, **kwargs}
    with pytest.raises(ConfigError, match=field):
        RedisPool.create(pool_name, **kwargs)


def test_scripts_are_reloaded_after_script_flush(pool, raw):
    h = pool.allocate(1)
    raw.script_flush()
    assert pool.get(h) == 1
    pool.release(h)


def test_pickle_attaches_by_name_and_url(pool):
    h = pool.allocate({"k": 1})
    clone = pickle.loads(pickle.dumps(pool))
    try:
        assert clone.get(h) == {"k": 1}
        assert "attached" in repr(clone)
    finally:
        clone.close()
    assert len(pool) == 1


# -- leases and recovery ------------------------------------------------------------------


def test_the_lease_is_refreshed_and_close_stops_it(redis_url, pool_name, raw):
    with RedisPool.create(pool_name, url=redis_url, capacity=2):
        other = RedisPool.attach(pool_name, url=redis_url, lease_ttl=0.5)
        h = other.allocate(1)
        time.sleep(1.2)
        leases = raw.keys(f"{{fastalloc.{pool_name}}}:lease:*")
        assert len(leases) == 1 and raw.pttl(leases[0]) > 0
        other.release(h)
        other.close()
        assert raw.keys(f"{{fastalloc.{pool_name}}}:lease:*") == []
        assert not [t for t in threading.enumerate() if t.name == f"fastalloc-lease-{pool_name}"]


def test_a_process_that_exits_without_close_says_goodbye_and_exits_at_once(redis_url, pool_name, raw):
    """The lease thread is a daemon and the goodbye runs at interpreter exit: a process that never calls
    close() exits promptly, its lease is gone at once (not after its 60 s ttl), and it leaves the registry
    unless it still owns a slot (then recover() finds its slots once its lease is gone)."""
    child = textwrap.dedent(f"""
        import sys
        from fastalloc_shm import RedisPool
        pool = RedisPool.attach({pool_name!r}, url={redis_url!r}, lease_ttl=60)
        handle = pool.allocate("the child's")
        if sys.argv[1] == "releases":
            pool.release(handle)
        print(pool._client_id, flush=True)
    """)
    clients_key = f"{{fastalloc.{pool_name}}}:clients"
    with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
        for how in ("releases", "keeps"):
            done = subprocess.run([sys.executable, "-c", child, how], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            client = int(done.stdout)
            assert raw.exists(f"{{fastalloc.{pool_name}}}:lease:{client}") == 0
            assert (str(client).encode() in raw.smembers(clients_key)) == (how == "keeps")
        report = pool.recover(orphan_policy="reclaim")
        assert (report.orphans_reclaimed, len(pool)) == (1, 0)


def test_a_forked_child_registers_its_own_client(pool, raw):
    parent_handle = pool.allocate("parent")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(write_end, str(pool.allocate("child")).encode())
            pool.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child_handle = int(os.read(read_end, 64))
    os.close(read_end)
    assert status == 0
    owners = raw.hgetall(f"{{fastalloc.{pool.name}}}:owner")
    owner = {h: owners[str(unpack(h)[0]).encode()] for h in (parent_handle, child_handle)}
    assert owner[parent_handle] != owner[child_handle]
    assert pool.get(child_handle) == "child"


def test_a_closed_clients_slots_are_reclaimed_under_the_config_policy(redis_url, pool_name):
    with RedisPool.create(pool_name, url=redis_url, capacity=4, orphan_policy="reclaim") as pool:
        mine = pool.allocate("mine")
        other = RedisPool.attach(pool_name, url=redis_url)
        handed_on = other.allocate_many(["a", "b"])
        other.close()
        report = pool.recover()
        assert (report.orphan_policy, report.orphans_reclaimed, report.repaired) == ("reclaim", 2, True)
        with pytest.raises(StaleHandle):
            pool.get(handed_on[0])
        assert pool.get(mine) == "mine" and len(pool) == 1
        assert pool.statistics().recoveries == 1


def hold_slots_until_killed(name: str, url: str, count: int, handles: mp.Queue) -> None:
    """Child process: allocate `count` values under a 1 s lease, report the handles, wait to be killed."""
    pool = RedisPool.attach(name, url=url, lease_ttl=1.0)
    handles.put(pool.allocate_many([f"orphan {i}" for i in range(count)]))
    time.sleep(60)


def test_a_killed_clients_slots_are_kept_then_reclaimed_after_its_lease_expires(redis_url, pool_name):
    ctx = mp.get_context("spawn")
    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool:
        mine = pool.allocate("alive")
        queue = ctx.Queue()
        child = ctx.Process(target=hold_slots_until_killed, args=(pool_name, redis_url, 3, queue))
        child.start()
        try:
            orphans = queue.get(timeout=30)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        deadline = time.monotonic() + 10
        while not (report := pool.recover()).dead_clients:
            assert time.monotonic() < deadline, "the killed client's lease never expired"
            time.sleep(0.1)
        assert (report.orphans_kept, report.orphans_reclaimed, report.repaired) == (3, 0, False)
        assert [pool.get(h) for h in orphans] == ["orphan 0", "orphan 1", "orphan 2"]
        report = pool.recover(orphan_policy="reclaim")
        assert (report.orphans_reclaimed, report.repaired) == (3, True)
        for h in orphans:
            with pytest.raises(StaleHandle):
                pool.get(h)
        assert pool.get(mine) == "alive" and len(pool) == 1
        assert pool.recover(orphan_policy="reclaim").orphans_reclaimed == 0


# -- several processes --------------------------------------------------------------------


def share_pool(name: str, url: str, worker: int, rounds: int) -> dict:
    """Child process: race to create the pool, then allocate, check and release at random."""
    rng = random.Random(worker)
    pool = RedisPool.create(name, url=url, capacity=64, slot_size=128, exist_ok=True)
    created = "creator" in repr(pool)
    held: dict[int, dict] = {}
    for n in range(rounds):
        if held and (len(held) >= 12 or rng.random() < 0.4):
            h = rng.choice(list(held))
            assert pool.get(h) == held.pop(h), "another process overwrote a slot this one holds"
            pool.release(h)
        else:
            value = {"worker": worker, "n": n}
            held[pool.allocate(value)] = value
    pool.close()
    return {"created": created, "held": held}


def test_four_spawned_processes_share_one_pool_and_never_get_the_same_slot(redis_url, pool_name):
    ctx = mp.get_context("spawn")
    try:
        with ctx.Pool(4) as procs:
            results = procs.starmap(share_pool, [(pool_name, redis_url, w, 300) for w in range(4)])
        assert sum(r["created"] for r in results) == 1
        held = {h: v for r in results for h, v in r["held"].items()}
        slots = [unpack(h)[0] for r in results for h in r["held"]]
        assert len(slots) == len(set(slots)), "a slot was handed out twice"
        with RedisPool.attach(pool_name, url=redis_url) as pool:
            assert len(pool) == len(held)
            assert all(pool.get(h) == v for h, v in held.items())
            stats = pool.statistics()
            assert stats.total_allocations - stats.total_deallocations == len(held)
    finally:
        unlink_pool(pool_name, redis_url)


# -- connections --------------------------------------------------------------------------


def test_an_unreachable_server_fails_fast_naming_host_and_port():
    port = free_port()
    for cluster in (False, True):
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}") as info:
            RedisPool.attach("anything", url=f"redis://:{SECRET}@127.0.0.1:{port}/0", cluster=cluster)
        assert time.monotonic() - started < 3
        assert SECRET not in str(info.value)
        assert isinstance(info.value, FastallocError) and isinstance(info.value, ConnectionError)


def test_a_server_that_never_answers_times_out_instead_of_hanging():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}"):
            RedisPool.attach("anything", url=f"redis://127.0.0.1:{port}/0")
        assert time.monotonic() - started < 8


def test_a_server_going_down_fails_fast(pool_name):
    with redis_server() as server:
        pool = RedisPool.create(pool_name, url=server.url, capacity=2)
        h = pool.allocate(1)
        server.stop()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{server.port}"):
            pool.get(h)
        assert time.monotonic() - started < 3
        pool.close()


@pytest.fixture(scope="module")
def tls_files():
    with tls_certificates() as files:
        yield files


def test_rediss_and_passwords_work_and_never_show(tls_files, pool_name, monkeypatch):
    with redis_server("--requirepass", SECRET, tls=tls_files) as server:
        url = f"rediss://default:{SECRET}@127.0.0.1:{server.port}/0?ssl_ca_certs={tls_files.ca}"
        with RedisPool.create(pool_name, url=url, capacity=2) as pool:
            h = pool.allocate({"over": "tls"})
            assert SECRET not in repr(pool) and "rediss://***@" in repr(pool)
            monkeypatch.setenv("FASTALLOC_REDIS_URL", url)  # a pickle carries no password: the receiver's own
            clone = pickle.loads(pickle.dumps(pool))
            assert clone.get(h) == {"over": "tls"}
            clone.close()
            wrong = url.replace(SECRET, "not-the-" + SECRET)
            with pytest.raises(RedisUnavailable, match="password") as info:
                RedisPool.attach(pool_name, url=wrong)
            assert SECRET not in str(info.value)


def test_import_works_without_redis_and_use_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["redis"] = None  # as if the extra were not installed
        import fastalloc_shm
        from fastalloc_shm import FastallocError, RedisPool
        try:
            RedisPool.attach("jobs", url="redis://127.0.0.1:6379/0")
        except FastallocError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        else:
            raise SystemExit("RedisPool worked without redis")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "fastalloc-shm[redis]" in result.stdout


# -- Redis Cluster ------------------------------------------------------------------------


def read_and_write_pools(pools: list[RedisPool], handles: list[int]) -> list:
    """Child process: read each pool's value through a pickled (attach-by-name) pool, then use it."""
    values = [p.get(h) for p, h in zip(pools, handles, strict=True)]
    for p in pools:
        p.release(p.allocate("from the child"))
        p.close()
    return values


def test_pools_spread_over_the_cluster_and_attach_from_another_process(cluster_url, make_name):
    cluster = RedisCluster.from_url(cluster_url)
    names, nodes = [], set()
    while len(nodes) < 3:
        name = make_name()
        node = cluster.get_node_from_key(f"{{fastalloc.{name}}}:meta").name
        if node not in nodes:
            names.append(name)
            nodes.add(node)
    pools = [RedisPool.create(n, url=cluster_url, cluster=True, capacity=4, slot_size=64) for n in names]
    try:
        handles = [p.allocate({"pool": n}) for p, n in zip(pools, names, strict=True)]
        assert set(names) <= set(list_pools(cluster_url, cluster=True))
        cluster.script_flush()
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as procs:
            values = procs.apply(read_and_write_pools, (pools, handles))
        assert values == [{"pool": n} for n in names]
        for p in pools:
            assert p.statistics().total_allocations == 2
    finally:
        for p in pools:
            p.unlink()
            p.close()
        cluster.close()
    assert not set(names) & set(list_pools(cluster_url, cluster=True))

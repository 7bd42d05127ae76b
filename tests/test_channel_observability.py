"""Channels seen from outside (issue 19, item 6): per-channel counters in
`pool.statistics()`, in `fastalloc-shm ls/stats/top` and in the daemon's metrics.

Real processes: every counter is read by a process other than the one whose
put, get, death or wait it counts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from fastalloc_shm import ChannelStatistics, FixedPool, PoolStatistics, ThreadLocalPool, attach

from . import requirements
from . import test_daemon as daemon_tests

ROOT = Path(__file__).resolve().parent.parent
start_daemon = daemon_tests.start_daemon


def python(code: str) -> subprocess.Popen:
    """A child interpreter running `code` (it prints one line when it reached its point)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def blocked_consumer(pool_name: str, channel: str = "todo") -> subprocess.Popen:
    """A child blocked in `get` on `channel` until an item comes (it prints the item and exits)."""
    return python(f"""
        from fastalloc_shm import attach
        pool = attach({pool_name!r})
        print(pool.channel({channel!r}).get(timeout=60), flush=True)
        pool.close()
    """)


def counters(pool, channel: str = "todo") -> ChannelStatistics:
    return pool.statistics().channels[channel]


def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fastalloc_shm.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- pool.statistics() ---------------------------------------------------------------------------


def test_a_pool_without_channels_shows_an_empty_mapping(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        stats = pool.statistics()
        assert stats.channels == {} and stats.to_dict()["channels"] == {}
        assert "channels                         0" in str(stats)
    assert PoolStatistics(capacity=1).channels == {}


@pytest.mark.parametrize("kind", [FixedPool, ThreadLocalPool], ids=lambda k: k.__name__)
def test_puts_and_gets_of_another_process_are_counted_per_channel(pool_name, kind):
    with kind.create(pool_name, capacity=64) as pool:
        pool.channel("todo")
        finish(subprocess.Popen([sys.executable, "-m", "tests.channel_child", pool_name, "todo", "produce", "10"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        finish(python(f"""
            from fastalloc_shm import attach
            pool = attach({pool_name!r})
            todo, done = pool.channel("todo"), pool.channel("done")
            todo.get_many(3, timeout=5)
            done.put_many(range(4))
            done.put_handle(pool.allocate("by handle"))
            pool.release(todo.get_handle(timeout=5))
            pool.close()
        """))
        stats = pool.statistics()
        assert list(stats.channels) == ["todo", "done"]  # in the order they were created
        assert stats.channels["todo"] == ChannelStatistics(length=6, puts=10, gets=4, requeued=0, waiting=0)
        assert stats.channels["done"] == ChannelStatistics(length=5, puts=5, gets=0, requeued=0, waiting=0)
        assert pool.channel("todo").statistics() == {"name": "todo", **stats.to_dict()["channels"]["todo"]}


def test_a_consumer_that_died_holding_an_item_is_counted_requeued_after_recover(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        todo.put_many(["first", "second"])
        dying = subprocess.Popen([sys.executable, "-m", "tests.channel_child", pool_name, "todo", "take_and_die"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dying.communicate(timeout=30)
        assert dying.returncode == -signal.SIGKILL
        assert counters(pool) == ChannelStatistics(length=1, puts=2, gets=1, requeued=0)  # held by the dead
        assert pool.recover().requeued == 1
        assert counters(pool) == ChannelStatistics(length=2, puts=2, gets=1, requeued=1)
        assert todo.get() == "first"  # taken again: a get of its own
        assert counters(pool) == ChannelStatistics(length=1, puts=2, gets=2, requeued=1)


def test_a_get_blocked_in_another_process_shows_as_a_waiting_consumer(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        consumers = [blocked_consumer(pool_name) for _ in range(2)]
        try:
            wait_for(lambda: counters(pool).waiting == 2, "two consumers to wait")
            for _ in range(20):  # across the core's wait slices (a consumer counts itself again at each)
                time.sleep(0.01)
                assert counters(pool).waiting == 2
            todo.put("one")
            wait_for(lambda: counters(pool).waiting == 1, "one consumer left waiting")
            todo.put("two")
            assert sorted(finish(c).strip() for c in consumers) == ["one", "two"]
        finally:
            for c in consumers:
                c.kill()
                c.wait()
        assert counters(pool) == ChannelStatistics(length=0, puts=2, gets=2, waiting=0)


def test_a_consumer_killed_while_waiting_stops_counting_at_the_next_repair(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        doomed, living = blocked_consumer(pool_name), blocked_consumer(pool_name)
        try:
            wait_for(lambda: counters(pool).waiting == 2, "two consumers to wait")
            doomed.kill()
            doomed.wait()
            assert counters(pool).waiting == 2  # a dead sleeper cannot uncount itself ...
            pool.recover()  # ... the repair after a death (recover(), the daemon) starts the count again
            wait_for(lambda: counters(pool).waiting == 1, "the living consumer to count itself again")
            time.sleep(0.2)  # several wait slices: the dead one stays uncounted, the living one counted
            assert counters(pool).waiting == 1
            todo.put("woken")  # and the living one is still woken by a put
            assert finish(living).strip() == "woken"
            assert counters(pool).waiting == 0
        finally:
            for c in (doomed, living):
                c.kill()
                c.wait()


def test_reset_statistics_zeroes_the_channels_events_and_keeps_their_state(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        todo = pool.channel("todo")
        todo.put_many([1, 2, 3])
        todo.get()
        dying = subprocess.Popen([sys.executable, "-m", "tests.channel_child", pool_name, "todo", "take_and_die"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dying.communicate(timeout=30)
        assert pool.recover().requeued == 1
        assert counters(pool) == ChannelStatistics(length=2, puts=3, gets=2, requeued=1, waiting=0)
        pool.channel("other")
        consumer = blocked_consumer(pool_name, "other")
        try:
            wait_for(lambda: counters(pool, "other").waiting == 1, "a consumer to wait")
            other = attach(pool_name)
            try:
                other.reset_statistics()  # from another attachment: the counters are the pool's
            finally:
                other.close()
            assert counters(pool) == ChannelStatistics(length=2, puts=0, gets=0, requeued=0, waiting=0)
            assert counters(pool, "other").waiting == 1
            pool.channel("other").put("bye")
            assert finish(consumer).strip() == "bye"
        finally:
            consumer.kill()
            consumer.wait()


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def busy_pool(pool_name):
    """A pool with channel "todo" (3 queued, 1 taken, a consumer waiting on "idle"), for the CLI to show."""
    with FixedPool.create(pool_name, capacity=16) as pool:
        todo = pool.channel("todo")
        todo.put_many(range(4))
        pool.release(todo.get_handle())
        pool.channel("idle")
        consumer = blocked_consumer(pool_name, "idle")
        try:
            wait_for(lambda: counters(pool, "idle").waiting == 1, "a consumer to wait")
            yield pool
        finally:
            consumer.kill()
            consumer.wait()


def test_ls_names_each_channel_with_its_items(busy_pool):
    row = next(line for line in cli("ls").splitlines() if line.startswith(busy_pool.name + " "))
    assert row.endswith("todo:3 idle:0")
    assert "CHANNELS" in cli("ls").splitlines()[0]
    listed = {p["name"]: p for p in json.loads(cli("ls", "--json"))}
    assert listed[busy_pool.name]["channels"] == {
        "todo": {"length": 3, "puts": 4, "gets": 1, "requeued": 0, "waiting": 0},
        "idle": {"length": 0, "puts": 0, "gets": 0, "requeued": 0, "waiting": 1},
    }


def test_stats_shows_a_row_per_channel_in_text_and_json(busy_pool):
    text = cli("stats", busy_pool.name)
    assert "channels                         2" in text
    header, todo, idle = (line.split() for line in text.splitlines()[-4:-1])
    assert header == ["CHANNEL", "LENGTH", "PUTS", "GETS", "REQUEUED", "WAITING"]
    assert todo == ["todo", "3", "4", "1", "0", "0"] and idle == ["idle", "0", "0", "0", "0", "1"]
    data = json.loads(cli("stats", busy_pool.name, "--json"))
    assert data["channels"]["todo"] == {"length": 3, "puts": 4, "gets": 1, "requeued": 0, "waiting": 0}
    assert data["channels"]["idle"]["waiting"] == 1


def test_top_shows_each_channel_with_its_rates(busy_pool):
    rows = [line.split() for line in cli("top", "--once").splitlines()]
    header = rows.index(["POOL", "CHANNEL", "QUEUED", "PUT/S", "GET/S", "REQUEUED", "WAITING"])
    mine = [row for row in rows[header:] if row and row[0] == busy_pool.name]
    assert mine == [[busy_pool.name, "todo", "3", "-", "-", "0", "0"], [busy_pool.name, "idle", "0", "-", "-", "0", "1"]]


def test_top_rates_come_from_the_counters_between_frames(busy_pool):
    from fastalloc_shm import cli as cli_module

    previous: dict = {}
    cli_module._frame(cli_module._SharedMemory(), previous)
    previous.update({key: (when - 2.0, total) for key, (when, total) in previous.items()})  # as if 2 s ago
    busy_pool.channel("todo").put_many(range(6))
    busy_pool.channel("todo").get_many(2)
    frame = [line.split() for line in cli_module._frame(cli_module._SharedMemory(), previous)]
    assert [busy_pool.name, "todo", "7", "3", "1", "0", "0"] in frame  # 6 puts, 2 gets in 2 s


# -- the daemon's metrics ------------------------------------------------------------------------


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_metrics_have_a_series_per_channel_labelled_pool_and_channel(start_daemon, pool_name):
    from prometheus_client.parser import text_string_to_metric_families

    daemon = start_daemon(daemon_tests.pools_toml((pool_name, "capacity = 10\n")), "--metrics-port", "0")
    url = daemon.client.ping()["metrics"]
    pool = attach(pool_name)
    try:
        todo = pool.channel("todo")
        todo.put_many(range(5))
        todo.get()
        labels = (("channel", "todo"), ("pool", pool_name))

        def samples():
            found = {(s.name, tuple(sorted(s.labels.items()))): s.value
                     for family in text_string_to_metric_families(scrape(url)) for s in family.samples}
            return found if found.get(("fastalloc_channel_gets_total", labels)) == 1 else None

        found = wait_for(samples, "the metrics to show the channel")
    finally:
        pool.close()
    assert found[("fastalloc_channel_length_items", labels)] == 4
    assert found[("fastalloc_channel_puts_total", labels)] == 5
    assert found[("fastalloc_channel_requeued_total", labels)] == 0
    assert found[("fastalloc_channel_waiting_consumers", labels)] == 0


def test_the_daemon_uncounts_a_consumer_killed_while_waiting(start_daemon, pool_name):
    from prometheus_client.parser import text_string_to_metric_families

    daemon = start_daemon(daemon_tests.pools_toml((pool_name, "capacity = 10\n")), "--metrics-port", "0")
    url = daemon.client.ping()["metrics"]
    pool = attach(pool_name)
    consumer = None
    try:
        pool.channel("todo")
        consumer = blocked_consumer(pool_name)
        labels = {"channel": "todo", "pool": pool_name}

        def waiting():
            return next((s.value for family in text_string_to_metric_families(scrape(url)) for s in family.samples
                         if s.name == "fastalloc_channel_waiting_consumers" and s.labels == labels), None)

        wait_for(lambda: waiting() == 1, "the metrics to show the waiting consumer")
        consumer.kill()
        consumer.wait()
        wait_for(lambda: waiting() == 0, "the daemon's repair to uncount the dead consumer")
        assert counters(pool).waiting == 0
    finally:
        if consumer is not None:
            consumer.kill()
            consumer.wait()
        pool.close()


@requirements.needs_tool("promtool")
def test_metrics_with_channels_pass_promtool(start_daemon, pool_name):
    daemon = start_daemon(daemon_tests.pools_toml((pool_name, "capacity = 10\n")), "--metrics-port", "0")
    url = daemon.client.ping()["metrics"]
    pool = attach(pool_name)
    try:
        pool.channel("todo").put("x")
        pool.channel("done")
        text = wait_for(lambda: next((t for t in [scrape(url)] if 'channel="done"' in t), None),
                        "the channels in the metrics")
    finally:
        pool.close()
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")

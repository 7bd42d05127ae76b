"""fastalloc-shmd, run as a real subprocess: control ops, monitor repairs, signals, metrics, bad input."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastalloc_shm import FixedPool, PoolStatistics, attach, unlink
from fastalloc_shm._protocol import MAX_FRAME, SOCKET_ENV
from fastalloc_shm.client import DaemonClient, DaemonUnavailable
from fastalloc_shm.errors import ConfigError, FastallocError, PoolNotFound
from fastalloc_shm.pool import list_pools
from fastalloc_shmd import config as daemon_config
from fastalloc_shmd.monitor import Warnings, pool_warnings, shm_warnings

from .requirements import unless

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class Daemon:
    """A fastalloc-shmd subprocess with its control client and captured output."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None,
                 default_socket: bool = False) -> None:
        self.stdout_path, self.stderr_path = tmp / "stdout.txt", tmp / "stderr.txt"
        self.runtime_dir = tmp / "xdg"
        self.runtime_dir.mkdir(exist_ok=True)
        if default_socket:
            self.socket = str(self.runtime_dir / "fastalloc-shm" / "control.sock")
        else:
            self.socket = str(tmp / "s.sock")
            args = ["--socket", self.socket, *args]
        # The test runner may itself run under systemd: the daemon must notify only a test's own socket.
        inherited = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        environment = {**inherited, "XDG_RUNTIME_DIR": str(self.runtime_dir), **(env or {})}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastalloc_shmd", "--interval", "0.1", *args],
                stdout=out, stderr=err, env=environment,
            )
        self.client = DaemonClient(self.socket, timeout=5.0)

    def wait_ready(self) -> Daemon:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}: {self.stderr()}")
            try:
                return self.client.ping()
            except DaemonUnavailable:  # not bound, or bound and not listening yet
                return None

        wait_for(ready, START_TIMEOUT, "the daemon to answer ping")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@pytest.fixture
def start_daemon(tmp_path):
    """Start fastalloc-shmd (pools from a TOML string, or the embedded default); killed and cleaned up after."""
    daemons: list[Daemon] = []
    declared: list[str] = []

    def start(config: str | None = None, *args: str, env: dict[str, str] | None = None, ready: bool = True,
              default_socket: bool = False) -> Daemon:
        extra = list(args)
        if config is not None:
            path = tmp_path / "pools.toml"
            path.write_text(config)
            declared.extend(daemon_config.load(str(path)).pools)
            extra = ["--config", str(path), *extra]
        workdir = tmp_path / f"d{len(daemons)}"
        workdir.mkdir()
        daemon = Daemon(workdir, extra, env, default_socket)
        daemons.append(daemon)
        return daemon.wait_ready() if ready else daemon

    yield start
    for daemon in daemons:
        daemon.stop()
    for name in declared:
        unlink(name)


def pools_toml(*tables: tuple[str, str]) -> str:
    """A config file from (name, body) pairs."""
    return "\n".join(f"[pools.{name}]\n{textwrap.dedent(body)}" for name, body in tables)


def run_python(code: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# -- control ops -------------------------------------------------------------------------------


def test_ping_and_list_show_the_configured_pools(start_daemon, make_name):
    fixed, growing = make_name(), make_name()
    daemon = start_daemon(pools_toml(
        (fixed, "capacity = 16\nslot_size = 64\n"),
        (growing, 'kind = "growing"\ncapacity = 8\nmax_capacity = 32\ngrowth = {strategy = "linear", amount = 8}\n'),
    ))
    assert daemon.client.ping()["pid"] == daemon.proc.pid
    pools = {p["name"]: p for p in daemon.client.list()}
    assert pools[fixed]["kind"] == "fixed" and pools[fixed]["capacity"] == 16 and pools[fixed]["slot_size"] == 64
    assert pools[growing]["kind"] == "growing" and pools[growing]["owned"]
    assert {fixed, growing} <= set(list_pools())
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert daemon.socket in daemon.stdout()


@unless("default" not in list_pools(), "a pool named 'default' exists on this machine (another daemon?); not touching it")
def test_embedded_default_runs_pool_default_in_the_runtime_dir_and_prints_how_to_attach(start_daemon, monkeypatch):
    daemon = start_daemon(default_socket=True)
    assert stat.S_IMODE(os.stat(os.path.dirname(daemon.socket)).st_mode) == 0o700
    monkeypatch.delenv(SOCKET_ENV, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(daemon.runtime_dir))
    assert DaemonClient().socket_path == daemon.socket
    (pool,) = DaemonClient().list()
    assert (pool["name"], pool["capacity"], pool["slot_size"]) == ("default", 1024, 256)
    banner = daemon.stdout()
    assert "attach('default')" in banner and daemon.socket in banner
    assert daemon.stop() == 0
    assert "default" not in list_pools()


def test_library_process_attaches_and_allocates(start_daemon, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 32\n")))
    result = run_python(f"""
        from fastalloc_shm import attach
        from fastalloc_shm.client import DaemonClient, DaemonUnavailable
        print(DaemonClient({daemon.socket!r}).register([{pool_name!r}]))
        pool = attach({pool_name!r})
        handle = pool.allocate({{"id": 7, "tags": [1, 2]}})
        print(pool.get(handle))
        pool.release(handle)
        pool.close()
    """)
    assert result.returncode == 0, result.stderr
    assert "{'id': 7, 'tags': [1, 2]}" in result.stdout
    assert daemon.client.stats(pool_name)["total_allocations"] == 1


def test_a_pool_a_client_registers_is_watched_and_never_unlinked(start_daemon, pool_name):
    daemon = start_daemon(pools_toml())
    pool = FixedPool.create(pool_name, capacity=4)
    try:
        assert daemon.client.register([pool_name])["pools"] == [pool_name]
        (info,) = daemon.client.list()
        assert info["name"] == pool_name and not info["owned"]
        assert daemon.stop() == 0
        assert pool_name in list_pools()
    finally:
        pool.unlink()


def test_a_pool_unlinked_behind_the_daemons_back_is_let_go(start_daemon, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    unlink(pool_name)
    successor = FixedPool.create(pool_name, capacity=8)
    try:
        wait_for(lambda: "unlinked by another process" in daemon.stderr(), 5.0, "the daemon to notice")
        assert daemon.client.list() == []
        assert daemon.stop() == 0
        assert pool_name in list_pools(), "the daemon must not unlink a successor of the same name"
    finally:
        successor.unlink()


def test_create_destroy_stats_and_recover_ops(start_daemon, pool_name):
    daemon = start_daemon(pools_toml())
    pool = daemon.client.create(pool_name, "threadsafe", capacity=8, slot_size=64, persist=False)
    try:
        assert pool.kind == "threadsafe" and pool.capacity == 8
        handle = pool.allocate("x")
        stats = daemon.client.stats(pool_name)
        assert stats["current_usage"] == 1 and stats["hit_rate"] == 1.0
        assert pool_name in daemon.client.stats()
        assert daemon.client.recover(pool_name)["pool"] == pool_name
        assert daemon.client.ensure(pool_name, "threadsafe", capacity=8, slot_size=64).capacity == 8
        pool.release(handle)
    finally:
        pool.close()
    daemon.client.destroy(pool_name)
    assert pool_name not in list_pools()
    with pytest.raises(PoolNotFound):
        daemon.client.destroy(pool_name)
    with pytest.raises(ConfigError, match="capacity"):
        daemon.client.create(pool_name, capacity=0)


def test_register_refuses_a_dead_pid(start_daemon, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(FastallocError, match="not a running process"):
        daemon.client.register([pool_name], pid=dead.pid)


# -- the monitor -------------------------------------------------------------------------------


def test_killed_client_cached_slots_come_back_within_seconds(start_daemon, pool_name):
    capacity, batch = 64, 16
    table = f'kind = "threadlocal"\ncapacity = {capacity}\nbatch_size = {batch}\n'
    daemon = start_daemon(pools_toml((pool_name, table)))
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from fastalloc_shm import attach
        from fastalloc_shm.client import DaemonClient, DaemonUnavailable
        DaemonClient({daemon.socket!r}).register([{pool_name!r}])
        pool = attach({pool_name!r})
        pool.allocate("kept by the dead")   # takes a magazine of {batch} slots: 1 allocated, the rest cached
        print(pool.cached(), flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert int(worker.stdout.readline()) == batch - 1
        assert worker.pid in {c["pid"] for c in daemon.client.stats(pool_name)["clients"]}
    finally:
        worker.kill()
        worker.wait()
        worker.stdout.close()
    killed = time.monotonic()
    report = wait_for(lambda: daemon.client.stats(pool_name)["last_recovery"], 10.0, "the monitor to recover")
    elapsed = time.monotonic() - killed
    print(f"\ndead client's {report['cached_returned']} cached slots back after {elapsed * 1e3:.0f} ms"
          " (monitor interval 100 ms)")
    assert report["cached_returned"] == batch - 1 and worker.pid in report["dead_clients"]
    assert report["orphans_kept"] == 1
    pool = attach(pool_name)
    try:
        handles = [pool.allocate(i) for i in range(capacity - 1)]  # every slot but the dead one's value
        assert pool.try_allocate("one too many") is None
        pool.release_many(handles)
    finally:
        pool.close()
    assert "cached returned 15" in daemon.stderr()


def test_capacity_advice_in_the_log_once(start_daemon, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    pool = attach(pool_name)
    try:
        handles = [pool.allocate(i) for i in range(4)]
        assert pool.try_allocate(4) is None
        wait_for(lambda: "increase capacity" in daemon.stderr(), 5.0, "the hit-rate warning")
        time.sleep(0.5)  # a few more monitor passes
        assert daemon.stderr().count("increase capacity") == 1
        pool.release_many(handles)
    finally:
        pool.close()


# -- signals -----------------------------------------------------------------------------------


def test_sighup_adds_a_pool_from_the_edited_config(start_daemon, tmp_path, make_name):
    first, second = make_name(), make_name()
    daemon = start_daemon(pools_toml((first, "capacity = 4\n")))
    (tmp_path / "pools.toml").write_text(pools_toml((second, 'kind = "threadlocal"\ncapacity = 8\n')))
    try:
        daemon.proc.send_signal(signal.SIGHUP)

        def listed():
            pools = {p["name"]: p for p in daemon.client.list()}
            return pools if second in pools else None

        pools = wait_for(listed, 5.0, "the added pool")
        assert pools[second]["kind"] == "threadlocal"
        assert not pools[first]["declared"], "a pool removed from the config is kept, no longer declared"
        assert "removed from" in daemon.stderr()
    finally:
        unlink(second)


def test_sighup_with_a_broken_config_keeps_the_running_one(start_daemon, tmp_path, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    (tmp_path / "pools.toml").write_text("[pools.x]\ncapacity = 'many'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in daemon.stderr(), 5.0, "the reload error")
    assert [p["name"] for p in daemon.client.list()] == [pool_name]


def test_sigterm_exits_0_unlinks_owned_pools_and_keeps_persistent_ones(start_daemon, make_name):
    temporary, persistent = make_name(), make_name()
    daemon = start_daemon(pools_toml((temporary, "capacity = 4\n"), (persistent, "capacity = 4\npersist = true\n")))
    assert daemon.stop(signal.SIGTERM) == 0
    assert temporary not in list_pools()
    assert persistent in list_pools()
    assert not os.path.exists(daemon.socket)
    unlink(persistent)


def test_notify_socket_gets_ready_and_stopping(start_daemon, tmp_path, pool_name):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(START_TIMEOUT)
        daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")), env={"NOTIFY_SOCKET": address}, ready=False)
        assert b"READY=1" in listener.recv(4096).split(b"\n")
        assert daemon.stop() == 0
        assert b"STOPPING=1" in listener.recv(4096).split(b"\n")


def test_a_second_daemon_on_the_same_socket_refuses_to_start(start_daemon, tmp_path, pool_name):
    first = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    second = subprocess.run([sys.executable, "-m", "fastalloc_shmd", "--socket", first.socket,
                             "--config", str(tmp_path / "pools.toml")], capture_output=True, text=True, timeout=20)
    assert second.returncode == 1 and "already listening" in second.stderr
    assert first.client.ping()


# -- bad input on the socket -------------------------------------------------------------------


def raw_exchange(path: str, data: bytes, read: bool = True) -> dict | None:
    """Send raw bytes; return the reply's map, or None when the daemon closed without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(path)
        sock.sendall(data)
        if not read:
            return None
        header = sock.recv(4, socket.MSG_WAITALL)
        if len(header) < 4:
            return None
        (length,) = struct.unpack(">I", header)
        return msgpack.unpackb(sock.recv(length, socket.MSG_WAITALL))


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_malformed_requests_get_error_replies_and_the_daemon_keeps_serving(start_daemon, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    cases = {
        frame(b"\xc1"): "ProtocolError",                                   # not msgpack
        frame(msgpack.packb([1, 2])): "ProtocolError",                     # not a map
        frame(msgpack.packb({"op": "explode"})): "ProtocolError",          # unknown op
        frame(msgpack.packb({"nop": 1})): "ProtocolError",                 # no op
        frame(msgpack.packb({"op": "destroy"})): "ProtocolError",          # missing argument
        frame(msgpack.packb({"op": "stats", "name": 5})): "ProtocolError",  # wrong type
        frame(msgpack.packb({"op": "create", "name": "bad/name", "config": {"capacity": 1}})): "ConfigError",
        frame(msgpack.packb({"op": "create", "name": pool_name + "x", "config": {"capacity": 1, "nope": 2}})):
            "ConfigError",
        frame(msgpack.packb({"op": "recover", "name": pool_name, "orphan_policy": "eat"})): "ConfigError",
        struct.pack(">I", MAX_FRAME + 1): "ProtocolError",                 # oversized: replied, then closed
    }
    for data, expected in cases.items():
        reply = raw_exchange(daemon.socket, data)
        assert reply["ok"] is False and reply["error"]["type"] == expected, (data[:40], reply)
        assert reply["error"]["message"]
    for data in (os.urandom(4096), b"\x00\x00\x10", frame(b"")[:2], b""):  # garbage, truncated, nothing
        raw_exchange(daemon.socket, data, read=False)
    assert daemon.client.ping() and daemon.proc.poll() is None


def test_one_connection_survives_a_bad_frame(start_daemon, pool_name):
    daemon = start_daemon(pools_toml((pool_name, "capacity = 4\n")))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(daemon.socket)
        replies = []
        for body in (b"\x92\x01", msgpack.packb({"op": "ping"})):  # a truncated array, then a good request
            sock.sendall(frame(body))
            (length,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
            replies.append(msgpack.unpackb(sock.recv(length, socket.MSG_WAITALL)))
    assert [r["ok"] for r in replies] == [False, True]


# Requests that look almost right: real op and argument names, values of any msgpack type. No create or
# destroy: a random pool name must never touch a pool of another test or program.
REQUESTS = st.dictionaries(
    st.sampled_from(["op", "name", "kind", "config", "pid", "pools", "persist", "orphan_policy"]) | st.text(max_size=8),
    st.sampled_from(["ping", "list", "stats", "register", "recover", "explode"])
    | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=16) | st.booleans() | st.none()
    | st.lists(st.integers(0, 2**32), max_size=3) | st.dictionaries(st.text(max_size=8), st.integers(0, 100), max_size=3),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(body=st.one_of(st.binary(max_size=256), REQUESTS.map(msgpack.packb)))
def test_any_frame_body_gets_a_reply(start_daemon_once, body):
    reply = raw_exchange(start_daemon_once.socket, frame(body))
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)


@pytest.fixture(scope="module")
def start_daemon_once(tmp_path_factory):
    """One daemon (no pools) for the property test's many examples."""
    daemon = Daemon(tmp_path_factory.mktemp("fuzz"), [])
    try:
        yield daemon.wait_ready()
    finally:
        daemon.stop()


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_endpoint_is_scraped_and_parsed(start_daemon, pool_name):
    from prometheus_client.parser import text_string_to_metric_families

    daemon = start_daemon(pools_toml((pool_name, "capacity = 10\n")), "--metrics-port", "0")
    url = daemon.client.ping()["metrics"]
    assert url.startswith("http://127.0.0.1:")
    pool = attach(pool_name)
    try:
        handles = [pool.allocate(i) for i in range(3)]

        def scrape():
            with urllib.request.urlopen(url, timeout=5) as response:
                samples = {}
                for family in text_string_to_metric_families(response.read().decode()):
                    for s in family.samples:
                        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            return samples if samples.get(("fastalloc_pool_in_use_slots", (("pool", pool_name),))) == 3 else None

        samples = wait_for(scrape, 5.0, "the metrics to show 3 slots in use", interval=0.1)
        pool.release_many(handles)
    finally:
        pool.close()
    assert samples[("fastalloc_pool_capacity_slots", (("kind", "fixed"), ("pool", pool_name)))] == 10
    assert samples[("fastalloc_pool_utilization_ratio", (("pool", pool_name),))] == pytest.approx(0.3)
    assert samples[("fastalloc_pool_allocations_total", (("pool", pool_name),))] == 3
    assert samples[("fastalloc_shm_free_bytes", ())] > 0
    me = [key for key in samples if key[0] == "fastalloc_client_rss_bytes" and ("pid", str(os.getpid())) in key[1]]
    assert me and samples[me[0]] > 0


# -- config and advice, without a daemon -------------------------------------------------------


def test_config_reads_every_pool_field(tmp_path):
    path = tmp_path / "pools.toml"
    path.write_text(textwrap.dedent("""
        [pools.jobs]
        kind = "growing"
        capacity = 10
        slot_size = 128
        max_capacity = 100
        growth = { strategy = "exponential", factor = 1.5 }
        alignment = 64
        pre_initialize = true
        initializer = "builtins:dict"
        reset = ["builtins:list", "builtins:list"]
        huge_pages = true
        lock_timeout = 2.5
        orphan_policy = "reclaim"
        batch_size = 8
        mode = 0o640
        persist = true
    """))
    spec = daemon_config.load(str(path)).pools["jobs"]
    cfg = spec.config
    assert (spec.kind, spec.persist, cfg.capacity, cfg.slot_size, cfg.max_capacity) == ("growing", True, 10, 128, 100)
    assert cfg.growth_strategy.amount(10) == 5 and cfg.alignment == 64 and cfg.pre_initialize
    assert cfg.initializer == "builtins:dict" and cfg.reset == ("builtins:list", "builtins:list")
    assert cfg.huge_pages and cfg.lock_timeout == 2.5 and cfg.orphan_policy == "reclaim"
    assert cfg.batch_size == 8 and cfg.mode == 0o640


@pytest.mark.parametrize(("body", "message"), [
    ("capacity = 4\nslot = 8\n", "slot: unknown key"),
    ('capacity = 4\nkind = "pooly"\n', "kind"),
    ("slot_size = 4\n", "capacity: required"),
    ('capacity = 4\ngrowth = {strategy = "linear"}\n', "growth"),
    ("capacity = -1\n", "capacity"),
])
def test_config_errors_name_the_pool_and_key(tmp_path, body, message):
    path = tmp_path / "pools.toml"
    path.write_text(f"[pools.jobs]\n{body}")
    with pytest.raises(ConfigError, match=message) as info:
        daemon_config.load(str(path))
    assert "[pools.jobs]" in str(info.value) and str(path) in str(info.value)


def test_capacity_advice_rules():
    assert pool_warnings(PoolStatistics(capacity=10)) == {}
    assert "increase capacity" in pool_warnings(PoolStatistics(capacity=10, total_allocations=90,
                                                               allocation_failures=10))["low_hit_rate"]
    idle = PoolStatistics(capacity=10_000, peak_usage=10, total_allocations=999)
    assert pool_warnings(idle) == {}, "too little traffic to judge the peak"
    busy = PoolStatistics(capacity=10_000, peak_usage=10, total_allocations=1000)
    assert "consider reducing capacity" in pool_warnings(busy)["low_peak"]
    assert shm_warnings(100, 50) == {} and "free" in shm_warnings(100, 9)["low_shm"]


def test_warnings_are_logged_once_per_change(caplog):
    warnings = Warnings()
    with caplog.at_level("INFO", logger="fastalloc_shmd"):
        for _ in range(3):
            warnings.update("jobs", {"low_hit_rate": "increase capacity"})
        warnings.update("jobs", {})
        warnings.update("jobs", {})
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]

"""fastalloc-shmd against hostile peers: real daemon processes, real sockets, a real second uid.

Who may talk (SO_PEERCRED), what a frame may cost (memory, time), what a
request may make the daemon do (never call a named function), and that a
stopped lock holder never stalls the socket.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from pathlib import Path

import msgpack
import psutil
import pytest
import yaml

from fastalloc_shm import FixedPool, _protocol, attach
from fastalloc_shm.client import DaemonClient, DaemonError, DaemonUnavailable
from fastalloc_shm.errors import ConfigError
from fastalloc_shmd import config as daemon_config

from . import requirements, test_daemon
from .test_daemon import pools_toml, wait_for

NOBODY = 65534
needs_root = requirements.needs_root("to run a peer as uid 65534 (os.setuid)")


# test_daemon's fixture, registered here under this name.
_daemons = test_daemon.start_daemon


@pytest.fixture
def launch(request):
    """Start a real fastalloc-shmd subprocess (test_daemon's start_daemon), stopped and cleaned up after."""
    return request.getfixturevalue("_daemons")


def on_socket(daemon, path: str):
    """A daemon started with its own --socket: talk to it there, once it answers."""
    daemon.socket = path
    daemon.client = DaemonClient(path, timeout=5.0)
    return daemon.wait_ready()


def raw_call(path: str, message: dict, timeout: float = 5.0) -> dict:
    """One request over a fresh connection, bypassing DaemonClient's own checks (a hostile peer would)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(_protocol.encode(message))
        return _protocol.decode(_protocol.recv_frame(sock, time.monotonic() + timeout), request=False)


def peak_rss(pid: int) -> int:
    """VmHWM of a process: the most resident memory it ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def shared_dir():
    """A directory any uid may enter, for a socket that other uids can reach through the filesystem."""
    directory = Path(tempfile.mkdtemp(prefix="fastalloc-sock-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def ping_as(uid: int, path: str) -> str:
    """Ping the daemon from a process of `uid` (imports first, then drops privileges); its outcome as text."""
    code = textwrap.dedent(f"""
        import os
        from fastalloc_shm.client import DaemonClient
        from fastalloc_shm.errors import FastallocError
        os.setgid({uid}); os.setuid({uid})
        try:
            print("answered", DaemonClient({path!r}).ping()["pid"])
        except FastallocError as exc:
            print("refused", type(exc).__name__, exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@needs_root
@pytest.mark.parametrize("allowed", [False, True])
def test_a_peer_of_another_uid_is_refused_unless_the_config_allows_it(launch, shared_dir, pool_name, allowed):
    (shared_dir / "open").mkdir(mode=0o755)
    sock = str(shared_dir / "open" / "control.sock")
    access = f"allowed_uids = [{NOBODY}]\n" if allowed else "allowed_uids = [1234]\n"
    daemon = on_socket(launch(access + pools_toml((pool_name, "capacity = 4\n")), "--socket", sock, ready=False), sock)
    os.chmod(sock, 0o666)  # the filesystem lets anyone in: the peer check alone decides
    outcome = ping_as(NOBODY, sock)
    if allowed:
        assert outcome == f"answered {daemon.proc.pid}"
    else:
        assert outcome.startswith("refused DaemonError PermissionDenied: uid 65534 may not use"), outcome
        assert "allowed_uids" in outcome
        assert "refused pid" in daemon.stderr()
    assert daemon.client.ping()["pid"] == daemon.proc.pid


@needs_root
def test_socket_group_makes_the_directory_and_socket_reachable_for_that_group(launch, shared_dir, pool_name):
    sock = str(shared_dir / "run" / "control.sock")
    on_socket(launch(f"socket_group = {NOBODY}\n" + pools_toml((pool_name, "capacity = 4\n")), "--socket", sock,
                     ready=False), sock)
    directory = os.stat(os.path.dirname(sock))
    assert (directory.st_gid, directory.st_mode & 0o777) == (NOBODY, 0o750)
    assert (os.stat(sock).st_gid, os.stat(sock).st_mode & 0o777) == (NOBODY, 0o660)
    assert ping_as(NOBODY, sock).startswith("answered")  # a member of the group, by its gid


def test_a_frame_of_a_million_empty_maps_costs_the_daemon_no_memory(launch, pool_name):
    daemon = launch(pools_toml((pool_name, "capacity = 4\n")))
    body = msgpack.packb([{}] * ((1 << 20) - 16))
    assert len(body) <= _protocol.MAX_FRAME
    before = peak_rss(daemon.proc.pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(daemon.socket)
        sock.sendall(struct.pack(">I", len(body)) + body)
        reply = _protocol.decode(_protocol.recv_frame(sock, time.monotonic() + 10), request=False)
    assert reply["ok"] is False and reply["error"]["type"] == "ProtocolError", reply
    grown = peak_rss(daemon.proc.pid) - before
    assert grown < 3 * 2**20, f"peak RSS grew by {grown / 2**20:.1f} MiB"
    assert psutil.Process(daemon.proc.pid).is_running() and daemon.client.ping()


@pytest.mark.parametrize("config", [
    {"capacity": 4, "pre_initialize": True, "initializer": "os:abort"},
    {"capacity": 4, "reset": ["os:abort", "os:abort"]},
    {"capacity": 4, "growth_strategy": {"kind": "custom", "value": 0.0, "fn": "os:abort"}},
])
def test_a_create_request_naming_a_function_is_refused_and_the_daemon_lives(launch, pool_name, config):
    daemon = launch(pools_toml((pool_name + "-d", "capacity = 4\n")))
    reply = raw_call(daemon.socket, {"op": "create", "name": pool_name, "kind": "growing", "config": config})
    assert reply["ok"] is False and reply["error"]["type"] == "ConfigError", reply
    assert "daemon's config file" in reply["error"]["message"]
    assert daemon.proc.poll() is None and daemon.client.ping()
    assert not os.path.exists(f"/dev/shm/fastalloc.{pool_name}")
    with pytest.raises(ConfigError, match="config file"):
        daemon.client.create(pool_name, capacity=4, initializer="builtins:dict")


def test_a_slow_peer_is_dropped_at_the_frame_deadline_and_connections_per_uid_are_capped(launch, pool_name):
    daemon = launch("frame_deadline = 1.0\nmax_connections_per_uid = 3\n" + pools_toml((pool_name, "capacity = 4\n")))
    frame = _protocol.encode({"op": "ping"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(10)
        slow.connect(daemon.socket)
        started = time.monotonic()
        closed_after = None
        for byte in frame:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            time.sleep(0.3)
        reply = _protocol.recv_frame(slow, time.monotonic() + 5)
        closed_after = closed_after or time.monotonic() - started
        assert reply is not None and b"must arrive whole within 1.0 s" in bytes(reply)
        assert slow.recv(1) == b""  # then disconnected
    assert 0.9 <= closed_after < 2.5, closed_after
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for sock in idle:
            sock.connect(daemon.socket)
        wait_for(lambda: _over_cap(daemon.socket), 5.0, "the fourth connection of one uid to be refused")
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: _answers(daemon.client), 5.0, "a connection slot once the idle ones closed")


def _over_cap(path: str) -> bool:
    reply = raw_call(path, {"op": "ping"})
    return reply["ok"] is False and "holds 3 connections" in reply["error"]["message"]


def _answers(client: DaemonClient) -> bool:
    try:
        return bool(client.ping())
    except DaemonError:
        return False


def test_a_stopped_lock_holder_and_a_dead_client_never_stall_the_socket(launch, pool_name, tmp_path):
    daemon = launch(pools_toml((pool_name, "capacity = 16\nlock_timeout = 5.0\n")))
    fault_file = tmp_path / "fault"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from fastalloc_shm import attach\np = attach({pool_name!r})\np.allocate(1)\n"],
        env={**os.environ, "FASTALLOC_FAULT": "lock.acquired:stop", "FASTALLOC_FAULT_FILE": str(fault_file)},
    )
    try:
        wait_for(lambda: fault_file.exists() and psutil.Process(holder.pid).status() == psutil.STATUS_STOPPED,
                 10.0, "the holder to stop with the lock held")
        victim = subprocess.Popen([sys.executable, "-c", f"from fastalloc_shm import attach\np = attach({pool_name!r})\n"
                                   "import time; time.sleep(60)"])
        watcher = attach(pool_name)
        wait_for(lambda: victim.pid in {c.pid for c in watcher.clients()}, 10.0, "the second client to attach")
        watcher.close()
        victim.kill()
        victim.wait()
        worst = 0.0
        for _ in range(50):  # 2.5 s: many monitor passes (interval 0.1 s), each meeting the stopped holder
            started = time.perf_counter()
            daemon.client.ping()
            daemon.client.stats(pool_name)
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.05)
        assert worst < 0.1, f"a ping and stats took {worst * 1e3:.0f} ms"
        assert "retried every pass" in daemon.stderr()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # With the holder gone too, the next passes repair the pool.
    wait_for(lambda: daemon.client.stats(pool_name)["last_recovery"], 15.0, "the monitor to recover the pool")
    pool = attach(pool_name)
    pool.release(pool.allocate(2))
    pool.close()


def test_the_client_refuses_a_socket_in_a_directory_others_may_write(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(DaemonUnavailable, match="writable by group or others"):
        DaemonClient(str(loose / "control.sock")).ping()
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(DaemonUnavailable, match="symlink"):
        DaemonClient(str(tmp_path / "link" / "control.sock")).ping()


@needs_root
def test_the_client_refuses_a_socket_of_another_uid(shared_dir):
    """Finding 7: a directory another user made first, and a listener of another uid."""
    theirs = shared_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(DaemonUnavailable, match="belongs to uid 65534.*FASTALLOC_TRUSTED_UIDS"):
        DaemonClient(str(theirs / "control.sock")).ping()
    path = str(shared_dir / "impostor.sock")
    code = textwrap.dedent(f"""
        import os, socket, sys
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.setgid({NOBODY}); os.setuid({NOBODY})
        server.bind({path!r}); server.listen(1); print("ready", flush=True)
        conn, _ = server.accept(); conn.recv(100); conn.close()
    """)
    shared_dir.chmod(0o777)  # so nobody can bind there; the directory stays root's
    impostor = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout.readline().strip() == "ready"
        shared_dir.chmod(0o755)
        with pytest.raises(DaemonUnavailable, match="runs as uid 65534"):
            DaemonClient(path, trusted_uids=[]).ping()
    finally:
        impostor.kill()
        impostor.wait()


def test_a_client_trusts_the_daemons_uid_for_the_pools_it_creates(launch, pool_name):
    daemon = launch(pools_toml((pool_name + "-d", "capacity = 4\n")))
    pool = daemon.client.create(pool_name, capacity=4)
    try:
        assert isinstance(pool, FixedPool) and pool.capacity == 4
    finally:
        pool.close()
        daemon.client.destroy(pool_name)


def test_deploy_files_persist_the_kubernetes_pools_and_trust_the_daemons_uid():
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    documents = {d["kind"]: d for d in yaml.safe_load_all((deploy / "kubernetes.yaml").read_text())}
    pools = daemon_config.parse(tomllib.loads(documents["ConfigMap"]["data"]["pools.toml"]), "configmap").pools
    assert pools and all(spec.persist for spec in pools.values())  # a probe's restart must not unlink them
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    uid = str(pod["securityContext"]["runAsUser"])
    for container in pod["containers"]:
        assert {"name": "FASTALLOC_TRUSTED_UIDS", "value": uid} in container["env"], container["name"]
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["environment"]["FASTALLOC_TRUSTED_UIDS"] == "10001"
    assert "ENV FASTALLOC_TRUSTED_UIDS=10001" in (deploy / "Dockerfile").read_text()
    example = daemon_config.load(str(deploy / "pools.toml"))
    assert example.access.socket_group == "fastalloc"


@needs_root
def test_sighup_applies_new_access_rules(launch, shared_dir, pool_name, tmp_path):
    (shared_dir / "open").mkdir(mode=0o755)
    sock = str(shared_dir / "open" / "control.sock")
    daemon = on_socket(launch(pools_toml((pool_name, "capacity = 4\n")), "--socket", sock, ready=False), sock)
    os.chmod(sock, 0o666)
    assert ping_as(NOBODY, sock).startswith("refused DaemonError PermissionDenied")
    config = tmp_path / "pools.toml"  # the file the fixture wrote
    config.write_text(f"allowed_uids = [{NOBODY}]\n" + config.read_text())
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reloaded" in daemon.stderr(), 10.0, "the reload")
    assert ping_as(NOBODY, sock) == f"answered {daemon.proc.pid}"

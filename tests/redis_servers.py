"""Real Redis servers for the tests: a standalone server and a 3-node Redis Cluster on loopback.

Each helper is a context manager that starts `redis-server` processes (no
persistence, each in its own temp dir) on free loopback ports, waits until
they serve, and on exit stops every process it started and removes the dirs,
also when starting failed half-way. Nothing is mocked, and a missing
redis-server is an error, never a skip: tests/ensure_servers.sh installs it.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
HOST = "127.0.0.1"
# A cluster node also listens on its bus port, port + 10000, and ports end at 65535.
MIN_PORT, MAX_PORT = 20000, 55535
BUS_PORT_OFFSET = 10000
START_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 30.0
_rng = random.Random()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files a TLS server presents (cert, key) and trusts (CA)."""

    cert: Path
    key: Path
    ca: Path


@contextlib.contextmanager
def tls_certificates() -> Iterator[TlsFiles]:
    """A throwaway CA and a certificate for 127.0.0.1, as files (removed afterwards)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="fastalloc-tls-") as name:
        directory = Path(name)
        files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
        cert.cert_chain_pems[0].write_to_path(files.cert)
        cert.private_key_pem.write_to_path(files.key)
        ca.cert_pem.write_to_path(files.ca)
        yield files


@dataclass
class RedisServer:
    """One running redis-server."""

    port: int
    directory: Path
    process: subprocess.Popen
    tls: bool = False
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{HOST}:{self.port}/0"

    def restart(self) -> None:
        """kill -9 the server and start it again on its port and directory: it comes back with what
        its persistence kept (an RDB snapshot, an AOF), as after a crash."""
        self.process.kill()
        self.process.wait(timeout=5)
        log = self.directory / "redis.log"
        ready = log.read_text(errors="replace").count("Ready to accept connections")
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while log.read_text(errors="replace").count("Ready to accept connections") == ready:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start again; log:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


def free_port() -> int:
    """A loopback port that, and whose cluster bus port, nobody listens on now."""
    for _ in range(200):
        port = _rng.randrange(MIN_PORT, MAX_PORT)
        if _bindable(port) and _bindable(port + BUS_PORT_OFFSET):
            return port
    raise RuntimeError(f"no free loopback port pair in {MIN_PORT}..{MAX_PORT + BUS_PORT_OFFSET}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise RuntimeError(f"{program} is not installed; run tests/ensure_servers.sh (Debian: redis-server redis-tools)")
    return path


def _start(extra_args: list[str], tls: TlsFiles | None) -> RedisServer:
    """Start one server on a free port; retry with another port if that one was taken meanwhile."""
    server = _require(REDIS_SERVER)
    last_log = ""
    for _ in range(5):
        port = free_port()
        directory = Path(tempfile.mkdtemp(prefix="fastalloc-redis-"))
        log = directory / "redis.log"
        listen = ["--port", str(port)]
        if tls is not None:
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert),
                      "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        args = [server, *listen, "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(directory),
                "--logfile", str(log), "--daemonize", "no", *extra_args]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running = RedisServer(port, directory, process, tls is not None, tuple(args))
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if log.exists() and "Ready to accept connections" in log.read_text(errors="replace"):
                return running
            time.sleep(0.02)
        last_log = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        running.stop()
    raise RuntimeError(f"redis-server did not start; last log:\n{last_log}")


@contextlib.contextmanager
def redis_server(*extra_args: str, tls: TlsFiles | None = None) -> Iterator[RedisServer]:
    """A standalone redis-server (extra options as `--name value` arguments), stopped on exit."""
    server = _start(list(extra_args), tls)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of `nodes` primaries (no replicas) covering all slots, stopped on exit."""
    cli = _require(REDIS_CLI)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(redis_server("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                             "--cluster-node-timeout", "5000"))
            for _ in range(nodes)
        ]
        subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{s.port}" for s in servers), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=CLUSTER_TIMEOUT,
        )
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        while not all(_cluster_ok(cli, s.port) for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster on ports {[s.port for s in servers]} never reached cluster_state:ok")
            time.sleep(0.1)
        yield servers


def _cluster_ok(cli: str, port: int) -> bool:
    info = subprocess.run([cli, "-h", HOST, "-p", str(port), "cluster", "info"],
                          capture_output=True, text=True, timeout=10).stdout
    return "cluster_state:ok" in info and "cluster_slots_ok:16384" in info


class FaultyLink:
    """A TCP proxy in front of a server, to lose replies in transit on purpose.

    `cut_next_reply()`: the next reply from the server is dropped and that connection closed, as a
    network cut after the request got through does. `black_hole(True)`: every reply is dropped and
    the connections kept open (the client hears nothing until its timeout), until `black_hole(False)`.
    Requests always reach the server.
    """

    def __init__(self, port: int) -> None:
        self.upstream = port
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._hole = threading.Event()
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, query: str = "") -> str:
        return f"redis://{HOST}:{self.port}/0{query}"

    def retarget(self, port: int) -> None:
        """Send new connections to the server on `port` and drop the current ones (a failover behind
        one address, as a virtual IP or a Sentinel-aware proxy does it)."""
        self.upstream = port
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut_next_reply(self) -> None:
        self._cut.set()

    def black_hole(self, on: bool) -> None:
        (self._hole.set if on else self._hole.clear)()

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.upstream))
            self._sockets += [client, server]
            for source, sink, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, replies), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replies and self._hole.is_set():
                    continue
                if replies and self._cut.is_set():
                    self._cut.clear()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def faulty_link(server: RedisServer) -> Iterator[FaultyLink]:
    """A FaultyLink to `server`, closed on exit."""
    link = FaultyLink(server.port)
    try:
        yield link
    finally:
        link.close()

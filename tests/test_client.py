"""The control protocol's framing and DaemonClient's behaviour, against fake servers (no daemon)."""

from __future__ import annotations

import socket
import threading
import time

import msgpack
import pytest

from fastalloc_shm import _protocol
from fastalloc_shm._protocol import MAX_FRAME, ProtocolError
from fastalloc_shm.client import DaemonClient, DaemonError, DaemonUnavailable
from fastalloc_shm.errors import ConfigError, FastallocError, PoolNotFound


def test_frames_round_trip():
    a, b = socket.socketpair()
    with a, b:
        _protocol.send_frame(a, {"op": "ping"})
        _protocol.send_frame(a, {"op": "stats", "name": "jobs"})
        a.close()
        assert _protocol.decode(_protocol.recv_frame(b)) == {"op": "ping"}
        assert _protocol.decode(_protocol.recv_frame(b)) == {"op": "stats", "name": "jobs"}
        assert _protocol.recv_frame(b) is None, "a close between frames is a clean end"


def test_frame_is_big_endian_length_then_msgpack_map():
    assert _protocol.encode({"op": "ping"}) == b"\x00\x00\x00\x09" + msgpack.packb({"op": "ping"})


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb([1]), msgpack.packb(3), b"", msgpack.packb({}) + b"x"])
def test_decode_refuses_anything_but_one_map(body):
    with pytest.raises(ProtocolError):
        _protocol.decode(body)


def test_encode_refuses_a_message_over_the_limit():
    with pytest.raises(ProtocolError, match="limit"):
        _protocol.encode({"blob": b"x" * MAX_FRAME})


def test_recv_frame_refuses_oversized_and_truncated_frames():
    a, b = socket.socketpair()
    with a, b:
        a.sendall((MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(ProtocolError, match="announces"):
            _protocol.recv_frame(b)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"\x00\x00\x00\x10abc")
        a.close()
        with pytest.raises(ProtocolError, match="inside a frame"):
            _protocol.recv_frame(b)


def test_recv_frame_honours_its_deadline():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"\x00\x00")
        with pytest.raises(TimeoutError):
            _protocol.recv_frame(b, deadline=time.monotonic() + 0.1)


def test_socket_location_prefers_the_environment_then_the_runtime_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(_protocol.SOCKET_ENV, raising=False)
    assert _protocol.socket_candidates()[0] == str(tmp_path / "fastalloc-shm" / "control.sock")
    monkeypatch.setenv(_protocol.SOCKET_ENV, "/somewhere/else.sock")
    assert _protocol.socket_candidates() == ["/somewhere/else.sock"]


def test_no_daemon_is_daemon_unavailable_saying_how_to_start_it(tmp_path):
    path = str(tmp_path / "absent.sock")
    with pytest.raises(DaemonUnavailable) as info:
        DaemonClient(path).ping()
    message = str(info.value)
    assert path in message and "fastalloc-shmd" in message and "start" in message
    assert isinstance(info.value, FastallocError)


class FakeDaemon:
    """A unix socket server that answers every request with `reply` (or never, when reply is None)."""

    def __init__(self, path: str, reply: dict | None) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen()
        self.reply = reply
        self.requests: list[dict] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                body = _protocol.recv_frame(conn, time.monotonic() + 5)
                self.requests.append(_protocol.decode(body))
                if self.reply is None:
                    self.closing.wait(5)
                else:
                    _protocol.send_frame(conn, self.reply)

    def close(self) -> None:
        self.closing.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def fake_daemon(tmp_path):
    servers = []

    def start(reply: dict | None) -> str:
        path = str(tmp_path / f"fake{len(servers)}.sock")
        servers.append(FakeDaemon(path, reply))
        return path

    start.servers = servers
    yield start
    for server in servers:
        server.close()


def test_a_silent_daemon_times_out_as_daemon_unavailable(fake_daemon):
    client = DaemonClient(fake_daemon(None), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="did not answer 'ping' within 0.3 s"):
        client.ping()
    assert time.monotonic() - started < 1.0


def test_errors_come_back_as_the_library_exception_they_name(fake_daemon):
    client = DaemonClient(fake_daemon(_protocol.error("PoolNotFound", "no pool named 'x'")))
    with pytest.raises(PoolNotFound, match="no pool named 'x'"):
        client.destroy("x")
    client = DaemonClient(fake_daemon(_protocol.error("ProtocolError", "unknown op")))
    with pytest.raises(DaemonError, match="ProtocolError: unknown op"):
        client.ping()


def test_register_sends_this_pid_and_the_pool_names(fake_daemon):
    path = fake_daemon(_protocol.ok({"pid": 1, "pools": ["a"]}))
    DaemonClient(path).register("a")
    (request,) = fake_daemon.servers[0].requests
    assert request["op"] == "register" and request["pools"] == ["a"] and request["pid"] > 0


def test_create_refuses_callables_the_daemon_cannot_import(fake_daemon):
    client = DaemonClient(fake_daemon(_protocol.ok({})))
    with pytest.raises(ConfigError, match="initializer"):
        client.create("x", capacity=4, initializer=lambda: 0)
    assert fake_daemon.servers[0].requests == []

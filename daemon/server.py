"""The control socket: frames in, Registry calls, frames out.

One thread per connection (socketserver's ThreadingMixIn), many requests per
connection. Nothing a peer sends stops the server: a frame that is not a
msgpack map, or names an unknown op, or carries bad arguments gets an error
reply and the connection stays usable; a frame announcing more than 1 MiB
gets an error reply and the connection is closed (the stream cannot be
resynchronized after it); an unexpected exception inside an op becomes an
InternalError reply and a traceback in the log.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable
from typing import Any

from fastalloc_shm import _protocol
from fastalloc_shm._protocol import ProtocolError
from fastalloc_shm.config import PoolConfig
from fastalloc_shm.errors import ConfigError, FastallocError
from fastalloc_shm.kinds import POOL_KINDS

from .config import PoolSpec
from .registry import Registry

log = logging.getLogger("fastalloc_shmd")
# Bounds on what peers can hold: a connection is a thread, and a silent peer
# (or one that stops mid-frame) is dropped after IDLE_TIMEOUT.
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 60.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MISSING = object()


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The daemon's unix socket (mode 0600), answering the ops of `_protocol.OPS`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, registry: Registry, ping: Callable[[], dict[str, Any]]) -> None:
        _remove_stale_socket(path)
        # The socket is created 0600 from the start, not chmod-ed after a window.
        umask = os.umask(0o177)
        try:
            super().__init__(path, _Connection)
        finally:
            os.umask(umask)
        self.path = path
        self._inode = os.stat(path).st_ino
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.ops: dict[str, Callable[[dict[str, Any], int], Any]] = {
            "ping": lambda request, peer: ping(),
            "list": lambda request, peer: registry.list(),
            "create": lambda request, peer: _create(registry, request),
            "destroy": lambda request, peer: registry.destroy(_arg(request, "name", str)),
            "stats": lambda request, peer: _stats(registry, request),
            "register": lambda request, peer: _register(registry, request, peer),
            "recover": lambda request, peer: _recover(registry, request),
        }

    def start(self) -> threading.Thread:
        """Serve in a background thread."""
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="fastalloc-shmd-control", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting, close the socket, and remove its file if it is still ours."""
        self.shutdown()
        self.server_close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        log.warning("control socket: %d connections open; refusing another", MAX_CONNECTIONS)
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def answer(self, body: bytes, peer: int) -> dict[str, Any]:
        """The reply to one frame body; never raises."""
        try:
            request = _protocol.decode(body)
            op = request.get("op")
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ProtocolError(f"unknown op {op!r}; the ops are {', '.join(_protocol.OPS)}")
            return _protocol.ok(handler(request, peer))
        except FastallocError as exc:
            return _protocol.error(type(exc).__name__, str(exc))
        except Exception as exc:
            log.exception("control socket: request failed")
            return _protocol.error("InternalError", f"{type(exc).__name__}: {exc}")


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: read frames and answer each until the peer closes."""

    server: ControlServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IDLE_TIMEOUT)
        peer = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0]
        while True:
            try:
                body = _protocol.recv_frame(sock)
            except ProtocolError as exc:
                self._send(sock, _protocol.error("ProtocolError", str(exc)))
                return
            except OSError:  # idle timeout, reset by peer
                return
            if body is None or not self._send(sock, self.server.answer(body, peer)):
                return

    @staticmethod
    def _send(sock: socket.socket, reply: dict[str, Any]) -> bool:
        try:
            frame = _protocol.encode(reply)
        except (ProtocolError, TypeError, ValueError) as exc:
            frame = _protocol.encode(_protocol.error("InternalError", f"reply cannot be sent: {exc}"))
        try:
            sock.sendall(frame)
            return True
        except OSError:
            return False


def _create(registry: Registry, request: dict[str, Any]) -> dict[str, Any]:
    kind = _arg(request, "kind", str, "fixed")
    if kind not in POOL_KINDS:
        raise ConfigError(f"kind: {kind!r} is not one of {', '.join(POOL_KINDS)}")
    spec = PoolSpec(_arg(request, "name", str), kind, _pool_config(_arg(request, "config", dict)),
                    _arg(request, "persist", bool, False))
    return registry.create(spec, exist_ok=_arg(request, "exist_ok", bool, False))


def _stats(registry: Registry, request: dict[str, Any]) -> dict[str, Any]:
    name = _arg(request, "name", str, None)
    return registry.stats_all() if name is None else registry.stats(name)


def _register(registry: Registry, request: dict[str, Any], peer: int) -> dict[str, Any]:
    pools = _arg(request, "pools", list)
    if not all(isinstance(name, str) for name in pools):
        raise ProtocolError("register: 'pools' must be a list of pool names")
    return registry.register(_arg(request, "pid", int, peer), pools)


def _recover(registry: Registry, request: dict[str, Any]) -> Any:
    name = _arg(request, "name", str, None)
    policy = _arg(request, "orphan_policy", str, None)
    if name is None:
        return [report.to_dict() for report in registry.recover_all(policy)]
    return registry.recover(name, policy).to_dict()


def _pool_config(record: dict[str, Any]) -> PoolConfig:
    """A PoolConfig from a create request's `config` (PoolConfig.to_record() form; fields may be left out)."""
    if "capacity" not in record:
        raise ConfigError("capacity: required")
    values = PoolConfig(capacity=record["capacity"]).to_record()
    unknown = set(record) - set(values)
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: not a PoolConfig field")
    values.update(record)
    try:
        return PoolConfig.from_record(values)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"growth_strategy: expected {{'kind': ..., 'value': ...}} ({exc})") from None


def _arg(request: dict[str, Any], key: str, kind: type, default: Any = _MISSING) -> Any:
    """Argument `key` of a request, checked against `kind` (a bool is not an int here)."""
    value = request.get(key, default)
    if value is _MISSING:
        raise ProtocolError(f"{request.get('op')}: argument {key!r} is required")
    if value is not default and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ProtocolError(f"{request.get('op')}: argument {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a daemon that died; refuse if one still answers on it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FastallocError(f"{path} exists and is not a socket; remove it or pass another --socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
    raise FastallocError(f"another fastalloc-shmd is already listening on {path}")

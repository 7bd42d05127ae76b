"""The control socket: frames in, Registry calls, frames out.

One thread per connection (socketserver's ThreadingMixIn), many requests per
connection. A peer is served only if its SO_PEERCRED uid is the daemon's,
root's, or allowed by the config (by uid or group), and while it holds fewer
than `max_connections_per_uid` connections; anyone else gets an error reply
and is disconnected. A frame must arrive whole within `frame_deadline`
seconds of its first byte, so a peer that trickles bytes cannot keep a
connection slot. Nothing a peer sends stops the server: a frame that is not a
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
import threading
import time
from collections.abc import Callable
from typing import Any

from fastalloc_shm import _protocol
from fastalloc_shm._protocol import ProtocolError
from fastalloc_shm.config import PoolConfig
from fastalloc_shm.errors import ConfigError, FastallocError
from fastalloc_shm.kinds import DEFAULT_KIND, POOL_KINDS

from .config import Access, PoolSpec
from .registry import Registry

log = logging.getLogger("fastalloc_shmd")
# Bounds on what peers can hold: a connection is a thread; a silent peer is
# dropped after IDLE_TIMEOUT between frames, a slow one at the frame deadline.
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 60.0
_MISSING = object()


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The daemon's unix socket (mode 0600), answering the ops of `_protocol.OPS`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, registry: Registry, ping: Callable[[], dict[str, Any]],
                 access: Access | None = None) -> None:
        _remove_stale_socket(path)
        self.access = access or Access()
        # The socket is created 0600 from the start, not chmod-ed after a window;
        # 0660 of the configured group only in a directory that group may enter.
        umask = os.umask(0o177)
        try:
            super().__init__(path, _Connection)
        finally:
            os.umask(umask)
        group = self.access.socket_gid()
        if group is not None:
            os.chown(path, -1, group)
            os.chmod(path, 0o660)
        self.path = path
        self._inode = os.stat(path).st_ino
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._per_uid: dict[int, int] = {}
        self._per_uid_lock = threading.Lock()
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
        pid, uid, gid = _protocol.peer_credentials(request)
        if not self.access.allows(uid, {gid} | _supplementary_groups(pid)):
            log.warning("control socket: refused pid %d (uid %d, gid %d): not allowed by the config", pid, uid, gid)
            _refuse(request, f"uid {uid} may not use this fastalloc-shmd; its config's allowed_uids/allowed_gids"
                    " name who may")
            return False
        with self._per_uid_lock:
            if self._per_uid.get(uid, 0) >= self.access.max_connections_per_uid:
                log.warning("control socket: uid %d holds %d connections; refusing another", uid,
                            self._per_uid[uid])
                _refuse(request, f"uid {uid} holds {self._per_uid[uid]} connections, the most one uid may")
                return False
            if not self._slots.acquire(blocking=False):
                log.warning("control socket: %d connections open; refusing another", MAX_CONNECTIONS)
                _refuse(request, f"{MAX_CONNECTIONS} connections open; try again")
                return False
            self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        uid = _protocol.peer_credentials(request)[1]
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._per_uid_lock:
                self._per_uid[uid] -= 1
                if not self._per_uid[uid]:
                    del self._per_uid[uid]
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
        peer = _protocol.peer_credentials(sock)[0]
        deadline = self.server.access.frame_deadline
        while True:
            try:
                sock.settimeout(IDLE_TIMEOUT)
                if not sock.recv(1, socket.MSG_PEEK):
                    return
            except OSError:  # idle past IDLE_TIMEOUT, or reset by the peer
                return
            try:
                body = _protocol.recv_frame(sock, time.monotonic() + deadline)
            except ProtocolError as exc:
                self._send(sock, _protocol.error("ProtocolError", str(exc)))
                return
            except TimeoutError:
                log.warning("control socket: pid %d did not send a whole frame within %s s; disconnected", peer, deadline)
                self._send(sock, _protocol.error("ProtocolError", f"a frame must arrive whole within {deadline} s"))
                return
            except OSError:  # reset by the peer
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
            sock.settimeout(IDLE_TIMEOUT)
            sock.sendall(frame)
            return True
        except OSError:
            return False


def _refuse(sock: socket.socket, message: str) -> None:
    """An error reply to a peer about to be disconnected; best effort, never blocking for long."""
    try:
        sock.settimeout(0.5)
        sock.sendall(_protocol.encode(_protocol.error("PermissionDenied", message)))
    except OSError:
        pass


def _supplementary_groups(pid: int) -> set[int]:
    """The peer's supplementary groups (SO_PEERCRED gives only the primary one)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _create(registry: Registry, request: dict[str, Any]) -> dict[str, Any]:
    kind = _arg(request, "kind", str, DEFAULT_KIND)
    if kind not in POOL_KINDS:
        raise ConfigError(f"kind: {kind!r} is not one of {', '.join(POOL_KINDS)}")
    record = _arg(request, "config", dict)
    for field_name in CALLABLE_FIELDS:
        if _names_a_callable(field_name, record.get(field_name)):
            raise ConfigError(
                f"{field_name}: the daemon imports or calls no function named in a request; declare a pool with"
                " callables in the daemon's config file ([pools.NAME] in its TOML) and reload it (SIGHUP)"
            )
    spec = PoolSpec(_arg(request, "name", str), kind, _pool_config(record), _arg(request, "persist", bool, False))
    return registry.create(spec, exist_ok=_arg(request, "exist_ok", bool, False))


CALLABLE_FIELDS = ("initializer", "reset", "growth_strategy")


def _names_a_callable(field_name: str, value: Any) -> bool:
    if field_name == "growth_strategy":
        return isinstance(value, dict) and (value.get("kind") == "custom" or value.get("fn") is not None)
    return value is not None


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

"""The control protocol of fastalloc-shmd, shared by the daemon and DaemonClient.

A frame is a 4-byte big-endian length followed by that many bytes holding one
msgpack map (at most MAX_FRAME bytes). A request is `{"op": str, ...}`; a
reply is `{"ok": True, "result": ...}` or `{"ok": False, "error": {"type":
str, "message": str}}`. The daemon (daemon/server.py) and the client
(client.py) both frame through this module, so the format lives in one place,
as does the rule for where the control socket is.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import time
from typing import Any

import msgpack

from .errors import FastallocError

MAX_FRAME = 1 << 20
_LENGTH = struct.Struct(">I")
OPS = ("ping", "list", "create", "destroy", "stats", "register", "recover")
SOCKET_ENV = "FASTALLOC_SHMD_SOCKET"
_SOCKET_DIR = "fastalloc-shm"
_SOCKET_FILE = "control.sock"
SYSTEM_SOCKET = f"/run/{_SOCKET_DIR}/{_SOCKET_FILE}"


class ProtocolError(FastallocError):
    """A frame or request that is not a valid message: too large, not msgpack, not a map, unknown op."""


def socket_candidates() -> list[str]:
    """Where the control socket may be, in order of preference.

    `$FASTALLOC_SHMD_SOCKET` alone when set; else the user's runtime directory,
    the system one (`/run/fastalloc-shm`, the systemd unit's RuntimeDirectory),
    and a per-user directory under the temp dir.
    """
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return [explicit]
    paths = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(os.path.join(runtime, _SOCKET_DIR, _SOCKET_FILE))
    paths.append(SYSTEM_SOCKET)
    paths.append(os.path.join(tempfile.gettempdir(), f"{_SOCKET_DIR}-{os.getuid()}", _SOCKET_FILE))
    return paths


def encode(message: dict[str, Any]) -> bytes:
    """One frame holding `message`; ProtocolError when it would pass MAX_FRAME."""
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes is larger than the {MAX_FRAME}-byte frame limit")
    return _LENGTH.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """The map a frame's body holds; ProtocolError for anything else."""
    try:
        message = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"frame body is not one msgpack value ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame body is a msgpack {type(message).__name__}; expected a map")
    return message


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Frame `message` and send all of it."""
    sock.sendall(encode(message))


def recv_frame(sock: socket.socket, deadline: float | None = None) -> bytes | None:
    """The body of the next frame, or None when the peer closed between frames.

    Raises ProtocolError for a frame that announces more than MAX_FRAME bytes
    (the stream cannot be resynchronized after it) or ends early, and
    TimeoutError when `deadline` (a time.monotonic() value) passes first.
    """
    header = _recv_exactly(sock, _LENGTH.size, deadline, at_boundary=True)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame announces {length} bytes; the limit is {MAX_FRAME}")
    return _recv_exactly(sock, length, deadline, at_boundary=False)


def ok(result: Any) -> dict[str, Any]:
    """A success reply."""
    return {"ok": True, "result": result}


def error(kind: str, message: str) -> dict[str, Any]:
    """An error reply; `kind` is an exception class name."""
    return {"ok": False, "error": {"type": kind, "message": message}}


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None, at_boundary: bool) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for a frame")
            sock.settimeout(remaining)
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            if at_boundary and not chunks:
                return None
            raise ProtocolError(f"connection closed inside a frame ({len(chunks)} of {size} bytes received)")
        chunks += chunk
    return bytes(chunks)

"""The control protocol of fastalloc-shmd, shared by the daemon and DaemonClient.

A frame is a 4-byte big-endian length followed by that many bytes holding one
msgpack map (at most MAX_FRAME bytes). A request is `{"op": str, ...}`; a
reply is `{"ok": True, "result": ...}` or `{"ok": False, "error": {"type":
str, "message": str}}`. The daemon (daemon/server.py) and the client
(client.py) both frame through this module, so the format lives in one place,
as does the rule for where the control socket is.

A frame is decoded only after a scan of its structure that allocates nothing:
at most MAX_OBJECTS values, nested at most MAX_DEPTH deep (a 1 MiB frame of
empty maps would otherwise cost ~75 MiB of Python objects); msgpack then
bounds each string, binary, array and map. A client checks the socket before
it sends: its directory (owned by a trusted uid, not a symlink, not writable
by group or others) and the server's SO_PEERCRED uid.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import tempfile
import time
from typing import Any

import msgpack

from .errors import FastallocError

MAX_FRAME = 1 << 20
# Requests are small and shallow: {"op", ..., "config": {..., "growth_strategy": {...}, "reset": [...]}},
# three containers deep.
MAX_DEPTH = 3
MAX_OBJECTS = 4096
UNPACK_LIMITS = {"max_str_len": 64 << 10, "max_bin_len": 64 << 10, "max_array_len": 1024, "max_map_len": 256,
                 "max_ext_len": 0}
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
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


def decode(body: bytes, request: bool = True) -> dict[str, Any]:
    """The map a frame's body holds; ProtocolError for anything else.

    A request is checked against the limits before anything is allocated; a
    reply (`request=False`, from a daemon the client checked) only by msgpack's
    own bound, the frame's length."""
    if request:
        scan(body)
    try:
        message = msgpack.unpackb(body, raw=False, **(UNPACK_LIMITS if request else {}))
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"frame body is not one msgpack value ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame body is a msgpack {type(message).__name__}; expected a map")
    return message


# msgpack first bytes: fixed-size scalars and their payload lengths (the type byte excluded).
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
# Variable-length strings, binaries and extensions: the size of their length field (ext: plus a type byte).
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
          0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def scan(body: bytes) -> None:
    """ProtocolError unless `body` is one msgpack value of at most MAX_OBJECTS values nested at most MAX_DEPTH.

    Walks the encoding without building anything, and stops at the first
    value past a limit, so a hostile frame costs microseconds, not memory."""
    pending = [1]  # values still to read at each open nesting level
    pos, objects, end = 0, 0, len(body)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            raise ProtocolError("frame body is not one msgpack value (it ends inside one)")
        objects += 1
        if objects > MAX_OBJECTS:
            raise ProtocolError(f"frame holds more than {MAX_OBJECTS} values; requests are small")
        byte = body[pos]
        pos += 1
        children = -1
        if byte <= 0x7F or byte >= 0xE0:
            continue
        if 0x80 <= byte <= 0x8F:
            children = 2 * (byte & 0x0F)
        elif 0x90 <= byte <= 0x9F:
            children = byte & 0x0F
        elif 0xA0 <= byte <= 0xBF:
            pos += byte & 0x1F
        elif byte in _FIXED:
            pos += _FIXED[byte]
        elif byte in _SIZED:
            width, extra = _SIZED[byte]
            pos += width + extra + int.from_bytes(body[pos:pos + width], "big")
        elif byte in _CONTAINERS:
            width, per_entry = _CONTAINERS[byte]
            children = per_entry * int.from_bytes(body[pos:pos + width], "big")
            pos += width
        else:
            raise ProtocolError(f"frame body is not msgpack (byte {byte:#04x} at offset {pos - 1})")
        if children >= 0:
            if len(pending) > MAX_DEPTH:
                raise ProtocolError(f"frame nests deeper than {MAX_DEPTH} levels; requests are shallow")
            if children > MAX_OBJECTS:
                raise ProtocolError(f"frame holds more than {MAX_OBJECTS} values; requests are small")
            pending.append(children)
    if pos > end:
        raise ProtocolError("frame body is not one msgpack value (it ends inside one)")
    if pos < end:
        raise ProtocolError(f"frame body is not one msgpack value ({end - pos} bytes after it)")


def check_socket(path: str, trusted: frozenset[int]) -> str | None:
    """Why the socket at `path` may not be the daemon's (None: its directory passes).

    Its directory must belong to a trusted uid, not be a symlink, and not be
    writable by group or others: else someone else could have put the socket there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None  # nothing there: connecting says "not running"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{directory} is a symlink or not a directory"
    if st.st_uid not in trusted:
        return (f"{directory} belongs to uid {st.st_uid}, not to a trusted uid ({', '.join(map(str, sorted(trusted)))});"
                " if that is the daemon's user, set FASTALLOC_TRUSTED_UIDS to its uid")
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        return f"{directory} is writable by group or others (mode {mode:o}), so anyone could replace the socket"
    return None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    return PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Frame `message` and send all of it."""
    sock.sendall(encode(message))


def recv_frame(sock: socket.socket, deadline: float | None = None) -> bytearray | None:
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


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None, at_boundary: bool) -> bytearray | None:
    # Received in place into one buffer of the announced size: a frame costs its length once.
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for a frame")
            sock.settimeout(remaining)
        count = sock.recv_into(view[received:], size - received)
        if not count:
            if at_boundary and not received:
                return None
            raise ProtocolError(f"connection closed inside a frame ({received} of {size} bytes received)")
        received += count
    view.release()
    return buffer

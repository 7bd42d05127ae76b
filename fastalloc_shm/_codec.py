"""Values in and out of slots, for every backend: msgpack bytes, written and read by msgspec.

A slot holds one msgpack object, whoever wrote it, so
`msgpack.unpackb(bytes(pool.buffer(h)))` reads any value. Two codecs share
that format:

- the **fast** one, msgspec's msgpack encoder and decoder (2–3× msgpack-python
  per call, measured in benchmarks/), for *plain* values: exact None, bool,
  int, float, str, bytes, and lists and dicts of them (the core's `is_plain`
  walk decides, running no Python code). For those msgspec writes the same
  bytes as msgpack-python and reads them back as the same value;
- the **full** one, msgpack-python, for every other value, with today's rules:
  a tuple, a subclass, an `ExtType` or `Timestamp` is stored as msgpack-python
  stores it, and a value that would not read back (a map keyed by a tuple) is
  refused. msgspec would store a set, a datetime or a dataclass as something
  else (a list, a string, a map), so those stay refused as before.

Reading takes the fast decoder, except for slot bytes that may hold a msgpack
Timestamp (ext -1), which msgspec would return as a datetime: the core checks
the bytes (codec.c) and hands those to msgpack-python. Other ext types come
back as `msgpack.ExtType`, as they always did.

A **typed** pool (`value_type=`) has one codec: msgspec encodes, and decodes
into the type; a write is validated by decoding its bytes once with the type's
decoder, so a value of the wrong shape is refused at `allocate`/`set` with
msgspec's message naming the field, never found later by a reader.

The daemon's control frames are not values: they stay on msgpack-python
(`_protocol.py`), whose `max_*_len` limits bound what a hostile frame can make
the daemon allocate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import msgpack
import msgspec

from . import _core
from .errors import SerializationError

# unpackb bounds every string, array and map by the length of its input, and
# the input is at most one slot: a damaged slot cannot make it allocate more.
UNPACK_OPTIONS: dict[str, Any] = {"raw": False, "strict_map_key": False}


class Unreadable(TypeError):
    """The value packs, but its bytes would not unpack (a map keyed by a tuple)."""


def _ext(code: int, data: memoryview) -> msgpack.ExtType:
    """msgspec's hook for ext types: the ExtType msgpack-python has always returned."""
    return msgpack.ExtType(code, bytes(data))


def full_pack_function() -> Callable[[Any], bytes]:
    """msgpack-python's pack(value) -> bytes, refusing values that would not read back.

    msgpack writes a tuple as an array, and an array read back is a list, which
    cannot be a map key: `{(1, 2): "x"}` packs, but no get() could ever unpack it.
    Only a tuple can be such a key (lists and dicts are unhashable), so the shared
    packer runs with strict_types: exact builtin types pack in C in one call, and
    anything else (a tuple, a subclass) makes it raise before it calls any Python
    code. That rarer value is packed by a fresh packer and decoded once to prove it
    reads back. A default= callback would be Python code running mid-pack, where
    another thread could switch in and interleave its bytes into the shared
    packer's buffer.
    """
    strict = msgpack.Packer(use_bin_type=True, autoreset=True, strict_types=True).pack
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def pack(value: Any) -> bytes:
        try:
            return strict(value)
        except TypeError:
            pass
        data = packb(value, use_bin_type=True)
        try:
            unpackb(data, **UNPACK_OPTIONS)
        except TypeError:
            raise Unreadable(
                "a map key is a tuple, which msgpack stores as an array and which cannot be a key when read back; "
                "use str, int, float, bytes, bool or None keys"
            ) from None
        return data

    return pack


full_unpack: Callable[[bytes], Any] = functools.partial(msgpack.unpackb, **UNPACK_OPTIONS)


class Codec:
    """One pool's way with values: `pack`/`unpack` for a backend written in Python (RedisPool),
    and `core_arguments()` for the compiled core, which makes the same choices in C."""

    def __init__(self, value_type: Any = None) -> None:
        self.value_type = value_type
        # Encoders and decoders are per pool: msgspec's are thread-safe, and a typed one holds its type.
        encode = msgspec.msgpack.Encoder().encode
        if value_type is None:
            self._pack_plain: Callable[[Any], bytes] | None = encode
            self._unpack_plain: Callable[[bytes], Any] | None = msgspec.msgpack.Decoder(ext_hook=_ext).decode
            self._pack_full = full_pack_function()
            self._unpack_full = full_unpack
        else:
            decode = msgspec.msgpack.Decoder(value_type, ext_hook=_ext).decode

            def pack_typed(value: Any) -> bytes:
                data = encode(value)
                decode(data)  # the check: it reads back as value_type (msgspec names a wrong field)
                return data

            self._pack_plain = self._unpack_plain = None
            self._pack_full, self._unpack_full = pack_typed, decode

    def core_arguments(self) -> dict[str, Any]:
        return {"pack": self._pack_full, "unpack": self._unpack_full, "pack_plain": self._pack_plain,
                "unpack_plain": self._unpack_plain}

    def pack(self, value: Any) -> bytes:
        if self._pack_plain is not None and _core.is_plain(value):
            try:
                return self._pack_plain(value)
            except (OverflowError, TypeError, ValueError):
                pass  # e.g. an int past 64 bits: the full packer says what is wrong, in its words
        return self._pack_full(value)

    def unpack(self, data: bytes) -> Any:
        if self._unpack_plain is not None and not _may_hold_timestamp(data):
            return self._unpack_plain(data)
        return self._unpack_full(data)


def _may_hold_timestamp(data: bytes) -> bool:
    """As codec.c's may_hold_timestamp: a msgpack Timestamp's ext header may be in these bytes."""
    return b"\xff" in data and (b"\xd6\xff" in data or b"\xd7\xff" in data or b"\xc7\x0c\xff" in data)


def pack_error(value: Any, exc: Exception) -> SerializationError:
    if isinstance(exc, Unreadable):
        return SerializationError(f"cannot store {type(value).__name__}: {exc}")
    if isinstance(exc, msgspec.ValidationError):
        return SerializationError(f"cannot store {type(value).__name__}: not a value of the pool's value_type ({exc})")
    return SerializationError(
        f"cannot pack {type(value).__name__} with msgpack ({exc}); store dicts, lists, str, bytes, int, float, bool, None"
    )


def unpack_error(handle: int | None, exc: Exception) -> SerializationError:
    """`handle` is None for a channel's item: its slot is already free again (get took it)."""
    what = "a channel's item" if handle is None else f"stored value of handle {handle:#x}"
    fix = "it is dropped" if handle is None else "set() it again"
    if isinstance(exc, msgspec.ValidationError):
        return SerializationError(f"{what} is not of the pool's value_type ({exc}); {fix}")
    return SerializationError(f"{what} is not valid msgpack ({exc}); {fix}")

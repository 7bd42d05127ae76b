"""msgpack in and out of slots: never pickle, bounded unpacking, and only values that read back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from .errors import SerializationError

# unpackb bounds every string, array and map by the length of its input, and
# the input is at most one slot: a damaged slot cannot make it allocate more.
UNPACK_OPTIONS: dict[str, Any] = {"raw": False, "strict_map_key": False}


class Unreadable(TypeError):
    """The value packs, but its bytes would not unpack (a map keyed by a tuple)."""


def pack_function() -> Callable[[Any], bytes]:
    """A pack(value) -> bytes for one pool, refusing values that would not read back.

    msgpack writes a tuple as an array, and an array read back is a list, which
    cannot be a map key: `{(1, 2): "x"}` packs, but no get() could ever unpack it.
    Only a tuple can be such a key (lists and dicts are unhashable), so the shared
    packer runs with strict_types: exact builtin types, the common case, pack in C
    in one call (~15 ns over a bare packer, measured), and anything else (a tuple, a
    subclass) makes it raise before it calls any Python code. That rarer value is
    packed by a fresh packer and decoded once to prove it reads back (~1.5 us). A
    default= callback would be Python code running mid-pack, where another thread
    could switch in and interleave its bytes into the shared packer's buffer.
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


def pack_error(value: Any, exc: Exception) -> SerializationError:
    if isinstance(exc, Unreadable):
        return SerializationError(f"cannot store {type(value).__name__}: {exc}")
    return SerializationError(
        f"cannot pack {type(value).__name__} with msgpack ({exc}); store dicts, lists, str, bytes, int, float, bool, None"
    )


def unpack_error(handle: int, exc: Exception) -> SerializationError:
    return SerializationError(f"stored value of handle {handle:#x} is not valid msgpack ({exc}); set() it again")

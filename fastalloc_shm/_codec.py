"""msgpack in and out of slots: never pickle, and bounded unpacking."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import SerializationError


def packer() -> msgpack.Packer:
    """A reusable packer. Packing plain data runs in C without releasing the
    GIL, so one packer per pool is safe across threads and saves ~200 ns a call
    over msgpack.packb."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


# unpackb bounds every string, array and map by the length of its input, and
# the input is at most one slot: a damaged slot cannot make it allocate more.
UNPACK_OPTIONS: dict[str, Any] = {"raw": False, "strict_map_key": False}


def pack_error(value: Any, exc: Exception) -> SerializationError:
    return SerializationError(
        f"cannot pack {type(value).__name__} with msgpack ({exc}); store dicts, lists, str, bytes, int, float, bool, None"
    )


def unpack_error(handle: int, exc: Exception) -> SerializationError:
    return SerializationError(f"stored value of handle {handle:#x} is not valid msgpack ({exc}); set() it again")

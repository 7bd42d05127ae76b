"""The values every system stores, and the initializer eager pools are created with.

All systems get the very same Python objects, so serialization work differs only where a
system's own design makes it differ: the pools msgpack everything; the compiled floor, LMDB,
Redis and iceoryx2 msgpack the dict and store bytes as they are; Manager, UltraDict and
shared-memory-dict pickle; a plain dict stores the object.
"""

from __future__ import annotations

import msgpack
import msgspec

# ~100 bytes once msgpack-packed: a small record, the typical "job" or "message" a pool holds.
SMALL: dict = {
    "id": 123456,
    "user": "user-000123",
    "tags": ["red", "green", "blue"],
    "score": 0.125,
    "active": True,
    "note": "x" * 23,
}
# 100 bytes, opaque: the payload of the compiled-core targets (a pool msgpacks it, adding a
# 2-byte bin header; systems that store bytes store them as they are).
BYTES100: bytes = bytes(range(100))
# 4 KiB of opaque bytes: a buffer-sized payload (msgpack adds a 3-byte bin header).
LARGE: bytes = bytes(range(256)) * 16

VALUES: dict[str, object] = {"small": SMALL, "bytes100": BYTES100, "4k": LARGE}


class SmallRecord(msgspec.Struct):
    """SMALL as a typed pool's value (value_type=SmallRecord): the same fields, the same msgpack bytes."""

    id: int
    user: str
    tags: list[str]
    score: float
    active: bool
    note: str


# The head-to-head's typed cycle (issue 20): only the library's kinds run it (no peer has typed values).
SMALL_TYPED = SmallRecord(**SMALL)
# The value the multi-process runs cycle: small enough that the lock, not the copy, is contended.
MP_KIND = "bytes100"

# Slot sizes in bytes: the smallest multiple of 64 that holds each packed value, so that
# pools are not flattered or penalized by slack.
SLOT_SIZES: dict[str, int] = {
    kind: -(-len(msgpack.packb(value)) // 64) * 64 for kind, value in VALUES.items()
}


def initial_value() -> None:
    """Initializer for eagerly created pools (given as "benchmarks.values:initial_value")."""
    return None


INITIALIZER = "benchmarks.values:initial_value"

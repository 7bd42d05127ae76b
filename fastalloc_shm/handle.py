"""Handles: plain ints encoding `(generation << 32) | index`, on every backend.

The index is unsigned 32-bit; the generation is 1..2**31-1 (a slot keeps bit 31
of its generation word as its own "unreadable" flag, so no pool issues more).
A slot's generation starts at 1 and is bumped on every release, wrapping from
2**31-1 to 1, so handle 0 is never valid and a handle used after its release
is detected. A handle is an `int` of exactly that type (not a bool or another
subclass), the same rule in every pool method.
"""

from __future__ import annotations

from .errors import InvalidHandle

INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1
MAX_GENERATION = (1 << 31) - 1


def pack(index: int, generation: int) -> int:
    """Build a handle from a slot index and its generation.

    >>> pack(3, 1)
    4294967299
    """
    if type(index) is not int or not 0 <= index <= INDEX_MASK:
        raise InvalidHandle(f"index {index!r} is not an int in 0..{INDEX_MASK}")
    if type(generation) is not int or not 1 <= generation <= MAX_GENERATION:
        raise InvalidHandle(f"generation {generation!r} is not an int in 1..{MAX_GENERATION}")
    return (generation << INDEX_BITS) | index


def unpack(handle: int) -> tuple[int, int]:
    """Split a handle into `(index, generation)`.

    >>> unpack(4294967299)
    (3, 1)
    """
    if type(handle) is not int or not 0 < handle >> INDEX_BITS <= MAX_GENERATION:
        raise InvalidHandle(
            f"{handle!r} is not a handle (an int whose generation, its high 32 bits, is in 1..{MAX_GENERATION})"
        )
    return handle & INDEX_MASK, handle >> INDEX_BITS

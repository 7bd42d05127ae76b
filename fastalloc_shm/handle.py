"""Handles: plain ints encoding `(generation << 32) | index`, both unsigned 32-bit.

A slot's generation starts at 1 and is bumped on every release (skipping 0),
so handle 0 is never valid and a handle used after its release is detected.
"""

from __future__ import annotations

from .errors import InvalidHandle

INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1
MAX_GENERATION = INDEX_MASK


def pack(index: int, generation: int) -> int:
    """Build a handle from a slot index and its generation.

    >>> pack(3, 1)
    4294967299
    """
    if not 0 <= index <= INDEX_MASK:
        raise InvalidHandle(f"index {index} is outside 0..{INDEX_MASK}")
    if not 1 <= generation <= MAX_GENERATION:
        raise InvalidHandle(f"generation {generation} is outside 1..{MAX_GENERATION}")
    return (generation << INDEX_BITS) | index


def unpack(handle: int) -> tuple[int, int]:
    """Split a handle into `(index, generation)`.

    >>> unpack(4294967299)
    (3, 1)
    """
    if type(handle) is not int or handle <= 0 or handle >> (2 * INDEX_BITS):
        raise InvalidHandle(f"{handle!r} is not a handle (a positive int below 2**64)")
    generation = handle >> INDEX_BITS
    if generation == 0:
        raise InvalidHandle(f"{handle!r} is not a handle: its generation is 0")
    return handle & INDEX_MASK, generation


def next_generation(generation: int) -> int:
    """The generation after `generation`, wrapping past 2**32-1 to 1 (never 0)."""
    return generation + 1 if generation < MAX_GENERATION else 1

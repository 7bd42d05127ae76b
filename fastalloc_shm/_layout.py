"""The bytes of a pool, as Python sees them: the one table lives in _layout.h.

The compiled core is built against `_layout.h` and exports every name in it
as `_core.LAYOUT`; this module re-exports them, so Python and C cannot
disagree on an offset (tests/test_layout.py checks the geometry both ways).
The picture of the segment and the meaning of each word are in `_layout.h`.
Python touches only what the core does not: the header fields written once
at creation, the config record, and the geometry it needs to size segments.
"""

from __future__ import annotations

from . import _core

globals().update(_core.LAYOUT)

KIND_CODES = {"fixed": KIND_FIXED, "growing": KIND_GROWING, "threadlocal": KIND_THREADLOCAL,  # noqa: F821
              "threadsafe": KIND_THREADSAFE}  # noqa: F821
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}
STATE_NAMES = {FREE: "free", ALLOCATED: "allocated", CACHED: "cached", WRITING: "being-written",  # noqa: F821
               TORN: "torn", SETTING: "being-set"}  # noqa: F821
MAX_SLOT_GENERATION = GENERATION_MASK  # noqa: F821
# The creator holds an OFD lock on this byte of the main segment until the pool
# is ready: a segment not ready whose byte nobody holds was left by a dead creator.
CREATOR_BYTE = MAX_CLIENTS  # noqa: F821


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def stride_for(slot_size: int, alignment: int) -> int:
    """Bytes from one slot's start to the next: slot_size rounded up to alignment."""
    return align_up(slot_size, alignment)


def extent_size(capacity: int, stride: int, alignment: int) -> int:
    """Bytes of an extent of `capacity` slots (page-rounded)."""
    return _core.extent_size(capacity, stride, alignment)


def data_offset(capacity: int, alignment: int) -> int:
    """Offset of slot 0's bytes from the start of its extent."""
    return _core.data_offset(capacity, alignment)


def main_segment_size(capacity: int, stride: int, alignment: int) -> int:
    """Size of the main segment: the header and extent 0."""
    return HEADER_SIZE + extent_size(capacity, stride, alignment)  # noqa: F821


def extent_table_words(number: int) -> tuple[int, int]:
    """u64 indices of (base index, capacity) of extent `number` in the header."""
    first = EXTENT_TABLE_OFFSET // 8 + 2 * number  # noqa: F821
    return first, first + 1

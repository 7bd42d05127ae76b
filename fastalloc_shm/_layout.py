"""The bytes of a pool, as Python sees them: the one table lives in _layout.h.

The compiled core is built against `_layout.h` and exports every name in it
as `_core.LAYOUT`; this module names each of them, taking its value from
that table, so Python and C cannot disagree on an offset (tests/test_layout.py
checks that every name of the table is here, and the geometry both ways).
The picture of the segment and the meaning of each word are in `_layout.h`.
Python touches only what the core does not: the header fields written once
at creation, the config record, and the geometry it needs to size segments.

The pool kinds are named once, in KIND_NAMES below (their codes come from the
core's table); every other list of kinds is derived from it.
"""

from __future__ import annotations

from . import _core

_T = _core.LAYOUT

LAYOUT_VERSION: int = _T["LAYOUT_VERSION"]
MAGIC: int = _T["MAGIC"]

# Header words (u64 indices into the main segment).
HDR_MAGIC: int = _T["HDR_MAGIC"]
HDR_VERSION: int = _T["HDR_VERSION"]
HDR_KIND: int = _T["HDR_KIND"]
HDR_READY: int = _T["HDR_READY"]
HDR_CREATOR_PID: int = _T["HDR_CREATOR_PID"]
HDR_CREATOR_START: int = _T["HDR_CREATOR_START"]
HDR_SLOT_SIZE: int = _T["HDR_SLOT_SIZE"]
HDR_STRIDE: int = _T["HDR_STRIDE"]
HDR_ALIGNMENT: int = _T["HDR_ALIGNMENT"]
HDR_CAPACITY: int = _T["HDR_CAPACITY"]
HDR_EXTENTS: int = _T["HDR_EXTENTS"]
HDR_FREE_HINT: int = _T["HDR_FREE_HINT"]
HDR_CONFIG_LEN: int = _T["HDR_CONFIG_LEN"]
HDR_FLAGS: int = _T["HDR_FLAGS"]
HDR_POOL_ID: int = _T["HDR_POOL_ID"]
HDR_LOCK_HOLDER: int = _T["HDR_LOCK_HOLDER"]
HDR_ALLOCATIONS: int = _T["HDR_ALLOCATIONS"]
HDR_DEALLOCATIONS: int = _T["HDR_DEALLOCATIONS"]
HDR_PEAK: int = _T["HDR_PEAK"]
HDR_FAILURES: int = _T["HDR_FAILURES"]
HDR_GROWTHS: int = _T["HDR_GROWTHS"]
HDR_LOCK_ACQUISITIONS: int = _T["HDR_LOCK_ACQUISITIONS"]
HDR_LOCK_WAIT_NS: int = _T["HDR_LOCK_WAIT_NS"]
HDR_LOCK_TIMEOUTS: int = _T["HDR_LOCK_TIMEOUTS"]
HDR_RECOVERIES: int = _T["HDR_RECOVERIES"]
HDR_IN_USE: int = _T["HDR_IN_USE"]
HDR_REPAIR_PENDING: int = _T["HDR_REPAIR_PENDING"]
HDR_WAITERS: int = _T["HDR_WAITERS"]
HDR_STEAL_CURSOR: int = _T["HDR_STEAL_CURSOR"]
HDR_STEALS: int = _T["HDR_STEALS"]
HDR_DEAD_OWNER: int = _T["HDR_DEAD_OWNER"]
HDR_WORDS: int = _T["HDR_WORDS"]

# The mutex, the extent table, the config record, the client table.
MUTEX_OFFSET: int = _T["MUTEX_OFFSET"]
MUTEX_BYTES: int = _T["MUTEX_BYTES"]
MUTEX_SIZE: int = _T["MUTEX_SIZE"]
EXTENT_TABLE_OFFSET: int = _T["EXTENT_TABLE_OFFSET"]
MAX_EXTENTS: int = _T["MAX_EXTENTS"]
CONFIG_OFFSET: int = _T["CONFIG_OFFSET"]
MAX_CONFIG_BYTES: int = _T["MAX_CONFIG_BYTES"]
CLIENT_TABLE_OFFSET: int = _T["CLIENT_TABLE_OFFSET"]
CLIENT_BYTES: int = _T["CLIENT_BYTES"]
CLIENT_PID: int = _T["CLIENT_PID"]
CLIENT_INCARNATION: int = _T["CLIENT_INCARNATION"]
CLIENT_START: int = _T["CLIENT_START"]
CLIENT_ALLOCATIONS: int = _T["CLIENT_ALLOCATIONS"]
CLIENT_DEALLOCATIONS: int = _T["CLIENT_DEALLOCATIONS"]
MAX_CLIENTS: int = _T["MAX_CLIENTS"]
CHANNEL_TABLE_OFFSET: int = _T["CHANNEL_TABLE_OFFSET"]
MAX_CHANNELS: int = _T["MAX_CHANNELS"]
CHANNEL_BYTES: int = _T["CHANNEL_BYTES"]
CHANNEL_NAME_BYTES: int = _T["CHANNEL_NAME_BYTES"]
CH_HEAD: int = _T["CH_HEAD"]
CH_TAIL: int = _T["CH_TAIL"]
CH_LENGTH: int = _T["CH_LENGTH"]
CH_PUTS: int = _T["CH_PUTS"]
CH_GETS: int = _T["CH_GETS"]
CH_REQUEUED: int = _T["CH_REQUEUED"]
CH_WAITING: int = _T["CH_WAITING"]
CH_WAKE: int = _T["CH_WAKE"]
HEADER_SIZE: int = _T["HEADER_SIZE"]

# An extent's header (u32 words) and its slot metadata (u32 words per slot).
EXT_CAPACITY: int = _T["EXT_CAPACITY"]
EXT_HEAD: int = _T["EXT_HEAD"]
EXT_FRESH: int = _T["EXT_FRESH"]
EXT_MAGIC: int = _T["EXT_MAGIC"]
EXT_POOL_ID_LOW: int = _T["EXT_POOL_ID_LOW"]
EXT_POOL_ID_HIGH: int = _T["EXT_POOL_ID_HIGH"]
EXT_HEADER_BYTES: int = _T["EXT_HEADER_BYTES"]
EXTENT_MAGIC: int = _T["EXTENT_MAGIC"]
META_WORDS: int = _T["META_WORDS"]
META_BYTES: int = _T["META_BYTES"]
META_GEN: int = _T["META_GEN"]
META_WORD: int = _T["META_WORD"]
META_LEN: int = _T["META_LEN"]
META_SEQ: int = _T["META_SEQ"]

# A slot's generation and state words.
UNREADABLE: int = _T["UNREADABLE"]
GENERATION_MASK: int = _T["GENERATION_MASK"]
STATE_SHIFT: int = _T["STATE_SHIFT"]
OWNER_MASK: int = _T["OWNER_MASK"]
INCARNATION_BITS: int = _T["INCARNATION_BITS"]
ORPHAN_OWNER: int = _T["ORPHAN_OWNER"]
FREE: int = _T["FREE"]
ALLOCATED: int = _T["ALLOCATED"]
CACHED: int = _T["CACHED"]
WRITING: int = _T["WRITING"]
TORN: int = _T["TORN"]
SETTING: int = _T["SETTING"]
QUEUED: int = _T["QUEUED"]
TAKEN: int = _T["TAKEN"]

# Pool kinds as the header records them (named in KIND_NAMES), and header flags.
KIND_FIXED: int = _T["KIND_FIXED"]
KIND_GROWING: int = _T["KIND_GROWING"]
KIND_THREADLOCAL: int = _T["KIND_THREADLOCAL"]
KIND_THREADSAFE: int = _T["KIND_THREADSAFE"]
FLAG_HUGE_PAGES_ADVISED: int = _T["FLAG_HUGE_PAGES_ADVISED"]

KIND_NAMES: dict[int, str] = {
    KIND_FIXED: "fixed",
    KIND_GROWING: "growing",
    KIND_THREADLOCAL: "threadlocal",
    KIND_THREADSAFE: "threadsafe",
}
"""Every pool kind: the code its header records -> the kind's name. The one table of kinds."""
KIND_CODES: dict[str, int] = {name: code for code, name in KIND_NAMES.items()}
STATE_NAMES: dict[int, str] = {FREE: "free", ALLOCATED: "allocated", CACHED: "cached", WRITING: "being-written",
                               TORN: "torn", SETTING: "being-set", QUEUED: "queued",
                               **{TAKEN + ch: "taken" for ch in range(MAX_CHANNELS)}}
MAX_SLOT_GENERATION = GENERATION_MASK
# The creator holds an OFD lock on this byte of the main segment until the pool
# is ready: a segment not ready whose byte nobody holds was left by a dead creator.
CREATOR_BYTE = MAX_CLIENTS


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
    return HEADER_SIZE + extent_size(capacity, stride, alignment)


def extent_table_words(number: int) -> tuple[int, int]:
    """u64 indices of (base index, capacity) of extent `number` in the header."""
    first = EXTENT_TABLE_OFFSET // 8 + 2 * number
    return first, first + 1

"""The bytes of a pool: header, client table, extents, slot metadata; one place.

Every offset is relative to the start of a segment (never a pointer), as in
iceoryx. Everything else reads and writes the segment through the typed views
and word indices defined here.

Main segment (`/dev/shm/fastalloc.<name>`)::

    [0, 512)          header words, u64 (HDR_*)
    [512, 4608)       extent table: MAX_EXTENTS x (base index u64, capacity u64)
    [4608, 8192)      config record (msgpack), its length in HDR_CONFIG_LEN
    [8192, 40960)     client table: MAX_CLIENTS x 32 bytes (CLIENT_*)
    [40960, ...)      extent 0

Extent (extent 0 in the main segment, extent k >= 1 in `fastalloc.<name>.x<k>`)::

    [0, 64)           u32: capacity, free-list top, fresh mark, magic
    [64, ...)         slot metadata: capacity x 4 u32 (META_*)
    [...]             free list: capacity x u32 local indices, a stack
    [data, ...)       slots: capacity x stride bytes, data aligned to `alignment`

Slots at local index >= `fresh` were never handed out: their metadata and
pages are untouched (lazy initialisation) and they are free by definition.

Slot metadata, 4 u32 words:
    GEN    generation (31 bits: 1.. on first use, bumped on every release,
           skipping 0), with bit 31 (UNREADABLE) set unless the slot holds a
           published value. get() compares this one word with the handle.
    WORD   state << 24 | owner pid  (pid_max on Linux is at most 2**22)
    LEN    packed length of the stored value
    SEQ    write sequence of set(): odd while a value is being overwritten

Client table entry, 8 u32 words (a process that attached the pool):
    PID, STATE (FREE/IDLE/WANTS), ATTEMPTS (bumped by a waiter after each
    timed-out wait slice), START_LO/START_HI (process start time in 1/100 s
    since the epoch, as psutil gives it), 3 spare words.

Order of every mutation (each step is one aligned store; x86 keeps stores in
order, so a process killed between any two leaves a state recovery repairs):

    lock:      client=WANTS; sem_wait; (every critical section moves the lock epoch)
    unlock:    sem_post; client=IDLE
               (WANTS covers every moment the process might hold the
               semaphore; see _lock.py for how a holder is told from a waiter)
    allocate:  pack outside the lock | lock; pick top of stack (or fresh);
               WORD=WRITING|pid (fresh: GEN=1|UNREADABLE first); top -= 1
               (or fresh += 1); counters; unlock | bytes; LEN; GEN=gen
               (published); WORD=ALLOCATED|pid
    release:   lock; check GEN; GEN=gen+1|UNREADABLE; WORD=FREE; push; top += 1;
               counters; unlock
               (so "allocated but unreadable" means: a holder died releasing)
    set:       pack outside the lock | lock; check; SEQ odd; bytes; LEN; SEQ even; unlock
    get:       no lock: SEQ; GEN == handle's; bytes; SEQ and GEN again (retry if moved)
    grow:      lock; create + reserve the extent segment; write its header;
               extent table entry; n_extents += 1 (the commit); capacity; unlock
    magazine:  refill = lock; per slot WORD=CACHED|pid, pop; unlock.
               allocate from it = no lock; bytes; LEN; GEN=gen; WORD=ALLOCATED|pid
               release into it = no lock; WORD=CACHED|pid; GEN=gen+1|UNREADABLE

Recovery (under the lock) rebuilds each free list from the WORD states, so
a half-done push or pop is never trusted.
"""

from __future__ import annotations

import mmap as _mmap

MAGIC = int.from_bytes(b"FASTALOC", "little")
LAYOUT_VERSION = 1
EXTENT_MAGIC = 0x46415854  # "FAXT"

KIND_CODES = {"fixed": 1, "growing": 2, "threadlocal": 3, "threadsafe": 4}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}

PAGE = _mmap.PAGESIZE
MAX_EXTENTS = 256
MAX_CLIENTS = 1024
MAX_CONFIG_BYTES = 8192 - 4608

# Header words (u64 index into the main segment).
HDR_MAGIC = 0
HDR_VERSION = 1
HDR_KIND = 2
HDR_READY = 3
HDR_CREATOR_PID = 4
HDR_CREATOR_START = 5
HDR_SLOT_SIZE = 6
HDR_STRIDE = 7
HDR_ALIGNMENT = 8
HDR_CAPACITY = 9
HDR_EXTENTS = 10
HDR_FREE_HINT = 11
HDR_CONFIG_LEN = 12
HDR_FLAGS = 13
# Random, per incarnation of a pool; also in its semaphore's name (see _names.semaphore).
HDR_POOL_ID = 14
# Slots in use when reset_statistics() zeroed the counters (the crate's reset keeps usage true).
HDR_USAGE_AT_RESET = 15
# Statistics counters; current usage is HDR_USAGE_AT_RESET + allocations - deallocations.
HDR_ALLOCATIONS = 16
HDR_DEALLOCATIONS = 17
HDR_PEAK = 18
HDR_FAILURES = 19
HDR_GROWTHS = 20
HDR_LOCK_ACQUISITIONS = 21  # acquisitions other than single allocate/release
HDR_LOCK_WAIT_NS = 22
HDR_LOCK_TIMEOUTS = 23
HDR_RECOVERIES = 24
# A single allocate() or release() bumps only its own counter, which also
# counts its lock acquisition: one shared-memory increment per operation.
# The lock epoch (see _lock.py) is LOCK_ACQUISITIONS + these two.
HDR_SINGLE_ALLOCATIONS = 25
HDR_SINGLE_DEALLOCATIONS = 26
EPOCH_WORDS = (HDR_LOCK_ACQUISITIONS, HDR_SINGLE_ALLOCATIONS, HDR_SINGLE_DEALLOCATIONS)

FLAG_HUGE_PAGES_ADVISED = 1

EXTENT_TABLE_OFFSET = 512
CONFIG_OFFSET = 4608
CLIENT_TABLE_OFFSET = 8192
CLIENT_BYTES = 32
HEADER_SIZE = CLIENT_TABLE_OFFSET + MAX_CLIENTS * CLIENT_BYTES  # 40960, page aligned

# Client entry words (u32 index relative to the entry's first word).
CLIENT_PID = 0
CLIENT_STATE = 1
CLIENT_ATTEMPTS = 2
CLIENT_START_LO = 3
CLIENT_START_HI = 4
CLIENT_WORDS = CLIENT_BYTES // 4
CLIENT_FREE, CLIENT_IDLE, CLIENT_WANTS = 0, 1, 2
CLIENT_STATE_NAMES = {CLIENT_FREE: "free", CLIENT_IDLE: "idle", CLIENT_WANTS: "wants"}

# Extent header words (u32 index relative to the extent's first word).
EXT_CAPACITY = 0
EXT_TOP = 1
EXT_FRESH = 2
EXT_MAGIC = 3
EXT_HEADER_BYTES = 64

# Slot metadata.
META_WORDS = 4
META_BYTES = META_WORDS * 4
META_GEN, META_WORD, META_LEN, META_SEQ = 0, 1, 2, 3
UNREADABLE = 1 << 31
GENERATION_MASK = UNREADABLE - 1
MAX_SLOT_GENERATION = GENERATION_MASK
STATE_SHIFT = 24
OWNER_MASK = (1 << STATE_SHIFT) - 1
FREE, ALLOCATED, CACHED, WRITING, TORN = 0, 1, 2, 3, 4
STATE_NAMES = {FREE: "free", ALLOCATED: "allocated", CACHED: "cached", WRITING: "being-written", TORN: "torn"}
ALLOCATED_TAG = ALLOCATED << STATE_SHIFT
CACHED_TAG = CACHED << STATE_SHIFT
WRITING_TAG = WRITING << STATE_SHIFT
TORN_TAG = TORN << STATE_SHIFT
# Byte offset of the state inside a little-endian WORD: recovery reads all
# states at once with a strided slice.
STATE_BYTE = META_WORD * 4 + 3


def next_generation(generation: int) -> int:
    """The generation after `generation` (31 bits, skipping 0)."""
    return generation + 1 if generation < MAX_SLOT_GENERATION else 1


def epoch(header: memoryview) -> int:
    """Moves in every critical section of the pool lock."""
    return header[HDR_LOCK_ACQUISITIONS] + header[HDR_SINGLE_ALLOCATIONS] + header[HDR_SINGLE_DEALLOCATIONS]


def total_allocations(header: memoryview) -> int:
    return header[HDR_ALLOCATIONS] + header[HDR_SINGLE_ALLOCATIONS]


def total_deallocations(header: memoryview) -> int:
    return header[HDR_DEALLOCATIONS] + header[HDR_SINGLE_DEALLOCATIONS]


def in_use(header: memoryview) -> int:
    """Slots allocated now, from the counters."""
    return header[HDR_USAGE_AT_RESET] + total_allocations(header) - total_deallocations(header)


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def stride_for(slot_size: int, alignment: int) -> int:
    """Bytes from one slot's start to the next: slot_size rounded up to alignment."""
    return align_up(slot_size, alignment)


class ExtentGeometry:
    """Byte offsets of one extent's parts, relative to the extent's start."""

    __slots__ = ("capacity", "stride", "meta", "free_list", "data", "nbytes")

    def __init__(self, capacity: int, stride: int, alignment: int) -> None:
        self.capacity = capacity
        self.stride = stride
        self.meta = EXT_HEADER_BYTES
        self.free_list = self.meta + capacity * META_BYTES
        self.data = align_up(self.free_list + capacity * 4, max(alignment, 64))
        self.nbytes = align_up(self.data + capacity * stride, PAGE)


def main_segment_size(capacity: int, stride: int, alignment: int) -> int:
    """Size of the main segment: the header and extent 0."""
    return HEADER_SIZE + ExtentGeometry(capacity, stride, alignment).nbytes


def client_word(entry: int, field: int) -> int:
    """u32 index of `field` of client entry `entry` in the main segment."""
    return CLIENT_TABLE_OFFSET // 4 + entry * CLIENT_WORDS + field


def extent_table_words(number: int) -> tuple[int, int]:
    """u64 indices of (base index, capacity) of extent `number` in the header."""
    first = EXTENT_TABLE_OFFSET // 8 + 2 * number
    return first, first + 1

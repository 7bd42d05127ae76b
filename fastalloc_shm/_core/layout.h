/* layout.h: the bytes of a pool, the one table of offsets. The core compiles
 * against it and exports every name in it as _core.LAYOUT, which
 * fastalloc_shm/_layout.py reads; tests/test_layout.py checks that both sides agree.
 *
 * Every offset is relative to the start of a segment, never a pointer.
 *
 * Main segment (/dev/shm/fastalloc.<name>):
 *   [0, 256)        header words, u64 (HDR_*)
 *   [256, 320)      the pool mutex: process-shared, robust (pthread_mutex_t)
 *   [512, 4608)     extent table: MAX_EXTENTS x (base index u64, capacity u64)
 *   [4608, 8192)    config record (msgpack), its length in HDR_CONFIG_LEN
 *   [8192, 24576)   client table: MAX_CLIENTS x 64 bytes (one cache line each)
 *   [24576, 32768)  channel table: MAX_CHANNELS x 128 bytes: the name (32 bytes, NUL-padded;
 *                   empty = unused), then u64 words CH_*: head and tail (pool-wide index + 1,
 *                   0 = none), length, puts, gets, requeued, waiting consumers (low u32:
 *                   the sleepers; high u32: the epoch, a new one at each repair, so a
 *                   consumer that died asleep stops counting), and the wake word (its
 *                   low u32 is the futex a waiting consumer sleeps on)
 *   [32768, ...)    extent 0
 * Extent k >= 1 is a segment of its own, /dev/shm/fastalloc.<name>.x<k>.
 *
 * Extent:
 *   [0, 64)         u32 words: capacity, free-list head (local index + 1, 0 = empty),
 *                   fresh mark, magic, the pool id (low, high): a process attached
 *                   to an unlinked pool never takes a re-created pool's extent for its own
 *   [64, ...)       slot metadata: capacity x 4 u32 (META_*)
 *   [data, ...)     slots: capacity x stride bytes, data aligned to max(alignment, 64)
 * Slots at local index >= fresh were never handed out: untouched pages, free.
 *
 * Slot metadata (16 bytes, 8-aligned so GEN and WORD form one u64 for CAS):
 *   GEN   generation 1..2^31-1; bit 31 (UNREADABLE) unless a published value
 *   WORD  state << 24 | owner (client entry << 15 | its incarnation); a kept
 *         orphan's owner is ORPHAN_OWNER (entry 511, never a live one), so no
 *         slot names a dead process's incarnation after a repair
 *   LEN   packed length of the value
 *   SEQ   allocated: write sequence of set() (odd while writing);
 *         free: the free-list link (next local index + 1, 0 = end);
 *         queued: the channel's link (next pool-wide index + 1, 0 = end)
 * Channel states: QUEUED (owner = the channel's number; generation UNREADABLE:
 * the channel owns it) and TAKEN + channel (64..127: taken by get_handle, owner
 * = the consumer; a dead consumer's is put back at the head of that channel).
 */
#ifndef FASTALLOC_LAYOUT_H
#define FASTALLOC_LAYOUT_H

#define LAYOUT_ITEMS(X) \
    X(LAYOUT_VERSION, 5) \
    X(HDR_MAGIC, 0) X(HDR_VERSION, 1) X(HDR_KIND, 2) X(HDR_READY, 3) \
    X(HDR_CREATOR_PID, 4) X(HDR_CREATOR_START, 5) X(HDR_SLOT_SIZE, 6) X(HDR_STRIDE, 7) \
    X(HDR_ALIGNMENT, 8) X(HDR_CAPACITY, 9) X(HDR_EXTENTS, 10) X(HDR_FREE_HINT, 11) \
    X(HDR_CONFIG_LEN, 12) X(HDR_FLAGS, 13) X(HDR_POOL_ID, 14) X(HDR_LOCK_HOLDER, 15) \
    X(HDR_ALLOCATIONS, 16) X(HDR_DEALLOCATIONS, 17) X(HDR_PEAK, 18) X(HDR_FAILURES, 19) \
    X(HDR_GROWTHS, 20) X(HDR_LOCK_ACQUISITIONS, 21) X(HDR_LOCK_WAIT_NS, 22) \
    X(HDR_LOCK_TIMEOUTS, 23) X(HDR_RECOVERIES, 24) X(HDR_IN_USE, 25) X(HDR_REPAIR_PENDING, 26) \
    X(HDR_WAITERS, 27) X(HDR_STEAL_CURSOR, 28) X(HDR_STEALS, 29) X(HDR_DEAD_OWNER, 30) \
    X(HDR_WORDS, 32) \
    X(MUTEX_OFFSET, 256) X(MUTEX_BYTES, 64) \
    X(EXTENT_TABLE_OFFSET, 512) X(MAX_EXTENTS, 256) \
    X(CONFIG_OFFSET, 4608) X(MAX_CONFIG_BYTES, 3584) \
    X(CLIENT_TABLE_OFFSET, 8192) X(MAX_CLIENTS, 256) X(CLIENT_BYTES, 64) \
    X(CLIENT_PID, 0) X(CLIENT_INCARNATION, 1) X(CLIENT_START, 1) \
    X(CLIENT_ALLOCATIONS, 2) X(CLIENT_DEALLOCATIONS, 3) \
    X(CHANNEL_TABLE_OFFSET, 24576) X(MAX_CHANNELS, 64) X(CHANNEL_BYTES, 128) X(CHANNEL_NAME_BYTES, 32) \
    X(CH_HEAD, 4) X(CH_TAIL, 5) X(CH_LENGTH, 6) X(CH_PUTS, 7) X(CH_GETS, 8) X(CH_REQUEUED, 9) \
    X(CH_WAITING, 10) X(CH_WAKE, 11) \
    X(HEADER_SIZE, 32768) \
    X(EXT_CAPACITY, 0) X(EXT_HEAD, 1) X(EXT_FRESH, 2) X(EXT_MAGIC, 3) X(EXT_POOL_ID_LOW, 4) X(EXT_POOL_ID_HIGH, 5) \
    X(EXT_HEADER_BYTES, 64) X(EXTENT_MAGIC, 0x46415854) \
    X(META_WORDS, 4) X(META_BYTES, 16) \
    X(META_GEN, 0) X(META_WORD, 1) X(META_LEN, 2) X(META_SEQ, 3) \
    X(UNREADABLE, 0x80000000u) X(GENERATION_MASK, 0x7FFFFFFF) \
    X(STATE_SHIFT, 24) X(OWNER_MASK, 0xFFFFFF) X(INCARNATION_BITS, 15) X(ORPHAN_OWNER, 0xFF8000) \
    X(FREE, 0) X(ALLOCATED, 1) X(CACHED, 2) X(WRITING, 3) X(TORN, 4) X(SETTING, 5) X(QUEUED, 6) X(TAKEN, 64) \
    X(KIND_FIXED, 1) X(KIND_GROWING, 2) X(KIND_THREADLOCAL, 3) X(KIND_THREADSAFE, 4) \
    X(FLAG_HUGE_PAGES_ADVISED, 1)

/* Client entry (u64 words; CLIENT_PID and CLIENT_INCARNATION are the two u32
 * halves of word 0): pid, incarnation (bumped at every claim, so slots of an
 * earlier holder of the entry are told apart), start time (shown, not trusted),
 * and the entry's allocations/deallocations not counted in the header (a
 * ThreadLocalPool's lock-free ones). Liveness: the entry's owner holds an OFD
 * write lock on byte <entry> of the main segment; the kernel drops it at death. */

#define X_ENUM(name, value) enum { name = value };
LAYOUT_ITEMS(X_ENUM)
#undef X_ENUM

/* The header word HDR_REPAIR_PENDING is set while a repair after a dead lock
 * holder is owed: a locker that cannot see every extent leaves it set (and
 * the totals as they were) for the next locker, never writes them from a
 * partial view. HDR_DEAD_OWNER (the dead holder's owner id + 1, read from
 * HDR_LOCK_HOLDER's high half) goes with it: the kernel hands the mutex on
 * before the dead process's files close, so its liveness lock may still look
 * held, and the repair must judge that owner dead all the same. */

#define MAGIC 0x434F4C4154534146ULL /* "FASTALOC" little-endian */

#endif

/* core.h: what every unit of the compiled core shares: the Core object, the
 * atomics, the error codes, and the rules every unit keeps.
 *
 * The core is one extension module built from units, one per mechanism, each
 * opening with the invariant it keeps (unity.c includes them in order):
 *   fault.c       fault points for the crash tests
 *   errors.c      a failure found in C becomes the user's exception
 *   extents.c     geometry (overflow-checked), mapping and locating extents
 *   liveness.c    client entries and the kernel's death signal (OFD locks)
 *   lock.c        the robust mutex, its repair after a dead holder
 *   tokens.c      the free-slot semaphore
 *   slots.c       free lists, slot states, handles, the seqlock read
 *   codec.c       values into slots and back (msgpack glue)
 *   magazines.c   ThreadLocalPool's per-process caches of slots
 *   channels.c    FIFOs of the pool's slots from producers to consumers
 *   recovery.c    judge every slot, rebuild from slot states
 *   operations.c  allocate, get, set, release, batches: the mechanisms composed
 *   type.c        the Core heap type: lifetime, operations in flight, exports
 *   module.c      the module: multi-phase init, its functions and tables
 *
 * THE DISCIPLINE (every unit keeps it; a review checks it):
 * (a) A word read from shared memory is read once into a private copy,
 *     checked, and used from the copy. Another process can change the word
 *     between two reads; a second read is a second, unchecked value.
 * (b) No pointer into a mapping and no borrowed reference survives a call
 *     that can run Python code. Those calls are: the packers (c->pack,
 *     c->pack_plain) and the unpackers (c->unpack, c->unpack_plain); the
 *     growth policy (c->grow);
 *     the error builder (c->errors, reached through raise_failure and
 *     RAISE); PyErr_CheckSignals in a wait; any allocation of a GC-tracked
 *     object (tuple, list, dict: a collection runs finalizers); and any
 *     Py_DECREF of an object a user gave us. Operations hold Extent
 *     pointers (into c->ext, which lives as long as the Core) across them,
 *     never slot or metadata pointers; the caller's sequences are copied
 *     into tuples we own before any of them runs.
 * (c) Every size computed from segment words is overflow-checked
 *     (__builtin_*_overflow) before it sizes a mapping or bounds an access.
 * (d) No Python code runs while the pool mutex is held: code under the lock
 *     reports a Failure (a code and a message), and the caller raises it
 *     after unlocking. Python code under the mutex could re-enter the pool
 *     from the same thread, which the mutex would refuse (EDEADLK).
 * (e) An operation in flight is counted (c->ops, entered and left through
 *     op_enter/op_leave), and close() waits for it to leave (bounded, the
 *     GIL released) or raises; it never unmaps under one. A buffer export
 *     is counted too, and close() or release() of an exported slot raises
 *     BufferError.
 */
#ifndef FASTALLOC_CORE_H
#define FASTALLOC_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "layout.h"

_Static_assert(sizeof(unsigned long) == 8, "handles are 64-bit: an LP64 platform (Linux) is needed");

/* ---- atomics: lock-free paths order their loads and stores explicitly ---- */
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define CAS(p, expected, desired) \
    __atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

/* A slot's generation and state word, as the one u64 a compare-and-swap claims. */
static inline uint64_t pair(uint32_t gen, uint32_t word) { return (uint64_t)gen | ((uint64_t)word << 32); }
static inline uint32_t state_of(uint32_t word) { return word >> STATE_SHIFT; }
static inline uint32_t owner_of(uint32_t word) { return word & OWNER_MASK; }
/* TAKEN + channel: a slot a consumer took from that channel with get_handle (channels.c). */
static inline int state_is_taken(uint32_t st) { return st >= TAKEN && st < TAKEN + MAX_CHANNELS; }
#define INCARNATION_MASK ((1u << INCARNATION_BITS) - 1)

/* A failure found where no exception may be raised yet (the lock held): raised by the caller. */
typedef struct {
    int code;          /* E_*; 0: none */
    const char *what;  /* for E_DAMAGED / E_OS */
    int sys_errno;     /* for E_OS */
    long number;       /* for E_UNTRUSTED: the extent; its owner uid in `uid` */
    unsigned int uid;
} Failure;

typedef struct {
    uint8_t *base;    /* extent start (extent 0: inside the main mapping) */
    size_t size;      /* bytes mapped from base */
    uint64_t first;   /* pool-wide index of local slot 0 */
    uint32_t cap;
    size_t data;      /* offset of slot 0's bytes from base */
    int own_mapping;  /* extent >= 1: munmap at close */
} Extent;

/* What the header said at attach, read once and checked (discipline a). */
typedef struct {
    uint32_t slot_size, stride, alignment, cap0;
    uint64_t pool_id;
} Geometry;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    int initialized;   /* __init__ ran (once: a second call is refused) */
    int closed;
    int closing;       /* close() is waiting for operations to leave: no new ones start */
    int ops;           /* operations of this process inside this core (any thread) */
    Py_ssize_t exports;    /* buffer views of slots exported in this process */
    PyObject *exported;    /* dict: pool-wide index -> views of it */
    uint8_t *main;
    size_t main_size;
    uint64_t *hdr;
    pthread_mutex_t *mutex;
    Geometry geo;
    Extent ext[MAX_EXTENTS];
    int n_ext;
    sem_t *sem;
    int live_fd;       /* OFD lock on byte <entry>: this process's liveness */
    int entry;
    uint32_t owner;    /* entry << INCARNATION_BITS | incarnation */
    uint64_t *my_entry;
    uid_t main_uid;
    uid_t trusted[64]; /* owners whose extents this process maps (the pool's trusted uids) */
    int n_trusted;
    pid_t pid;
    int kind;
    int reclaim;       /* orphan_policy "reclaim" when repairing after a dead holder */
    int spin_limit, spins;
    double lock_timeout;
    char *extent_prefix; /* "/fastalloc.<name>.x" */
    char *segment_path;  /* "/dev/shm/fastalloc.<name>" */
    PyObject *errors, *pack, *unpack, *grow;
    PyObject *pack_plain, *unpack_plain; /* the fast codec for plain values, or NULL (codec.c) */
    /* ThreadLocalPool: this process's magazine of pool-wide indices, each
     * CACHED by this owner in shared memory. Threads share it: every touch
     * holds the GIL. */
    uint32_t *mag;
    Py_ssize_t mag_len, mag_cap;
    uint32_t batch;
    /* Other processes' lock-free allocations minus releases, summed at the last
     * refill: the peak a magazine allocate records counts them as of then. */
    int64_t others_in_use;
} Core;

/* Repair tallies: what recovery found, by kind. */
enum { T_CACHED, T_HALF, T_TORN, T_KEPT, T_RECLAIMED, T_CORRUPT, T_REQUEUED, T_IN_USE, T_COUNT };

/* What a lock acquisition did besides locking: a repair after a dead holder. */
typedef struct {
    int repaired;           /* a repair ran (and completed) inside this acquisition */
    int dead_holder;        /* the previous holder died holding the lock */
    uint64_t dead_owner;    /* its owner id + 1 (0: unknown), as HDR_DEAD_OWNER had it */
    long counts[T_COUNT];   /* that repair's tally */
} LockInfo;

/* ---- across units (unity.c includes them in this order) ---- */
static PyObject *raise_code(Core *c, int code, PyObject *args_tuple);
static PyObject *raise_failure(Core *c, const Failure *f);
static int rebuild_locked(Core *c, int reclaim, long *counts, Failure *f);
static int core_lock_for(Core *c, double timeout, int reclaim, LockInfo *info);
static void core_unlock(Core *c);
static int drain(Core *c, Py_ssize_t count);
static int exported_slot(Core *c, uint64_t index);

#define RAISE(c, code, ...) raise_code((c), (code), Py_BuildValue("(" __VA_ARGS__))

#endif

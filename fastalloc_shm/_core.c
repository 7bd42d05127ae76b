/* The compiled core of fastalloc-shm: every step of every pool operation, once.
 *
 * One Core object per pool per process. It maps what the pool owns (the main
 * segment through the mmap Python gives it, growth extents by itself), holds
 * the free-slot semaphore, and owns the client entry of this process. Python
 * keeps policy (growth amounts, batch sizes, orphan policy, messages): it
 * passes callables for the few things it decides (`errors(code, ...)` builds
 * an exception, `grow()` adds an extent, `pack(value)` packs what the fast
 * path cannot).
 *
 * The lock is a process-shared robust pthread mutex in the header, as LMDB
 * does it (MDB_USE_ROBUST): when its holder dies the kernel marks it, the next
 * locker gets EOWNERDEAD, rebuilds from slot states and marks it consistent.
 * No pid or clock guesses; a live holder, however slow, is never robbed. Every
 * critical section runs here, holding the GIL and calling no Python code, so
 * no Python exception (a signal handler's, Ctrl-C) can land inside one.
 *
 * The named POSIX semaphore counts free slots, the door in front of the free
 * list: an allocation takes a token, a release posts one. It is derived
 * state: the free lists under the mutex are the truth, an allocation that finds
 * a slot without a token (or a token without a slot) just heals the count,
 * and recovery re-derives it.
 *
 * Lock-free paths (get, a ThreadLocalPool's magazine allocate/release) order
 * their loads and stores with C11-style acquire/release atomics (GCC
 * __atomic builtins), so nothing relies on x86 store order. Two racing
 * releases of one handle claim the slot with one 64-bit compare-and-swap of
 * (generation, state word): exactly one wins.
 *
 * Nothing read from a segment is trusted: every index, length and offset is
 * checked against the mapping before use, and a bad one is a typed error.
 */
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

#include "_layout.h"

_Static_assert(sizeof(unsigned long) == 8, "handles are 64-bit: an LP64 platform (Linux) is needed");

/* ---- error codes: Python's `errors(code, *args)` turns them into exceptions ---- */
enum {
    E_CLOSED = 1,      /* () */
    E_INVALID,         /* (handle) not a handle of this pool */
    E_STALE,           /* (handle) released */
    E_TORN,            /* (handle, owner pid) */
    E_EXHAUSTED,       /* (wanted) */
    E_TOO_LARGE,       /* (size) */
    E_PACK,            /* (value, exception) */
    E_UNPACK,          /* (handle, exception) */
    E_LOCK_TIMEOUT,    /* (holder pid, seconds) */
    E_DAMAGED,         /* (message) */
    E_BUSY_READ,       /* (handle) */
    E_OS,              /* (message) */
    E_DUPLICATE,       /* (handle) twice in one batch */
    E_UNTRUSTED,       /* (extent number, path, owner uid) */
};

/* ---- fault injection (tests only): FASTALLOC_FAULT=<point>:<action>[:<n>], read once ----
 * The n-th arrival at <point> appends "<pid> <point> <n>" to $FASTALLOC_FAULT_FILE
 * (flushed: a watcher always knows where the process stopped), then acts:
 * kill (SIGKILL), stop (SIGSTOP) or pause (sleep until killed). */
#define FAULT_POINTS(X) \
    X(F_LOCK_ACQUIRED, "lock.acquired") X(F_LOCK_RELEASED, "lock.released") \
    X(F_ALLOC_TOKEN, "alloc.token") X(F_ALLOC_MARKED, "alloc.marked") X(F_ALLOC_POPPED, "alloc.popped") \
    X(F_ALLOC_WRITING, "alloc.writing") X(F_RELEASE_FREED, "release.freed") X(F_RELEASE_PUSHED, "release.pushed") \
    X(F_SET_CLAIMED, "set.claimed") X(F_SET_WRITING, "set.writing") X(F_BATCH_TAKING, "batch.taking") \
    X(F_BATCH_RELEASING, "batch.releasing") X(F_MAGAZINE_RELEASE, "magazine.release") \
    X(F_GROW_CREATED, "grow.created") X(F_RECOVER_REBUILDING, "recover.rebuilding")
#define X_ENUM(id, text) id,
enum { F_NONE = 0, FAULT_POINTS(X_ENUM) F_COUNT };
#undef X_ENUM
#define X_NAME(id, text) [id] = text,
static const char *fault_names[F_COUNT] = {FAULT_POINTS(X_NAME)};
#undef X_NAME

static int fault_point = F_NONE;
static char fault_action = 0; /* 'k' kill, 'p' pause, 's' stop */
static long fault_nth = 1, fault_remaining = 0;

static void fault_fire(int point)
{
    const char *marker = getenv("FASTALLOC_FAULT_FILE");
    if (marker) {
        int fd = open(marker, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char line[128];
            int n = snprintf(line, sizeof line, "%d %s %ld\n", (int)getpid(), fault_names[point], fault_nth);
            if (n > 0 && write(fd, line, (size_t)n) < 0) { /* the test finds no marker and says so */ }
            fsync(fd);
            close(fd);
        }
    }
    if (fault_action == 'k')
        kill(getpid(), SIGKILL);
    if (fault_action == 's')
        kill(getpid(), SIGSTOP);
    else
        for (;;)
            pause();
}

#define FAULT(point) \
    do { if (fault_point == (point) && --fault_remaining == 0) fault_fire(point); } while (0)

/* 0, or -1 with ValueError set: a spec naming no point or action is a mistake to say at once. */
static int fault_parse(void)
{
    const char *spec = getenv("FASTALLOC_FAULT");
    if (!spec || !*spec)
        return 0;
    const char *colon = strchr(spec, ':');
    size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
    for (int p = 1; p < F_COUNT; p++)
        if (len == strlen(fault_names[p]) && !strncmp(spec, fault_names[p], len))
            fault_point = p;
    const char *action = colon ? colon + 1 : "";
    const char *nth = strchr(action, ':');
    size_t alen = nth ? (size_t)(nth - action) : strlen(action);
    if (alen == 4 && !strncmp(action, "kill", 4))
        fault_action = 'k';
    else if (alen == 4 && !strncmp(action, "stop", 4))
        fault_action = 's';
    else if (alen == 5 && !strncmp(action, "pause", 5))
        fault_action = 'p';
    char *end = NULL;
    fault_nth = nth ? strtol(nth + 1, &end, 10) : 1;
    if (fault_point == F_NONE || !fault_action || fault_nth < 1 || (nth && (end == nth + 1 || *end))) {
        fault_point = F_NONE;
        PyErr_Format(PyExc_ValueError,
                     "FASTALLOC_FAULT=%s: expected <point>:<kill|stop|pause>[:<n>], <point> one of fastalloc_shm._core.FAULT_POINTS",
                     spec);
        return -1;
    }
    fault_remaining = fault_nth;
    return 0;
}

/* ---- atomics ---- */
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static inline uint64_t pair(uint32_t gen, uint32_t word) { return (uint64_t)gen | ((uint64_t)word << 32); }
static inline uint32_t next_generation(uint32_t gen)
{
    gen &= GENERATION_MASK;
    return gen >= GENERATION_MASK ? 1 : gen + 1;
}
static inline uint32_t state_of(uint32_t word) { return word >> STATE_SHIFT; }
static inline uint32_t owner_of(uint32_t word) { return word & OWNER_MASK; }

/* ---- the Core object ---- */
typedef struct {
    uint8_t *base;    /* extent start (extent 0: inside the main mapping) */
    size_t size;      /* bytes mapped from base */
    uint64_t first;   /* pool-wide index of local slot 0 */
    uint32_t cap;
    size_t data;      /* offset of slot 0's bytes from base */
    int own_mapping;  /* extent >= 1: munmap at close */
} Extent;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    int closed;
    uint8_t *main;
    size_t main_size;
    uint64_t *hdr;
    pthread_mutex_t *mutex;
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
    int waiting;       /* threads of this process inside a GIL-free wait on this core: close() must not unmap */
    pid_t pid;
    uint32_t slot_size, stride, alignment;
    int kind;
    int reclaim;       /* orphan_policy "reclaim" when repairing after a dead holder */
    int spin_limit, spins;
    double lock_timeout;
    char *extent_prefix; /* "/fastalloc.<name>.x" */
    char *segment_path;  /* "/dev/shm/fastalloc.<name>" */
    PyObject *errors, *pack, *unpack, *grow;
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

static PyTypeObject CoreType;

/* ---- errors ---- */
static PyObject *raise_code(Core *c, int code, PyObject *args_tuple)
{
    if (!args_tuple)
        return NULL;
    if (!c->errors) {
        Py_DECREF(args_tuple);
        PyErr_SetString(PyExc_RuntimeError, "this Core was never initialized");
        return NULL;
    }
    PyObject *code_obj = PyLong_FromLong(code);
    PyObject *full = NULL, *exc = NULL;
    if (code_obj) {
        Py_ssize_t n = PyTuple_GET_SIZE(args_tuple);
        full = PyTuple_New(n + 1);
        if (full) {
            PyTuple_SET_ITEM(full, 0, code_obj);
            code_obj = NULL;
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *item = PyTuple_GET_ITEM(args_tuple, i);
                Py_INCREF(item);
                PyTuple_SET_ITEM(full, i + 1, item);
            }
            exc = PyObject_Call(c->errors, full, NULL);
        }
    }
    Py_XDECREF(code_obj);
    Py_XDECREF(full);
    Py_DECREF(args_tuple);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}
#define RAISE(c, code, ...) raise_code((c), (code), Py_BuildValue("(" __VA_ARGS__))
/* Every operation of a closed pool raises FastallocError saying so. */
#define RETURN_IF_CLOSED(c) \
    do { if ((c)->closed) return RAISE((c), E_CLOSED, ")"); } while (0)
static PyObject *raise_damaged(Core *c, const char *what)
{
    return raise_code(c, E_DAMAGED, Py_BuildValue("(s)", what));
}
static PyObject *raise_os(Core *c, const char *what)
{
    char text[256];
    snprintf(text, sizeof text, "%s: %s", what, strerror(errno));
    return raise_code(c, E_OS, Py_BuildValue("(s)", text));
}

/* The pending exception, taken (a new reference), or NULL when there is none
 * worth wrapping. */
static PyObject *fetch_exception(void)
{
    /* What msgpack raises for a value it cannot pack or bytes it cannot unpack; anything
     * else (a signal handler's exception, MemoryError) goes on as it is. */
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)
        && !PyErr_ExceptionMatches(PyExc_OverflowError))
        return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* ---- geometry ---- */
static size_t align_up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }
static size_t extent_data_offset(uint32_t cap, uint32_t alignment)
{
    size_t a = alignment > 64 ? alignment : 64;
    return align_up(EXT_HEADER_BYTES + (size_t)cap * META_BYTES, a);
}
static size_t extent_bytes(uint32_t cap, uint32_t stride, uint32_t alignment)
{
    return align_up(extent_data_offset(cap, alignment) + (size_t)cap * stride, (size_t)sysconf(_SC_PAGESIZE));
}
static inline uint32_t *ext_words(Extent *e) { return (uint32_t *)e->base; }
static inline uint32_t *meta_of(Extent *e, uint32_t local) { return (uint32_t *)(e->base + EXT_HEADER_BYTES) + (size_t)local * META_WORDS; }
static inline uint8_t *slot_of(Core *c, Extent *e, uint32_t local) { return e->base + e->data + (size_t)local * c->stride; }
static inline uint64_t *client_words(Core *c, int entry) { return (uint64_t *)(c->main + CLIENT_TABLE_OFFSET + (size_t)entry * CLIENT_BYTES); }
static inline uint32_t client_pid(Core *c, int entry) { return LOAD((uint32_t *)client_words(c, entry)); }
static inline uint32_t client_incarnation(Core *c, int entry) { return LOAD((uint32_t *)client_words(c, entry) + 1); }

/* Validate an extent's header against its mapping: capacity, magic, fresh mark, head. */
static int extent_sane(Core *c, Extent *e)
{
    uint32_t *w = ext_words(e);
    if (e->size < extent_bytes(e->cap, c->stride, c->alignment))
        return 0;
    return LOAD(&w[EXT_MAGIC]) == EXTENT_MAGIC && LOAD(&w[EXT_CAPACITY]) == e->cap && LOAD(&w[EXT_FRESH]) <= e->cap
           && LOAD(&w[EXT_HEAD]) <= e->cap;
}

/* Map extents other processes added since we last looked. Outside the lock
 * (committed table entries never change; the count is published last). */
static int map_extents_from(Core *c, uint64_t count);
static inline int map_new_extents(Core *c)
{
    uint64_t count = LOAD_ACQ(&c->hdr[HDR_EXTENTS]);
    return count == (uint64_t)c->n_ext ? 0 : map_extents_from(c, count);
}
static int map_extents_from(Core *c, uint64_t count)
{
    if (count > MAX_EXTENTS) {
        raise_damaged(c, "extent count beyond the table");
        return -1;
    }
    while ((uint64_t)c->n_ext < count) {
        int k = c->n_ext;
        uint64_t *entry = (uint64_t *)(c->main + EXTENT_TABLE_OFFSET) + 2 * k;
        uint64_t base = LOAD(&entry[0]), cap = LOAD(&entry[1]);
        Extent *prev = &c->ext[k - 1];
        if (cap == 0 || cap > 0xFFFFFFFFull || base != prev->first + prev->cap || base + cap > 0x100000000ull) {
            raise_damaged(c, "extent table entry does not follow the previous extent");
            return -1;
        }
        char name[512];
        snprintf(name, sizeof name, "%s%d", c->extent_prefix, k);
        int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
        if (fd < 0) {
            raise_os(c, "cannot open a growth extent (unlinked? run recover())");
            return -1;
        }
        struct stat st;
        if (fstat(fd, &st) < 0) {
            close(fd);
            raise_os(c, "cannot stat a growth extent");
            return -1;
        }
        int trusted = st.st_uid == c->main_uid;
        for (int i = 0; i < c->n_trusted && !trusted; i++)
            trusted = st.st_uid == c->trusted[i];
        if (!trusted) {
            close(fd);
            char path[600];
            snprintf(path, sizeof path, "/dev/shm%s", name);
            RAISE(c, E_UNTRUSTED, "isI)", k, path, (unsigned int)st.st_uid);
            return -1;
        }
        size_t need = extent_bytes((uint32_t)cap, c->stride, c->alignment);
        if ((size_t)st.st_size < need) {
            close(fd);
            raise_damaged(c, "a growth extent is smaller than its capacity needs");
            return -1;
        }
        void *p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
            raise_os(c, "cannot map a growth extent");
            return -1;
        }
        Extent *e = &c->ext[k];
        e->base = p;
        e->size = need;
        e->first = base;
        e->cap = (uint32_t)cap;
        e->data = extent_data_offset((uint32_t)cap, c->alignment);
        e->own_mapping = 1;
        if (!extent_sane(c, e)) {
            munmap(p, need);
            raise_damaged(c, "a growth extent's header is damaged");
            return -1;
        }
        c->n_ext = k + 1;
    }
    return 0;
}

/* The extent and local index of a pool-wide index; NULL when there is none. */
static inline Extent *locate(Core *c, uint64_t index, uint32_t *local)
{
    Extent *e = &c->ext[0];
    if (index < e->cap) {
        *local = (uint32_t)index;
        return e;
    }
    Extent *last = &c->ext[c->n_ext - 1];
    if (index >= last->first + last->cap) {
        if (map_new_extents(c) < 0) {
            PyErr_Clear();
            return NULL;
        }
        last = &c->ext[c->n_ext - 1];
        if (index >= last->first + last->cap)
            return NULL;
    }
    int lo = 0, hi = c->n_ext - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->ext[mid].first <= index)
            lo = mid;
        else
            hi = mid - 1;
    }
    *local = (uint32_t)(index - c->ext[lo].first);
    return &c->ext[lo];
}

/* ---- handles ---- */
/* 1: decoded; 0: not a handle this pool could issue (no exception set). */
static inline int decode_handle(PyObject *h, uint32_t *gen, uint64_t *index)
{
    /* One rule for every method and backend: a handle is exactly an int (no subclass, no bool). */
    if (!PyLong_CheckExact(h))
        return 0;
    unsigned long v;
#if PY_VERSION_HEX < 0x030C0000
    /* A handle is at most 63 bits: three 30-bit digits, read straight (CPython 3.11's int layout). */
    Py_ssize_t size = Py_SIZE(h);
    if (size <= 0 || size > 3)
        return 0;
    const digit *d = ((PyLongObject *)h)->ob_digit;
    v = d[0];
    if (size > 1)
        v |= (unsigned long)d[1] << PyLong_SHIFT;
    if (size > 2) {
        if (d[2] >> (63 - 2 * PyLong_SHIFT))
            return 0;
        v |= (unsigned long)d[2] << (2 * PyLong_SHIFT);
    }
#else
    /* PyLong_AsUnsignedLong (64 bits here) is a digit loop; the LongLong one goes through a byte array. */
    v = PyLong_AsUnsignedLong(h);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
#endif
    uint64_t g = v >> 32;
    if (g == 0 || g > GENERATION_MASK)
        return 0;
    *gen = (uint32_t)g;
    *index = v & 0xFFFFFFFFull;
    return 1;
}
static PyObject *make_handle(uint32_t gen, uint64_t index) { return PyLong_FromUnsignedLong((unsigned long)(((uint64_t)gen << 32) | index)); }

/* The slot of a handle; raises InvalidHandle when it names none. */
static inline Extent *slot_of_handle(Core *c, PyObject *h, uint32_t *gen, uint32_t *local)
{
    uint64_t index;
    if (!decode_handle(h, gen, &index)) {
        RAISE(c, E_INVALID, "O)", h);
        return NULL;
    }
    Extent *e = locate(c, index, local);
    if (!e)
        RAISE(c, E_INVALID, "O)", h);
    return e;
}

/* The same for an operation: FastallocError if this pool is closed here. */
static inline Extent *open_slot_of(Core *c, PyObject *h, uint32_t *gen, uint32_t *local)
{
    if (c->closed) {
        RAISE(c, E_CLOSED, ")");
        return NULL;
    }
    return slot_of_handle(c, h, gen, local);
}

/* Why a handle does not name a readable value: torn, or stale. */
static PyObject *raise_not_live(Core *c, PyObject *h, uint32_t *m, uint32_t gen)
{
    uint32_t g = LOAD(&m[META_GEN]), w = LOAD(&m[META_WORD]);
    if (g == (gen | UNREADABLE) && state_of(w) == TORN) {
        int entry = (int)(owner_of(w) >> INCARNATION_BITS);
        uint32_t pid = entry < MAX_CLIENTS ? client_pid(c, entry) : 0;
        return RAISE(c, E_TORN, "OI)", h, pid);
    }
    return RAISE(c, E_STALE, "O)", h);
}

/* ---- liveness: an OFD write lock on byte <entry> of the main segment ---- */
static int entry_lock(int fd, int entry, short type, int cmd)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = entry, .l_len = 1, .l_pid = 0};
    return fcntl(fd, cmd, &fl);
}
static int entry_alive(Core *c, int entry)
{
    if (entry == c->entry)
        return 1;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = entry, .l_len = 1, .l_pid = 0};
    if (fcntl(c->live_fd, F_OFD_GETLK, &fl) < 0)
        return 1; /* cannot tell: never declare a process dead on a guess */
    return fl.l_type != F_UNLCK;
}
/* Is the owner recorded in a slot alive? Its entry must still carry the same incarnation. */
static int owner_alive(Core *c, uint32_t owner, signed char *cache)
{
    int entry = (int)(owner >> INCARNATION_BITS);
    if (entry >= MAX_CLIENTS)
        return 0;
    if ((client_incarnation(c, entry) & ((1u << INCARNATION_BITS) - 1)) != (owner & ((1u << INCARNATION_BITS) - 1)))
        return 0;
    if (cache[entry] < 0)
        cache[entry] = (signed char)entry_alive(c, entry);
    return cache[entry];
}

/* ---- the lock ---- */
static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static struct timespec monotonic_at(double t)
{
    struct timespec ts;
    if (!(t < 1e12))
        t = 1e12; /* a lock_timeout of centuries: still a time_t */
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

typedef struct {
    int dead_holder; /* EOWNERDEAD seen: repaired before use */
} LockInfo;

static int rebuild_locked(Core *c, int reclaim, PyObject *tally);

/* Slices of a blocking wait: between them the GIL is taken and signals are
 * checked, so Ctrl-C and signal handlers run while nothing is held. */
#define WAIT_SLICE 0.05

/* Take the pool mutex within `timeout` s. 0 held; -1 exception set (nothing held). */
static int core_lock_for(Core *c, double timeout, LockInfo *info)
{
    info->dead_holder = 0;
    int rc = pthread_mutex_trylock(c->mutex);
    if (rc == EBUSY || rc == EDEADLK) {
        double started = monotonic_now(), deadline = started + timeout;
        if (c->spin_limit) {
            for (int i = 0; i < c->spins && rc == EBUSY; i++) {
                sched_yield();
                rc = pthread_mutex_trylock(c->mutex);
            }
            c->spins = rc == EBUSY ? (c->spins > 2 ? c->spins / 2 : 2) : (c->spins < c->spin_limit ? c->spins * 2 : c->spin_limit);
        }
        while (rc == EBUSY || rc == EDEADLK || rc == ETIMEDOUT) {
            double now = monotonic_now();
            if (now >= deadline) {
                /* Only the holder writes the header; counting a timeout is ours to do
                 * without the lock, so it is an atomic add. */
                __atomic_fetch_add(&c->hdr[HDR_LOCK_TIMEOUTS], 1, __ATOMIC_RELAXED);
                uint64_t holder = LOAD(&c->hdr[HDR_LOCK_HOLDER]);
                RAISE(c, E_LOCK_TIMEOUT, "Kd)", (unsigned long long)holder, timeout);
                return -1;
            }
            double until = now + WAIT_SLICE < deadline ? now + WAIT_SLICE : deadline;
            struct timespec ts = monotonic_at(until);
            c->waiting++;
            if (rc == EDEADLK) {
                /* The holder's thread id equals ours in another PID namespace: glibc
                 * refuses to wait on "ourselves", so poll. */
                struct timespec nap = {0, 1000000};
                Py_BEGIN_ALLOW_THREADS
                nanosleep(&nap, NULL);
                Py_END_ALLOW_THREADS
                rc = pthread_mutex_trylock(c->mutex);
            } else {
                Py_BEGIN_ALLOW_THREADS
                rc = pthread_mutex_clocklock(c->mutex, CLOCK_MONOTONIC, &ts);
                Py_END_ALLOW_THREADS
            }
            c->waiting--;
            if (rc == EBUSY || rc == EDEADLK || rc == ETIMEDOUT) {
                if (PyErr_CheckSignals() < 0)
                    return -1;
            }
        }
        if (rc == 0 || rc == EOWNERDEAD)
            c->hdr[HDR_LOCK_WAIT_NS] += (uint64_t)((monotonic_now() - started) * 1e9);
    }
    if (rc == EOWNERDEAD) {
        info->dead_holder = 1;
        c->hdr[HDR_LOCK_HOLDER] = (uint64_t)c->pid;
        rebuild_locked(c, c->reclaim, NULL);
        c->hdr[HDR_RECOVERIES]++;
        pthread_mutex_consistent(c->mutex);
        rc = 0;
    }
    if (rc != 0) {
        errno = rc;
        raise_os(c, rc == ENOTRECOVERABLE ? "the pool lock is unrecoverable; unlink the pool and create it again"
                                          : "cannot take the pool lock");
        return -1;
    }
    c->hdr[HDR_LOCK_HOLDER] = (uint64_t)c->pid;
    c->hdr[HDR_LOCK_ACQUISITIONS]++;
    FAULT(F_LOCK_ACQUIRED);
    return 0;
}
static inline int core_lock(Core *c)
{
    LockInfo info;
    return core_lock_for(c, c->lock_timeout, &info);
}
static inline void core_unlock(Core *c)
{
    c->hdr[HDR_LOCK_HOLDER] = 0;
    pthread_mutex_unlock(c->mutex);
    FAULT(F_LOCK_RELEASED);
}

/* ---- the semaphore: tokens for free slots ---- */
static inline int token_try(Core *c) { return sem_trywait(c->sem) == 0; }
static inline void tokens_post(Core *c, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (sem_post(c->sem) < 0)
            break; /* EOVERFLOW: the count is advisory above the truth anyway */
}
static void tokens_take(Core *c, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (!token_try(c))
            break; /* fewer tokens than slots: the count was low; this heals it */
}
/* Wait for a token until `deadline` (monotonic). 1 got one, 0 timed out, -1 exception. */
static int token_wait(Core *c, double deadline)
{
    for (;;) {
        if (token_try(c))
            return 1;
        double now = monotonic_now();
        if (now >= deadline)
            return 0;
        double until = now + WAIT_SLICE < deadline ? now + WAIT_SLICE : deadline;
        struct timespec ts = monotonic_at(until);
        int rc;
        c->waiting++;
        Py_BEGIN_ALLOW_THREADS
        rc = sem_clockwait(c->sem, CLOCK_MONOTONIC, &ts);
        Py_END_ALLOW_THREADS
        c->waiting--;
        if (rc == 0)
            return 1;
        if (PyErr_CheckSignals() < 0)
            return -1;
        /* Also look at the free list now and then: the count may be low after a crash. */
        return 0;
    }
}

/* ---- free lists (lock held) ---- */

/* Pop one free slot of extent e, marked `state|owner` with UNREADABLE set; -1 if none, -2 damaged. */
static inline int64_t pop_slot(Core *c, Extent *e, uint32_t state)
{
    uint32_t *w = ext_words(e);
    uint32_t head = w[EXT_HEAD], fresh = w[EXT_FRESH];
    if (fresh > e->cap || head > fresh)
        return -2;
    uint32_t tag = (state << STATE_SHIFT) | c->owner;
    if (head) {
        uint32_t local = head - 1;
        uint32_t *m = meta_of(e, local);
        uint32_t next = m[META_SEQ];
        if (next > fresh || state_of(m[META_WORD]) != FREE)
            return -2;
        uint32_t gen = m[META_GEN] & GENERATION_MASK;
        STORE((uint64_t *)m, pair((gen ? gen : 1) | UNREADABLE, tag));
        FAULT(F_ALLOC_MARKED);
        m[META_SEQ] = 0;
        w[EXT_HEAD] = next;
        return local;
    }
    if (fresh < e->cap) {
        uint32_t *m = meta_of(e, fresh);
        STORE((uint64_t *)m, pair(1 | UNREADABLE, tag));
        m[META_LEN] = 0;
        m[META_SEQ] = 0;
        FAULT(F_ALLOC_MARKED);
        w[EXT_FRESH] = fresh + 1;
        return fresh;
    }
    return -1;
}

/* Push a slot already marked free. */
static inline void push_slot(Extent *e, uint32_t local)
{
    uint32_t *w = ext_words(e);
    uint32_t *m = meta_of(e, local);
    m[META_SEQ] = w[EXT_HEAD];
    w[EXT_HEAD] = local + 1;
}

static int free_hint(Core *c)
{
    uint64_t hint = c->hdr[HDR_FREE_HINT];
    return hint < (uint64_t)c->n_ext ? (int)hint : 0;
}

/* Take one slot from any extent (lock held). Sets ep and local; 1 taken, 0 none, -1 damaged (raised). */
static int take_one(Core *c, uint32_t state, Extent **ep, uint32_t *local)
{
    int start = free_hint(c);
    for (int i = 0, k = start; i < c->n_ext; i++, k = k + 1 == c->n_ext ? 0 : k + 1) {
        int64_t got = pop_slot(c, &c->ext[k], state);
        if (got == -2) {
            raise_damaged(c, "a free list is damaged; run recover()");
            return -1;
        }
        if (got >= 0) {
            if (k != start)
                c->hdr[HDR_FREE_HINT] = (uint64_t)k;
            *ep = &c->ext[k];
            *local = (uint32_t)got;
            return 1;
        }
    }
    return 0;
}

static void count_allocations(Core *c, uint64_t n)
{
    c->hdr[HDR_ALLOCATIONS] += n;
    c->hdr[HDR_IN_USE] += n;
    uint64_t used = c->hdr[HDR_IN_USE];
    if ((int64_t)used > 0 && used > c->hdr[HDR_PEAK])
        c->hdr[HDR_PEAK] = used;
}
static void count_deallocations(Core *c, uint64_t n)
{
    c->hdr[HDR_DEALLOCATIONS] += n;
    c->hdr[HDR_IN_USE] -= n;
}

/* Claim a published slot for release: (gen, ALLOCATED|any) -> (next|U, new_word).
 * A torn value may be released too. 1 claimed, 0 stale/busy (*busy set when a set() runs). */
static int claim_release(uint32_t *m, uint32_t gen, uint32_t new_state_word, int *busy)
{
    uint64_t *p = (uint64_t *)m;
    uint64_t cur = LOAD_ACQ(p);
    for (;;) {
        uint32_t g = (uint32_t)cur, w = (uint32_t)(cur >> 32);
        int live = (g == gen && state_of(w) == ALLOCATED) || (g == (gen | UNREADABLE) && state_of(w) == TORN);
        if (!live) {
            if (busy)
                *busy = g == gen && state_of(w) == SETTING;
            return 0;
        }
        uint64_t want = pair(next_generation(gen) | UNREADABLE, new_state_word);
        if (__atomic_compare_exchange_n(p, &cur, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 1;
    }
}

/* ---- packing ---- */
/* A value ready to copy into a slot: a msgpack header plus a body (bytes and
 * str packed here, without an intermediate object), or a packed bytes object. */
typedef struct {
    uint8_t head[5];
    size_t head_len;
    const char *body;
    size_t body_len;
    PyObject *owned; /* packed by the Python packer, or NULL */
} Packed;

static size_t packed_size(const Packed *p) { return p->head_len + p->body_len; }

static void put_length(Packed *p, uint8_t tag8, uint8_t tag16, uint8_t tag32, size_t n)
{
    if (n < 256 && tag8) {
        p->head[0] = tag8;
        p->head[1] = (uint8_t)n;
        p->head_len = 2;
    } else if (n < 65536) {
        p->head[0] = tag16;
        p->head[1] = (uint8_t)(n >> 8);
        p->head[2] = (uint8_t)n;
        p->head_len = 3;
    } else {
        p->head[0] = tag32;
        p->head[1] = (uint8_t)(n >> 24);
        p->head[2] = (uint8_t)(n >> 16);
        p->head[3] = (uint8_t)(n >> 8);
        p->head[4] = (uint8_t)n;
        p->head_len = 5;
    }
}

static int pack_value(Core *c, PyObject *v, Packed *p)
{
    p->owned = NULL;
    p->head_len = 0;
    if (PyBytes_CheckExact(v)) {
        Py_ssize_t n = PyBytes_GET_SIZE(v);
        if ((size_t)n <= 0xFFFFFFFFu) {
            put_length(p, 0xc4, 0xc5, 0xc6, (size_t)n);
            p->body = PyBytes_AS_STRING(v);
            p->body_len = (size_t)n;
            return 0;
        }
    } else if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s && (size_t)n <= 0xFFFFFFFFu) {
            if (n < 32) {
                p->head[0] = (uint8_t)(0xa0 | n);
                p->head_len = 1;
            } else {
                put_length(p, 0xd9, 0xda, 0xdb, (size_t)n);
            }
            p->body = s;
            p->body_len = (size_t)n;
            return 0;
        }
        PyErr_Clear(); /* lone surrogates: let the packer say what is wrong */
    }
    PyObject *b = PyObject_CallOneArg(c->pack, v);
    if (!b) {
        PyObject *exc = fetch_exception();
        if (exc)
            RAISE(c, E_PACK, "ON)", v, exc);
        return -1;
    }
    if (!PyBytes_Check(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "pack() must return bytes");
        return -1;
    }
    p->owned = b;
    p->body = PyBytes_AS_STRING(b);
    p->body_len = (size_t)PyBytes_GET_SIZE(b);
    return 0;
}
static void packed_done(Packed *p) { Py_CLEAR(p->owned); }

static int pack_checked(Core *c, PyObject *v, Packed *p)
{
    if (pack_value(c, v, p) < 0)
        return -1;
    size_t n = packed_size(p);
    if (n > c->slot_size) {
        packed_done(p);
        RAISE(c, E_TOO_LARGE, "n)", (Py_ssize_t)n);
        return -1;
    }
    return 0;
}

static void copy_packed(uint8_t *dst, const Packed *p)
{
    memcpy(dst, p->head, p->head_len);
    memcpy(dst + p->head_len, p->body, p->body_len);
}

/* Write a value into a slot this process just took, and publish it. */
static PyObject *write_and_publish(Core *c, Extent *e, uint32_t local, const Packed *p)
{
    uint32_t *m = meta_of(e, local);
    uint8_t *dst = slot_of(c, e, local);
    size_t n = packed_size(p);
    if (fault_point == F_ALLOC_WRITING) {
        memcpy(dst, p->head, p->head_len);
        FAULT(F_ALLOC_WRITING);
    }
    copy_packed(dst, p);
    m[META_LEN] = (uint32_t)n;
    m[META_SEQ] = 0;
    uint32_t gen = LOAD(&m[META_GEN]) & GENERATION_MASK;
    STORE_REL((uint64_t *)m, pair(gen, (ALLOCATED << STATE_SHIFT) | c->owner));
    return make_handle(gen, e->first + local);
}

/* ---- reading ---- */
static PyObject *decode_value(Core *c, PyObject *h, const uint8_t *src, uint32_t n, PyObject **copy)
{
    /* bytes and str: built straight from the slot, the caller re-checks the sequence. */
    if (n >= 1) {
        uint8_t t = src[0];
        size_t hl = 0, len = 0;
        int is_bin = 0, is_str = 0;
        if (t == 0xc4 && n >= 2) { hl = 2; len = src[1]; is_bin = 1; }
        else if (t == 0xc5 && n >= 3) { hl = 3; len = (size_t)src[1] << 8 | src[2]; is_bin = 1; }
        else if (t == 0xc6 && n >= 5) { hl = 5; len = (size_t)src[1] << 24 | (size_t)src[2] << 16 | (size_t)src[3] << 8 | src[4]; is_bin = 1; }
        else if ((t & 0xe0) == 0xa0) { hl = 1; len = t & 0x1f; is_str = 1; }
        else if (t == 0xd9 && n >= 2) { hl = 2; len = src[1]; is_str = 1; }
        if ((is_bin || is_str) && hl + len == n) {
            if (is_bin)
                return PyBytes_FromStringAndSize((const char *)src + hl, (Py_ssize_t)len);
            PyObject *s = PyUnicode_DecodeUTF8((const char *)src + hl, (Py_ssize_t)len, "strict");
            if (s)
                return s;
            PyErr_Clear(); /* torn by a racing set(), or not ours: the slow path decides */
        }
    }
    *copy = PyBytes_FromStringAndSize((const char *)src, n);
    return NULL;
}

static PyObject *unpack_copy(Core *c, PyObject *h, PyObject *copy)
{
    PyObject *v = PyObject_CallOneArg(c->unpack, copy);
    Py_DECREF(copy);
    if (!v) {
        PyObject *exc = fetch_exception();
        return exc ? RAISE(c, E_UNPACK, "ON)", h, exc) : NULL;
    }
    return v;
}

#define READ_RETRIES 100000

static PyObject *Core_get(Core *c, PyObject *h)
{
    uint32_t gen, local;
    Extent *e = open_slot_of(c, h, &gen, &local);
    if (!e)
        return NULL;
    uint32_t *m = meta_of(e, local);
    const uint8_t *src = slot_of(c, e, local);
    for (long attempt = 0; attempt < READ_RETRIES; attempt++) {
        uint32_t seq = LOAD_ACQ(&m[META_SEQ]);
        uint32_t g = LOAD_ACQ(&m[META_GEN]);
        if (g != gen)
            return raise_not_live(c, h, m, gen);
        if (!(seq & 1)) {
            uint32_t n = LOAD(&m[META_LEN]);
            if (n <= c->slot_size) {
                PyObject *copy = NULL;
                PyObject *v = decode_value(c, h, src, n, &copy);
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                int same = LOAD(&m[META_SEQ]) == seq && LOAD(&m[META_GEN]) == gen;
                if (same) {
                    if (v)
                        return v;
                    if (!copy)
                        return NULL;
                    return unpack_copy(c, h, copy);
                }
                Py_XDECREF(v);
                Py_XDECREF(copy);
                if (PyErr_Occurred())
                    return NULL;
            } else if (LOAD(&m[META_SEQ]) == seq && LOAD(&m[META_GEN]) == gen) {
                return raise_damaged(c, "a slot's length exceeds the slot size; run recover()");
            }
        }
        if (attempt > 64)
            sched_yield();
    }
    return RAISE(c, E_BUSY_READ, "O)", h);
}

/* ---- allocate ---- */
/* Ask Python's growth policy for room: 1 grew (or someone did), 0 may not grow, -1 exception. */
static int ask_growth(Core *c, Py_ssize_t wanted)
{
    if (c->grow == Py_None)
        return 0;
    PyObject *arg = PyLong_FromSsize_t(wanted);
    if (!arg)
        return -1;
    PyObject *r = PyObject_CallOneArg(c->grow, arg);
    Py_DECREF(arg);
    if (!r)
        return -1;
    int grew = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (grew > 0 && map_new_extents(c) < 0)
        return -1;
    return grew;
}

static PyObject *exhausted(Core *c, Py_ssize_t wanted)
{
    /* One per slot refused, as total_allocations counts one per slot (RedisPool too). */
    __atomic_fetch_add(&c->hdr[HDR_FAILURES], (uint64_t)wanted, __ATOMIC_RELAXED);
    return RAISE(c, E_EXHAUSTED, "n)", wanted);
}

static int drain(Core *c, Py_ssize_t count);

/* Take one slot for a new value, waiting up to `timeout` (<0: no wait). 1 taken, -1 exception. */
static int take_for_allocate(Core *c, double timeout, Extent **ep, uint32_t *local, uint32_t state)
{
    double deadline = timeout > 0 ? monotonic_now() + timeout : 0;
    for (;;) {
        int token = token_try(c);
        if (token)
            FAULT(F_ALLOC_TOKEN);
        if (map_new_extents(c) < 0) {
            if (token)
                tokens_post(c, 1);
            return -1;
        }
        if (core_lock(c) < 0) {
            if (token)
                tokens_post(c, 1);
            return -1;
        }
        int got = take_one(c, state, ep, local);
        if (got == 1) {
            if (state == WRITING)
                count_allocations(c, 1);
            FAULT(F_ALLOC_POPPED);
            core_unlock(c);
            return 1;
        }
        core_unlock(c);
        if (got < 0)
            return -1;
        /* No slot: a token we hold was one too many (the count heals by keeping it). */
        if (c->mag_len) {
            /* This process's own magazine may hold what the free lists lack. */
            if (drain(c, c->mag_len) < 0)
                return -1;
            continue;
        }
        int grew = ask_growth(c, 1);
        if (grew < 0)
            return -1;
        if (grew)
            continue;
        if (timeout <= 0) {
            exhausted(c, 1);
            return -1;
        }
        int waited = token_wait(c, deadline);
        if (waited < 0)
            return -1;
        if (waited == 1)
            tokens_post(c, 1); /* the loop takes it again with the lock in view */
        if (monotonic_now() >= deadline) {
            /* One last look under the lock, then give up. */
            if (core_lock(c) < 0)
                return -1;
            got = take_one(c, state, ep, local);
            if (got == 1 && state == WRITING)
                count_allocations(c, 1);
            core_unlock(c);
            if (got == 1) {
                tokens_take(c, 1);
                return 1;
            }
            if (got < 0)
                return -1;
            exhausted(c, 1);
            return -1;
        }
    }
}

static int parse_timeout(PyObject *obj, double *timeout)
{
    *timeout = -1;
    if (!obj || obj == Py_None)
        return 0;
    double t = PyFloat_AsDouble(obj);
    if (t == -1 && PyErr_Occurred())
        return -1;
    if (!(t >= 0) || t > 1e9) {
        PyErr_SetString(PyExc_ValueError, "timeout: seconds, finite and >= 0 (or None)");
        return -1;
    }
    *timeout = t;
    return 0;
}

static PyObject *magazine_allocate(Core *c, const Packed *p);
static int refill(Core *c);

static PyObject *Core_allocate(Core *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    RETURN_IF_CLOSED(c);
    PyObject *value = NULL, *timeout_obj = NULL;
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "allocate(value, timeout=None)");
        return NULL;
    }
    value = args[0];
    if (nargs == 2)
        timeout_obj = args[1];
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "timeout") == 0)
            timeout_obj = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "allocate() got an unexpected keyword argument %R", PyTuple_GET_ITEM(kwnames, i));
            return NULL;
        }
    }
    double timeout;
    if (parse_timeout(timeout_obj, &timeout) < 0)
        return NULL;
    Packed p;
    if (pack_checked(c, value, &p) < 0)
        return NULL;
    PyObject *h = NULL;
    Extent *e;
    uint32_t local;
    int from_magazine = c->kind == KIND_THREADLOCAL;
    if (from_magazine && c->mag_len == 0) {
        int r = refill(c);
        if (r == -2 && timeout > 0)
            from_magazine = 0; /* full, with a deadline: wait for one slot as any pool does */
        else if (r == -2)
            exhausted(c, 1);
        if (r == -1 || (r == -2 && from_magazine)) {
            packed_done(&p);
            return NULL;
        }
    }
    if (from_magazine)
        h = magazine_allocate(c, &p);
    else if (take_for_allocate(c, timeout, &e, &local, WRITING) == 1)
        h = write_and_publish(c, e, local, &p);
    packed_done(&p);
    return h;
}

/* ---- release ---- */
static PyObject *magazine_release(Core *c, PyObject *h, Extent *e, uint32_t local, uint32_t gen);

static PyObject *Core_release(Core *c, PyObject *h)
{
    uint32_t gen, local;
    Extent *e = open_slot_of(c, h, &gen, &local);
    if (!e)
        return NULL;
    if (c->kind == KIND_THREADLOCAL)
        return magazine_release(c, h, e, local, gen);
    uint32_t *m = meta_of(e, local);
    if (core_lock(c) < 0)
        return NULL;
    /* Only a ThreadLocalPool releases without the lock; here the lock alone orders
     * every writer of the pair, so a check and a store claim the slot. */
    uint64_t *pm = (uint64_t *)m;
    uint64_t cur = LOAD(pm);
    uint32_t g = (uint32_t)cur, w = (uint32_t)(cur >> 32);
    if (!((g == gen && state_of(w) == ALLOCATED) || (g == (gen | UNREADABLE) && state_of(w) == TORN))) {
        core_unlock(c);
        return raise_not_live(c, h, m, gen);
    }
    STORE_REL(pm, pair(next_generation(gen) | UNREADABLE, FREE << STATE_SHIFT));
    FAULT(F_RELEASE_FREED);
    push_slot(e, local);
    count_deallocations(c, 1);
    int k = (int)(e - c->ext);
    if ((uint64_t)k < c->hdr[HDR_FREE_HINT])
        c->hdr[HDR_FREE_HINT] = (uint64_t)k;
    FAULT(F_RELEASE_PUSHED);
    core_unlock(c);
    tokens_post(c, 1);
    Py_RETURN_NONE;
}

/* ---- set ---- */
static PyObject *Core_set(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    RETURN_IF_CLOSED(c);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set(handle, value)");
        return NULL;
    }
    PyObject *h = args[0];
    uint32_t gen, local;
    Extent *e = slot_of_handle(c, h, &gen, &local);
    if (!e)
        return NULL;
    Packed p;
    if (pack_checked(c, args[1], &p) < 0)
        return NULL;
    uint32_t *m = meta_of(e, local);
    if (core_lock(c) < 0) {
        packed_done(&p);
        return NULL;
    }
    /* Claim the slot from lock-free releasers: (gen, ALLOCATED|o) or a torn
     * (gen|U, TORN|o) -> (gen, SETTING|o). */
    uint64_t *pm = (uint64_t *)m;
    uint64_t cur = LOAD_ACQ(pm);
    uint32_t w;
    for (;;) {
        uint32_t g = (uint32_t)cur;
        w = (uint32_t)(cur >> 32);
        int live = (g == gen && state_of(w) == ALLOCATED) || (g == (gen | UNREADABLE) && state_of(w) == TORN);
        if (!live) {
            core_unlock(c);
            packed_done(&p);
            return raise_not_live(c, h, m, gen);
        }
        if (__atomic_compare_exchange_n(pm, &cur, pair(gen, (SETTING << STATE_SHIFT) | owner_of(w)), 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            break;
    }
    FAULT(F_SET_CLAIMED);
    uint32_t seq = m[META_SEQ] | 1;
    STORE(&m[META_SEQ], seq);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    uint8_t *dst = slot_of(c, e, local);
    if (fault_point == F_SET_WRITING) {
        memcpy(dst, p.head, p.head_len);
        FAULT(F_SET_WRITING);
    }
    copy_packed(dst, &p);
    STORE(&m[META_LEN], (uint32_t)packed_size(&p));
    STORE_REL(&m[META_SEQ], seq + 1);
    STORE_REL(pm, pair(gen, (ALLOCATED << STATE_SHIFT) | owner_of(w)));
    core_unlock(c);
    packed_done(&p);
    Py_RETURN_NONE;
}

/* ---- batches ---- */
typedef struct {
    Extent *e;
    uint32_t local;
} Taken;

/* Put back slots a batch took but cannot use (generation unchanged: no handle left us). Lock held. */
static void unwind_locked(Core *c, Taken *t, Py_ssize_t n)
{
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        uint32_t *m = meta_of(t[i].e, t[i].local);
        STORE((uint64_t *)m, pair(m[META_GEN] | UNREADABLE, FREE << STATE_SHIFT));
        push_slot(t[i].e, t[i].local);
    }
}

/* Take `count` slots (at least `minimum`) under one acquisition, growing as
 * policy allows. -1 exception; -2 full (nothing raised: the caller decides). */
static Py_ssize_t take_many(Core *c, Py_ssize_t count, Py_ssize_t minimum, uint32_t state, Taken *t)
{
    for (;;) {
        if (map_new_extents(c) < 0)
            return -1;
        if (core_lock(c) < 0)
            return -1;
        Py_ssize_t n = 0;
        while (n < count) {
            int got = take_one(c, state, &t[n].e, &t[n].local);
            if (got < 0) {
                unwind_locked(c, t, n);
                core_unlock(c);
                return -1;
            }
            if (!got)
                break;
            n++;
            FAULT(F_BATCH_TAKING);
        }
        if (n >= minimum) {
            if (state == WRITING)
                count_allocations(c, (uint64_t)n);
            core_unlock(c);
            tokens_take(c, n);
            return n;
        }
        unwind_locked(c, t, n);
        core_unlock(c);
        if (state == WRITING && c->mag_len) {
            /* Not a refill: this process's own magazine may hold what the free lists lack. */
            if (drain(c, c->mag_len) < 0)
                return -1;
            continue;
        }
        int grew = ask_growth(c, count - n);
        if (grew < 0)
            return -1;
        if (!grew)
            return -2;
    }
}

static PyObject *Core_allocate_many(Core *c, PyObject *values)
{
    RETURN_IF_CLOSED(c);
    PyObject *seq = PySequence_Fast(values, "allocate_many() takes an iterable of values");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Packed *packed = n ? PyMem_Calloc((size_t)n, sizeof(Packed)) : NULL;
    Taken *taken = n ? PyMem_Calloc((size_t)n, sizeof(Taken)) : NULL;
    PyObject *result = NULL;
    Py_ssize_t npacked = 0;
    if (n && (!packed || !taken)) {
        PyErr_NoMemory();
        goto done;
    }
    for (; npacked < n; npacked++)
        if (pack_checked(c, items[npacked], &packed[npacked]) < 0)
            goto done;
    Py_ssize_t got = n ? take_many(c, n, n, WRITING, taken) : 0;
    if (got == -2)
        exhausted(c, n);
    if (got < 0)
        goto done;
    result = PyList_New(n);
    if (!result) {
        /* Out of memory with slots taken: give them back. */
        if (core_lock(c) == 0) {
            unwind_locked(c, taken, n);
            c->hdr[HDR_ALLOCATIONS] -= (uint64_t)n; /* never handed out */
            c->hdr[HDR_IN_USE] -= (uint64_t)n;
            core_unlock(c);
            tokens_post(c, n);
        }
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = write_and_publish(c, taken[i].e, taken[i].local, &packed[i]);
        if (!h) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, h);
    }
done:
    for (Py_ssize_t i = 0; i < npacked; i++)
        packed_done(&packed[i]);
    PyMem_Free(packed);
    PyMem_Free(taken);
    Py_DECREF(seq);
    return result;
}

typedef struct {
    Extent *e;
    uint32_t local, gen;
    uint64_t index, before;
} Releasing;

static int cmp_index(const void *a, const void *b)
{
    uint64_t x = ((const Releasing *)a)->index, y = ((const Releasing *)b)->index;
    return x < y ? -1 : x > y;
}

static PyObject *Core_release_many(Core *c, PyObject *handles)
{
    RETURN_IF_CLOSED(c);
    PyObject *seq = PySequence_Fast(handles, "release_many() takes an iterable of handles");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = NULL;
    Releasing *r = n ? PyMem_Calloc((size_t)n, sizeof(Releasing)) : NULL;
    if (n && !r) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        r[i].e = slot_of_handle(c, items[i], &r[i].gen, &r[i].local);
        if (!r[i].e)
            goto done;
        r[i].index = r[i].e->first + r[i].local;
    }
    if (n > 1) {
        Releasing *sorted = PyMem_Malloc((size_t)n * sizeof(Releasing));
        if (!sorted) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(sorted, r, (size_t)n * sizeof(Releasing));
        qsort(sorted, (size_t)n, sizeof(Releasing), cmp_index);
        for (Py_ssize_t i = 1; i < n; i++)
            if (sorted[i].index == sorted[i - 1].index) {
                uint64_t dup = ((uint64_t)sorted[i].gen << 32) | sorted[i].index;
                PyMem_Free(sorted);
                PyObject *hd = PyLong_FromUnsignedLongLong(dup);
                if (hd)
                    RAISE(c, E_DUPLICATE, "N)", hd);
                goto done;
            }
        PyMem_Free(sorted);
    }
    if (!n) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (core_lock(c) < 0)
        goto done;
    /* All or nothing: claim every slot, and if one is not live, put the claimed back. */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t *m = meta_of(r[i].e, r[i].local);
        r[i].before = LOAD_ACQ((uint64_t *)m);
        if (!claim_release(m, r[i].gen, FREE << STATE_SHIFT, NULL)) {
            for (Py_ssize_t j = i - 1; j >= 0; j--)
                STORE_REL((uint64_t *)meta_of(r[j].e, r[j].local), r[j].before);
            core_unlock(c);
            raise_not_live(c, items[i], m, r[i].gen);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        push_slot(r[i].e, r[i].local);
        FAULT(F_BATCH_RELEASING);
    }
    count_deallocations(c, (uint64_t)n);
    c->hdr[HDR_FREE_HINT] = 0;
    core_unlock(c);
    tokens_post(c, n);
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(r);
    Py_DECREF(seq);
    return result;
}

/* ---- ThreadLocalPool magazines ---- */
static int magazine_reserve(Core *c, Py_ssize_t need)
{
    if (need <= c->mag_cap)
        return 0;
    Py_ssize_t cap = c->mag_cap ? c->mag_cap : 16;
    while (cap < need)
        cap *= 2;
    uint32_t *mag = PyMem_Realloc(c->mag, (size_t)cap * sizeof(uint32_t));
    if (!mag) {
        PyErr_NoMemory();
        return -1;
    }
    c->mag = mag;
    c->mag_cap = cap;
    return 0;
}

/* Fill the magazine with up to `batch` slots, CACHED by this process. -1 exception, -2 the pool is full. */
static int refill(Core *c)
{
    if (magazine_reserve(c, c->mag_len + c->batch) < 0)
        return -1;
    Taken *t = PyMem_Malloc(c->batch * sizeof(Taken));
    if (!t) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t n = take_many(c, c->batch, 1, CACHED, t);
    if (n < 0) {
        PyMem_Free(t);
        return (int)n;
    }
    /* Another thread may have refilled while we waited for the lock: room again, or give them back. */
    if (magazine_reserve(c, c->mag_len + n) < 0) {
        if (core_lock(c) == 0) {
            unwind_locked(c, t, n);
            core_unlock(c);
            tokens_post(c, n);
        }
        PyMem_Free(t);
        return -1;
    }
    uint64_t others = 0;
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (i != c->entry)
            others += LOAD(&client_words(c, i)[CLIENT_ALLOCATIONS]) - LOAD(&client_words(c, i)[CLIENT_DEALLOCATIONS]);
    c->others_in_use = (int64_t)others;
    /* Lowest index on top: pop() takes it first, as a fresh pool does. */
    for (Py_ssize_t i = n - 1; i >= 0; i--)
        c->mag[c->mag_len++] = (uint32_t)(t[i].e->first + t[i].local);
    PyMem_Free(t);
    return 0;
}

/* Give `count` slots from the bottom of the magazine back to the free lists. */
static int drain(Core *c, Py_ssize_t count)
{
    if (count <= 0)
        return 0;
    if (core_lock(c) < 0)
        return -1;
    if (count > c->mag_len)
        count = c->mag_len; /* other threads allocated from it while we waited for the lock */
    Py_ssize_t given = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t local;
        Extent *e = locate(c, c->mag[i], &local);
        if (!e)
            continue;
        uint32_t *m = meta_of(e, local);
        uint32_t g = m[META_GEN];
        if (m[META_WORD] != ((CACHED << STATE_SHIFT) | c->owner))
            continue; /* repaired away by a recovery that judged us dead: not ours now */
        STORE((uint64_t *)m, pair(g | UNREADABLE, FREE << STATE_SHIFT));
        push_slot(e, local);
        given++;
        FAULT(F_BATCH_RELEASING);
    }
    core_unlock(c);
    memmove(c->mag, c->mag + count, (size_t)(c->mag_len - count) * sizeof(uint32_t));
    c->mag_len -= count;
    tokens_post(c, given);
    return 0;
}

static PyObject *magazine_allocate(Core *c, const Packed *p)
{
    uint32_t index = c->mag[--c->mag_len];
    uint32_t local;
    Extent *e = locate(c, index, &local);
    if (!e)
        return raise_damaged(c, "a magazine slot is outside the pool");
    uint64_t *mine = c->my_entry;
    mine[CLIENT_ALLOCATIONS]++;
    int64_t used = (int64_t)(LOAD(&c->hdr[HDR_IN_USE]) + (mine[CLIENT_ALLOCATIONS] - mine[CLIENT_DEALLOCATIONS])
                             + (uint64_t)c->others_in_use);
    if (used > (int64_t)LOAD(&c->hdr[HDR_PEAK]))
        STORE(&c->hdr[HDR_PEAK], (uint64_t)used); /* a high-water mark: a lost race costs one slot of precision */
    return write_and_publish(c, e, local, p);
}

static PyObject *magazine_release(Core *c, PyObject *h, Extent *e, uint32_t local, uint32_t gen)
{
    uint32_t *m = meta_of(e, local);
    int busy = 0;
    if (magazine_reserve(c, c->mag_len + 1) < 0)
        return NULL;
    int claimed = claim_release(m, gen, (CACHED << STATE_SHIFT) | c->owner, &busy);
    if (!claimed && busy) {
        /* A set() holds the slot: wait for it under the lock (which also repairs
         * after a setter that died), then claim again. */
        if (core_lock(c) < 0)
            return NULL;
        claimed = claim_release(m, gen, (CACHED << STATE_SHIFT) | c->owner, NULL);
        core_unlock(c);
    }
    if (!claimed)
        return raise_not_live(c, h, m, gen);
    FAULT(F_MAGAZINE_RELEASE);
    if (busy && magazine_reserve(c, c->mag_len + 1) < 0)
        return NULL; /* out of memory after a wait: the slot stays cached by us until recover() */
    c->mag[c->mag_len++] = (uint32_t)(e->first + local);
    c->my_entry[CLIENT_DEALLOCATIONS]++;
    if (c->mag_len > 2 * (Py_ssize_t)c->batch && drain(c, c->mag_len - c->batch) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- recovery (lock held) ---- */
enum { T_CACHED, T_HALF, T_TORN, T_KEPT, T_RECLAIMED, T_CORRUPT, T_IN_USE, T_COUNT };
static const char *tally_names[T_COUNT] = {"cached_returned", "half_written_freed", "torn_values", "orphans_kept",
                                           "orphans_reclaimed", "corrupt_slots", "in_use"};

/* What recovery makes of one slot's (generation, state word) pair `cur`: the pair it
 * should hold (`*want`), counted in `found`. */
enum { SLOT_KEEP, SLOT_FREE, SLOT_TORN_NOW };
static int judge_slot(Core *c, uint32_t *m, uint64_t cur, int reclaim, signed char *alive, long *found, uint64_t *want)
{
    uint32_t g = (uint32_t)cur, word = (uint32_t)(cur >> 32);
    uint32_t st = state_of(word), owner = owner_of(word), seq = LOAD(&m[META_SEQ]);
    int verdict = SLOT_KEEP, bump = 1;
    *want = cur;
    if ((g & GENERATION_MASK) == 0 || st > SETTING) {
        found[T_CORRUPT]++;
        verdict = SLOT_FREE;
        g = 0;
    } else if (st == FREE) {
        verdict = SLOT_FREE;
        bump = 0;
    } else if (st == WRITING) {
        if (owner_alive(c, owner, alive))
            found[T_IN_USE]++;
        else {
            found[T_HALF]++;
            verdict = SLOT_FREE;
        }
    } else if (st == CACHED) {
        if (!owner_alive(c, owner, alive)) {
            found[T_CACHED]++;
            verdict = SLOT_FREE;
        }
    } else if (st == ALLOCATED && (g & UNREADABLE)) {
        found[T_CORRUPT]++;
        verdict = SLOT_FREE;
    } else {
        /* Allocated, torn, or being set() when its setter died (then torn if the sequence is odd). */
        if (st == SETTING || (st == ALLOCATED && (seq & 1))) {
            st = (seq & 1) ? TORN : ALLOCATED;
            g = st == TORN ? (g | UNREADABLE) : (g & GENERATION_MASK);
            if (st == TORN) {
                found[T_TORN]++;
                verdict = SLOT_TORN_NOW;
            }
        } else if (st == TORN && !(g & UNREADABLE)) {
            st = ALLOCATED; /* set() repaired it, then died before saying so */
        }
        if (LOAD(&m[META_LEN]) > c->slot_size) {
            found[T_CORRUPT]++;
            verdict = SLOT_FREE;
        } else if (owner_alive(c, owner, alive)) {
            found[T_IN_USE]++;
        } else if (reclaim) {
            found[T_RECLAIMED]++;
            verdict = SLOT_FREE;
        } else {
            found[T_KEPT]++;
            found[T_IN_USE]++;
        }
        if (verdict != SLOT_FREE)
            *want = pair(g, (st << STATE_SHIFT) | owner);
    }
    if (verdict == SLOT_FREE) {
        uint32_t ng = bump ? next_generation(g) : (g & GENERATION_MASK ? g & GENERATION_MASK : 1);
        *want = pair(ng | UNREADABLE, FREE << STATE_SHIFT);
    }
    return verdict;
}

/* Rebuild every extent from slot states and re-derive the counters and the
 * semaphore. Nothing a dead process wrote half-way is trusted.
 *   being-written by a dead owner   -> freed (its handle never left that process)
 *   cached by a dead owner          -> freed (its magazine died with it)
 *   being set() when its setter died -> torn if the sequence is odd, else allocated
 *   allocated by a dead owner       -> kept, or freed when `reclaim`
 *   metadata that makes no sense    -> freed, counted corrupt */
static int rebuild_locked(Core *c, int reclaim, PyObject *tally)
{
    long counts[T_COUNT] = {0};
    signed char alive[MAX_CLIENTS];
    memset(alive, -1, sizeof alive);
    if (map_new_extents(c) < 0)
        PyErr_Clear(); /* rebuild what we can reach; the rest says so when used */
    /* Fold the counters of entries whose process is gone into the header. */
    uint64_t live_delta = 0;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint64_t *cw = client_words(c, i);
        if (!cw[CLIENT_ALLOCATIONS] && !cw[CLIENT_DEALLOCATIONS])
            continue;
        if (entry_alive(c, i)) {
            live_delta += cw[CLIENT_ALLOCATIONS] - cw[CLIENT_DEALLOCATIONS];
            continue;
        }
        c->hdr[HDR_ALLOCATIONS] += cw[CLIENT_ALLOCATIONS];
        c->hdr[HDR_DEALLOCATIONS] += cw[CLIENT_DEALLOCATIONS];
        cw[CLIENT_ALLOCATIONS] = cw[CLIENT_DEALLOCATIONS] = 0;
    }
    uint64_t free_total = 0;
    for (int k = 0; k < c->n_ext; k++) {
        Extent *e = &c->ext[k];
        uint32_t *w = ext_words(e);
        w[EXT_CAPACITY] = e->cap;
        w[EXT_MAGIC] = EXTENT_MAGIC;
        uint32_t fresh = w[EXT_FRESH] <= e->cap ? w[EXT_FRESH] : e->cap;
        /* Slots past the fresh mark were never handed out: a process that died
         * before moving the mark may have marked the one at it (only that one:
         * a fresh slot is marked, then the mark moves). Clear it. Touching no
         * other slot past the mark keeps a repair's cost to the slots in use. */
        if (fresh < e->cap)
            *(uint64_t *)meta_of(e, fresh) = 0;
        w[EXT_HEAD] = 0;
        for (uint32_t i = fresh; i-- > 0;) {
            uint32_t *m = meta_of(e, i);
            uint64_t cur = LOAD_ACQ((uint64_t *)m), want;
            long found[T_COUNT];
            int verdict;
            /* A live process may release an allocated slot into its magazine meanwhile
             * (lock-free): the new pair goes in by compare-and-swap, judged again if it moved. */
            do {
                memset(found, 0, sizeof found);
                verdict = judge_slot(c, m, cur, reclaim, alive, found, &want);
            } while (want != cur && !__atomic_compare_exchange_n((uint64_t *)m, &cur, want, 0, __ATOMIC_ACQ_REL,
                                                                 __ATOMIC_ACQUIRE));
            for (int t = 0; t < T_COUNT; t++)
                counts[t] += found[t];
            if (verdict == SLOT_FREE) {
                push_slot(e, i); /* its sequence word becomes the link */
                free_total++;
            } else if (verdict == SLOT_TORN_NOW) {
                m[META_SEQ]++; /* even again: a reader sees the torn mark, not a write in progress */
            }
            if (i == fresh / 2)
                FAULT(F_RECOVER_REBUILDING);
        }
        w[EXT_FRESH] = fresh;
        free_total += e->cap - fresh;
    }
    c->hdr[HDR_FREE_HINT] = 0;
    c->hdr[HDR_IN_USE] = (uint64_t)counts[T_IN_USE] - live_delta;
    uint64_t cap = 0;
    for (int k = 0; k < c->n_ext; k++)
        cap += c->ext[k].cap;
    c->hdr[HDR_CAPACITY] = cap;
    /* Re-derive the free-slot count from what is free: move it by the difference
     * (allocators taking tokens meanwhile make it approximate; it heals). */
    int tokens = 0;
    if (sem_getvalue(c->sem, &tokens) == 0) {
        if ((uint64_t)tokens > free_total)
            tokens_take(c, (Py_ssize_t)((uint64_t)tokens - free_total));
        else
            tokens_post(c, (Py_ssize_t)(free_total - (uint64_t)tokens));
    }
    if (tally) {
        for (int t = 0; t < T_COUNT; t++) {
            PyObject *v = PyLong_FromLong(counts[t]);
            if (!v || PyDict_SetItemString(tally, tally_names[t], v) < 0) {
                Py_XDECREF(v);
                return -1;
            }
            Py_DECREF(v);
        }
    }
    return 0;
}

/* recover(reclaim, wait) -> (tally dict, lock_taken_over, dead pids); LockTimeout if the lock stays busy for `wait` s. */
static PyObject *Core_recover(Core *c, PyObject *args)
{
    int reclaim;
    double wait;
    if (!PyArg_ParseTuple(args, "pd", &reclaim, &wait))
        return NULL;
    RETURN_IF_CLOSED(c);
    PyObject *dead = PyList_New(0);
    if (!dead)
        return NULL;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint32_t pid = client_pid(c, i);
        if (pid && !entry_alive(c, i)) {
            PyObject *p = PyLong_FromUnsignedLong(pid);
            if (!p || PyList_Append(dead, p) < 0) {
                Py_XDECREF(p);
                Py_DECREF(dead);
                return NULL;
            }
            Py_DECREF(p);
        }
    }
    if (map_new_extents(c) < 0) {
        Py_DECREF(dead);
        return NULL;
    }
    LockInfo info;
    if (core_lock_for(c, wait, &info) < 0) {
        Py_DECREF(dead);
        return NULL;
    }
    PyObject *tally = PyDict_New();
    if (!tally || rebuild_locked(c, reclaim, tally) < 0) {
        core_unlock(c);
        Py_XDECREF(tally);
        Py_DECREF(dead);
        return NULL;
    }
    long repaired = 0;
    static const char *repairs[] = {"cached_returned", "half_written_freed", "torn_values", "orphans_reclaimed", "corrupt_slots"};
    for (size_t i = 0; i < sizeof repairs / sizeof *repairs; i++)
        repaired += PyLong_AsLong(PyDict_GetItemString(tally, repairs[i]));
    if (repaired && !info.dead_holder)
        c->hdr[HDR_RECOVERIES]++;
    /* Entries of dead processes: their slots are judged now, the entries can go. */
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (client_pid(c, i) && !entry_alive(c, i))
            STORE((uint32_t *)client_words(c, i), 0u);
    core_unlock(c);
    return Py_BuildValue("(NON)", tally, info.dead_holder ? Py_True : Py_False, dead);
}

/* ---- registration: claim a client entry by locking its byte ----
 * Taking the byte's OFD lock is the claim (atomic, kernel-kept), so attach
 * never waits on the pool mutex: a stopped holder cannot keep anyone from
 * attaching. An entry's counters are never reset here: statistics sum every
 * entry, so what a previous holder counted stays counted. */
static int register_client(Core *c, uint64_t start_ticks)
{
    if (c->live_fd > 0)
        close(c->live_fd);
    c->live_fd = open(c->segment_path, O_RDWR | O_CLOEXEC);
    if (c->live_fd < 0) {
        raise_os(c, "cannot open the pool segment for the liveness lock");
        return -1;
    }
    c->pid = getpid();
    for (int i = 0; i < MAX_CLIENTS; i++) {
        if (entry_lock(c->live_fd, i, F_WRLCK, F_OFD_SETLK) == 0) {
            uint64_t *cw = client_words(c, i);
            uint32_t *halves = (uint32_t *)cw;
            uint32_t inc = (LOAD(&halves[1]) + 1) & ((1u << INCARNATION_BITS) - 1);
            STORE(&halves[1], inc);
            STORE(&cw[CLIENT_START], start_ticks);
            STORE_REL(&halves[0], (uint32_t)c->pid);
            c->entry = i;
            c->owner = ((uint32_t)i << INCARNATION_BITS) | inc;
            c->my_entry = cw;
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES) {
            raise_os(c, "cannot take a liveness lock");
            return -1;
        }
    }
    raise_code(c, E_OS, Py_BuildValue("(s)", "the pool's client table is full (256 live processes attached); close some"));
    return -1;
}

static int unregister_client(Core *c)
{
    if (c->entry < 0)
        return 0;
    int rc = 0;
    if (c->mag_len && (rc = drain(c, c->mag_len)) < 0)
        PyErr_Clear(); /* lock stuck: the slots stay cached by us, and recovery returns them once we are gone */
    STORE((uint32_t *)c->my_entry, 0u);
    entry_lock(c->live_fd, c->entry, F_UNLCK, F_OFD_SETLK);
    c->entry = -1;
    return rc;
}

/* ---- construction ---- */
static int header_sane(Core *c)
{
    uint64_t *h = c->hdr;
    if (c->main_size < HEADER_SIZE || h[HDR_MAGIC] != MAGIC || h[HDR_VERSION] != LAYOUT_VERSION)
        return 0;
    uint64_t slot = h[HDR_SLOT_SIZE], stride = h[HDR_STRIDE], align = h[HDR_ALIGNMENT], n = h[HDR_EXTENTS];
    uint64_t *t = (uint64_t *)(c->main + EXTENT_TABLE_OFFSET);
    if (align < 8 || align > 4096 || (align & (align - 1)) || slot == 0 || slot > 0xFFFFFFFFull || stride < slot
        || stride > 0xFFFFFFFFull || stride % align || n < 1 || n > MAX_EXTENTS || t[0] != 0 || t[1] == 0 || t[1] > 0xFFFFFFFFull)
        return 0;
    return HEADER_SIZE + extent_bytes((uint32_t)t[1], (uint32_t)stride, (uint32_t)align) <= c->main_size;
}

static int Core_init(Core *c, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buffer", "sem_name", "segment_path", "extent_prefix", "main_uid", "kind", "lock_timeout",
                            "batch", "errors", "pack", "unpack", "grow", "start_ticks", "creating", "trusted", "reclaim", NULL};
    PyObject *buffer, *errors, *pack, *unpack, *grow, *trusted;
    const char *sem_name, *segment_path, *extent_prefix;
    unsigned int main_uid, batch;
    int kind, creating, reclaim = 0;
    double lock_timeout;
    unsigned long long start_ticks;
    if (c->have_view) {
        PyErr_SetString(PyExc_RuntimeError, "a Core is initialized once");
        return -1;
    }
    c->live_fd = -1;
    c->entry = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsssIidIOOOOKpO|p", names, &buffer, &sem_name, &segment_path, &extent_prefix,
                                     &main_uid, &kind, &lock_timeout, &batch, &errors, &pack, &unpack, &grow, &start_ticks,
                                     &creating, &trusted, &reclaim))
        return -1;
    PyObject *uids = PySequence_Fast(trusted, "trusted: a sequence of uids");
    if (!uids)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(uids) && c->n_trusted < 64; i++) {
        unsigned long uid = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(uids, i));
        if (PyErr_Occurred()) {
            Py_DECREF(uids);
            return -1;
        }
        c->trusted[c->n_trusted++] = (uid_t)uid;
    }
    Py_DECREF(uids);
    c->errors = Py_NewRef(errors);
    c->pack = Py_NewRef(pack);
    c->unpack = Py_NewRef(unpack);
    c->grow = Py_NewRef(grow);
    if (PyObject_GetBuffer(buffer, &c->view, PyBUF_WRITABLE) < 0)
        return -1;
    c->have_view = 1;
    c->main = c->view.buf;
    c->main_size = (size_t)c->view.len;
    c->hdr = (uint64_t *)c->main;
    c->mutex = (pthread_mutex_t *)(c->main + MUTEX_OFFSET);
    c->main_uid = main_uid;
    c->kind = kind;
    c->reclaim = reclaim;
    c->lock_timeout = lock_timeout;
    c->batch = batch ? batch : 1;
    c->spin_limit = kind == KIND_THREADSAFE ? 64 : 0;
    c->spins = 8;
    c->segment_path = strdup(segment_path);
    c->extent_prefix = strdup(extent_prefix);
    if (!c->segment_path || !c->extent_prefix) {
        PyErr_NoMemory();
        return -1;
    }
    if (((uintptr_t)c->main & 4095) || !header_sane(c)) {
        raise_damaged(c, "the pool header does not match its segment");
        return -1;
    }
    c->slot_size = (uint32_t)c->hdr[HDR_SLOT_SIZE];
    c->stride = (uint32_t)c->hdr[HDR_STRIDE];
    c->alignment = (uint32_t)c->hdr[HDR_ALIGNMENT];
    uint64_t *t = (uint64_t *)(c->main + EXTENT_TABLE_OFFSET);
    Extent *e = &c->ext[0];
    e->base = c->main + HEADER_SIZE;
    e->cap = (uint32_t)t[1];
    e->size = c->main_size - HEADER_SIZE;
    e->first = 0;
    e->data = extent_data_offset(e->cap, c->alignment);
    e->own_mapping = 0;
    c->n_ext = 1;
    if (creating) {
        uint32_t *w = ext_words(e);
        w[EXT_CAPACITY] = e->cap;
        w[EXT_MAGIC] = EXTENT_MAGIC;
    }
    if (!extent_sane(c, e)) {
        raise_damaged(c, "extent 0's header is damaged");
        return -1;
    }
    c->sem = sem_open(sem_name, 0);
    if (c->sem == SEM_FAILED) {
        c->sem = NULL;
        raise_os(c, "cannot open the pool's free-slot semaphore");
        return -1;
    }
    if (map_new_extents(c) < 0)
        return -1;
    if (register_client(c, start_ticks) < 0)
        return -1;
    c->closed = 0;
    return 0;
}

/* Called by the creator before the ready flag: a robust, process-shared mutex. */
static PyObject *init_mutex(PyObject *mod, PyObject *buffer)
{
    Py_buffer v;
    if (PyObject_GetBuffer(buffer, &v, PyBUF_WRITABLE) < 0)
        return NULL;
    if ((size_t)v.len < MUTEX_OFFSET + sizeof(pthread_mutex_t)) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "buffer too small for the pool header");
        return NULL;
    }
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (!rc)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc)
        rc = pthread_mutex_init((pthread_mutex_t *)((uint8_t *)v.buf + MUTEX_OFFSET), &a);
    pthread_mutexattr_destroy(&a);
    PyBuffer_Release(&v);
    if (rc) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static void release_resources(Core *c)
{
    for (int k = 1; k < c->n_ext; k++)
        if (c->ext[k].own_mapping && c->ext[k].base)
            munmap(c->ext[k].base, c->ext[k].size);
    c->n_ext = 0;
    if (c->sem) {
        sem_close(c->sem);
        c->sem = NULL;
    }
    if (c->live_fd > 0) {
        close(c->live_fd);
        c->live_fd = -1;
    }
    if (c->have_view) {
        PyBuffer_Release(&c->view);
        c->have_view = 0;
    }
    c->closed = 1;
}

static PyObject *Core_close(Core *c, PyObject *unused)
{
    if (c->closed)
        Py_RETURN_NONE;
    if (c->waiting)
        return raise_code(c, E_OS, Py_BuildValue("(s)", "another thread of this process is waiting on this pool; "
                                                         "close it once that call has returned"));
    int rc = c->have_view ? unregister_client(c) : 0;
    release_resources(c);
    if (rc < 0)
        PyErr_Clear();
    Py_RETURN_NONE;
}

/* After fork, in the child: the parent's entry, magazine and liveness lock stay the parent's. */
static PyObject *Core_after_fork(Core *c, PyObject *arg)
{
    if (c->closed)
        Py_RETURN_NONE;
    unsigned long long ticks = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    c->mag_len = 0;
    c->waiting = 0; /* the threads that were waiting did not come along */
    c->entry = -1;
    if (register_client(c, ticks) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void Core_dealloc(Core *c)
{
    /* Also reached when __init__ failed: keep the exception it raised. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (!c->closed && c->have_view && c->entry >= 0) {
        unregister_client(c);
        PyErr_Clear();
    }
    PyErr_Restore(type, value, tb);
    release_resources(c);
    Py_XDECREF(c->errors);
    Py_XDECREF(c->pack);
    Py_XDECREF(c->unpack);
    Py_XDECREF(c->grow);
    PyMem_Free(c->mag);
    free(c->segment_path);
    free(c->extent_prefix);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* ---- the rest of the surface ---- */

/* commit_extent(number, capacity): record extent `number`, created and sized by Python, in the header. */
static PyObject *Core_commit_extent(Core *c, PyObject *args)
{
    int number;
    unsigned int cap;
    if (!PyArg_ParseTuple(args, "iI", &number, &cap))
        return NULL;
    RETURN_IF_CLOSED(c);
    if (core_lock(c) < 0)
        return NULL;
    if (c->hdr[HDR_EXTENTS] != (uint64_t)number || number < 1 || number >= MAX_EXTENTS) {
        core_unlock(c);
        Py_RETURN_FALSE; /* someone else grew meanwhile */
    }
    uint64_t total = c->hdr[HDR_CAPACITY];
    if (total + cap > 0x100000000ull) {
        core_unlock(c);
        return raise_damaged(c, "growth would pass 2**32 slots");
    }
    uint64_t *entry = (uint64_t *)(c->main + EXTENT_TABLE_OFFSET) + 2 * number;
    entry[0] = total;
    entry[1] = cap;
    STORE_REL(&c->hdr[HDR_EXTENTS], (uint64_t)number + 1);
    c->hdr[HDR_CAPACITY] = total + cap;
    c->hdr[HDR_GROWTHS]++;
    c->hdr[HDR_FREE_HINT] = (uint64_t)number;
    core_unlock(c);
    tokens_post(c, cap);
    if (map_new_extents(c) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* Fill every slot of extent 0 with one packed value and make them all free (creator, before ready). */
static PyObject *Core_pre_initialize(Core *c, PyObject *value)
{
    RETURN_IF_CLOSED(c);
    Packed p;
    if (pack_checked(c, value, &p) < 0)
        return NULL;
    Extent *e = &c->ext[0];
    uint32_t n = (uint32_t)packed_size(&p);
    for (uint32_t i = 0; i < e->cap; i++) {
        copy_packed(slot_of(c, e, i), &p);
        uint32_t *m = meta_of(e, i);
        m[META_GEN] = 1 | UNREADABLE;
        m[META_WORD] = FREE << STATE_SHIFT;
        m[META_LEN] = n;
        m[META_SEQ] = i + 2 <= e->cap ? i + 2 : 0;
    }
    uint32_t *w = ext_words(e);
    w[EXT_HEAD] = e->cap ? 1 : 0;
    w[EXT_FRESH] = e->cap;
    packed_done(&p);
    Py_RETURN_NONE;
}

/* take_slot() -> (pool-wide index, previous packed bytes or None): a slot being written, for acquire(). */
static PyObject *Core_take_slot(Core *c, PyObject *unused)
{
    RETURN_IF_CLOSED(c);
    Extent *e;
    uint32_t local;
    if (take_for_allocate(c, -1, &e, &local, WRITING) < 0)
        return NULL;
    uint32_t n = meta_of(e, local)[META_LEN];
    PyObject *previous = n && n <= c->slot_size ? PyBytes_FromStringAndSize((const char *)slot_of(c, e, local), n)
                                                : Py_NewRef(Py_None);
    if (!previous)
        return NULL;
    return Py_BuildValue("(KN)", (unsigned long long)(e->first + local), previous);
}

static Extent *taken_slot(Core *c, PyObject *index_obj, uint32_t *local)
{
    unsigned long long index = PyLong_AsUnsignedLongLong(index_obj);
    if (PyErr_Occurred())
        return NULL;
    Extent *e = locate(c, index, local);
    uint32_t *m = e ? meta_of(e, *local) : NULL;
    if (!e || m[META_WORD] != ((WRITING << STATE_SHIFT) | c->owner)) {
        PyErr_SetString(PyExc_ValueError, "not a slot this process is writing");
        return NULL;
    }
    return e;
}

/* publish_slot(index, value) -> handle: finish acquire(). */
static PyObject *Core_publish_slot(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    RETURN_IF_CLOSED(c);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "publish_slot(index, value)");
        return NULL;
    }
    uint32_t local;
    Extent *e = taken_slot(c, args[0], &local);
    if (!e)
        return NULL;
    Packed p;
    if (pack_checked(c, args[1], &p) < 0)
        return NULL;
    PyObject *h = write_and_publish(c, e, local, &p);
    packed_done(&p);
    return h;
}

/* unwind_slot(index): give back a slot acquire() took but could not fill. */
static PyObject *Core_unwind_slot(Core *c, PyObject *index_obj)
{
    RETURN_IF_CLOSED(c);
    uint32_t local;
    Extent *e = taken_slot(c, index_obj, &local);
    if (!e)
        return NULL;
    if (core_lock(c) < 0)
        return NULL;
    Taken t = {e, local};
    unwind_locked(c, &t, 1);
    c->hdr[HDR_ALLOCATIONS]--; /* never handed out: as if it had not been taken */
    c->hdr[HDR_IN_USE]--;
    core_unlock(c);
    tokens_post(c, 1);
    Py_RETURN_NONE;
}

/* counters() -> dict of the statistics, this process's and every live entry's lock-free counts included. */
static PyObject *Core_counters(Core *c, PyObject *unused)
{
    RETURN_IF_CLOSED(c);
    if (map_new_extents(c) < 0)
        PyErr_Clear();
    uint64_t *h = c->hdr;
    uint64_t allocs = LOAD(&h[HDR_ALLOCATIONS]), deallocs = LOAD(&h[HDR_DEALLOCATIONS]);
    uint64_t sum = LOAD(&h[HDR_IN_USE]);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint64_t *cw = client_words(c, i);
        uint64_t a = LOAD(&cw[CLIENT_ALLOCATIONS]), d = LOAD(&cw[CLIENT_DEALLOCATIONS]);
        allocs += a;
        deallocs += d;
        sum += a - d;
    }
    int64_t in_use = (int64_t)sum;
    if (in_use < 0)
        in_use = 0;
    uint64_t peak = LOAD(&h[HDR_PEAK]);
    if ((uint64_t)in_use > peak)
        peak = (uint64_t)in_use;
    return Py_BuildValue("{s:K,s:L,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:n}", "capacity",
                         (unsigned long long)LOAD(&h[HDR_CAPACITY]), "current_usage", (long long)in_use, "peak_usage",
                         (unsigned long long)peak, "total_allocations", (unsigned long long)allocs, "total_deallocations",
                         (unsigned long long)deallocs, "allocation_failures", (unsigned long long)LOAD(&h[HDR_FAILURES]),
                         "growth_count", (unsigned long long)LOAD(&h[HDR_GROWTHS]), "lock_acquisitions",
                         (unsigned long long)LOAD(&h[HDR_LOCK_ACQUISITIONS]), "lock_wait_ns",
                         (unsigned long long)LOAD(&h[HDR_LOCK_WAIT_NS]), "lock_timeouts",
                         (unsigned long long)LOAD(&h[HDR_LOCK_TIMEOUTS]), "recoveries",
                         (unsigned long long)LOAD(&h[HDR_RECOVERIES]), "cached", c->mag_len);
}

static PyObject *Core_len(Core *c, PyObject *unused)
{
    RETURN_IF_CLOSED(c);
    uint64_t sum = LOAD(&c->hdr[HDR_IN_USE]);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint64_t *cw = client_words(c, i);
        sum += LOAD(&cw[CLIENT_ALLOCATIONS]) - LOAD(&cw[CLIENT_DEALLOCATIONS]);
    }
    int64_t in_use = (int64_t)sum;
    return PyLong_FromLongLong(in_use > 0 ? in_use : 0);
}

/* reset_statistics(): every event counter to zero, as the crate's collector; usage stays true, peak restarts at it. */
static PyObject *Core_reset_statistics(Core *c, PyObject *unused)
{
    RETURN_IF_CLOSED(c);
    if (core_lock(c) < 0)
        return NULL;
    uint64_t *h = c->hdr;
    uint64_t live_a = 0, live_d = 0;
    uint64_t sum = h[HDR_IN_USE];
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint64_t *cw = client_words(c, i);
        live_a += LOAD(&cw[CLIENT_ALLOCATIONS]);
        live_d += LOAD(&cw[CLIENT_DEALLOCATIONS]);
    }
    int64_t in_use = (int64_t)(sum + (live_a - live_d));
    /* Entries' counts are their owners' to write; offset the header by them instead. */
    h[HDR_ALLOCATIONS] = (uint64_t)0 - live_a;
    h[HDR_DEALLOCATIONS] = (uint64_t)0 - live_d;
    h[HDR_FAILURES] = h[HDR_GROWTHS] = h[HDR_LOCK_WAIT_NS] = h[HDR_LOCK_TIMEOUTS] = h[HDR_RECOVERIES] = 0;
    h[HDR_LOCK_ACQUISITIONS] = 0;
    h[HDR_PEAK] = in_use > 0 ? (uint64_t)in_use : 0;
    core_unlock(c);
    Py_RETURN_NONE;
}

/* clients() -> [(entry, pid, start_ticks, alive)] of every entry with a pid. */
static PyObject *Core_clients(Core *c, PyObject *unused)
{
    RETURN_IF_CLOSED(c);
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint32_t pid = client_pid(c, i);
        if (!pid)
            continue;
        PyObject *row = Py_BuildValue("(iIKO)", i, pid, (unsigned long long)client_words(c, i)[CLIENT_START],
                                      entry_alive(c, i) ? Py_True : Py_False);
        if (!row || PyList_Append(out, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(row);
    }
    return out;
}

/* slot_range(handle) -> (extent number, offset in its segment): where a live slot's bytes are, for buffer(). */
static PyObject *Core_slot_range(Core *c, PyObject *h)
{
    uint32_t gen, local;
    Extent *e = open_slot_of(c, h, &gen, &local);
    if (!e)
        return NULL;
    uint32_t *m = meta_of(e, local);
    if (LOAD_ACQ(&m[META_GEN]) != gen)
        return raise_not_live(c, h, m, gen);
    int k = (int)(e - c->ext);
    size_t off = (size_t)(slot_of(c, e, local) - (k == 0 ? c->main : e->base));
    return Py_BuildValue("(in)", k, (Py_ssize_t)off);
}

/* slot_states() -> list per extent of (fresh, head, [(gen, state, owner entry, len, seq)]): for tests and `fastalloc-shm stats`. */
static PyObject *Core_slot_states(Core *c, PyObject *unused)
{
    RETURN_IF_CLOSED(c);
    if (map_new_extents(c) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (int k = 0; k < c->n_ext; k++) {
        Extent *e = &c->ext[k];
        uint32_t *w = ext_words(e);
        uint32_t fresh = LOAD(&w[EXT_FRESH]);
        if (fresh > e->cap)
            fresh = e->cap;
        PyObject *slots = PyList_New(fresh);
        if (!slots) {
            Py_DECREF(out);
            return NULL;
        }
        for (uint32_t i = 0; i < fresh; i++) {
            uint32_t *m = meta_of(e, i);
            uint32_t word = LOAD(&m[META_WORD]);
            PyObject *row = Py_BuildValue("(IIIII)", LOAD(&m[META_GEN]), state_of(word), owner_of(word) >> INCARNATION_BITS,
                                          LOAD(&m[META_LEN]), LOAD(&m[META_SEQ]));
            if (!row) {
                Py_DECREF(slots);
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(slots, i, row);
        }
        /* Walk the free list, bounded by capacity, so a cycle cannot hang a test. */
        PyObject *listed = PyList_New(0);
        uint32_t at = LOAD(&w[EXT_HEAD]);
        for (uint32_t steps = 0; listed && at && at <= fresh && steps <= e->cap; steps++) {
            PyObject *i = PyLong_FromUnsignedLong(at - 1);
            if (!i || PyList_Append(listed, i) < 0) {
                Py_XDECREF(i);
                Py_CLEAR(listed);
                break;
            }
            Py_DECREF(i);
            at = LOAD(&meta_of(e, at - 1)[META_SEQ]);
        }
        PyObject *row = listed ? Py_BuildValue("{s:K,s:I,s:I,s:N,s:N}", "first", (unsigned long long)e->first, "capacity",
                                               e->cap, "fresh", fresh, "slots", slots, "free_list", listed)
                               : NULL;
        if (!row || PyList_Append(out, row) < 0) {
            if (!listed)
                Py_DECREF(slots);
            Py_XDECREF(row);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(row);
    }
    return out;
}

static PyObject *Core_get_entry(Core *c, void *unused) { return PyLong_FromLong(c->entry); }
static PyObject *Core_get_extents(Core *c, void *unused) { return PyLong_FromLong(c->n_ext); }
static PyObject *Core_get_cached(Core *c, void *unused) { return PyLong_FromSsize_t(c->mag_len); }
static PyObject *Core_get_closed(Core *c, void *unused) { return PyBool_FromLong(c->closed); }
static PyObject *Core_get_sem_value(Core *c, void *unused)
{
    int v = 0;
    if (c->closed || !c->sem || sem_getvalue(c->sem, &v) < 0)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(v);
}

static PyMethodDef Core_methods[] = {
    {"allocate", (PyCFunction)(void (*)(void))Core_allocate, METH_FASTCALL | METH_KEYWORDS, "Store a value; its handle."},
    {"get", (PyCFunction)Core_get, METH_O, "The value under a handle."},
    {"set", (PyCFunction)(void (*)(void))Core_set, METH_FASTCALL, "Replace the value under a handle."},
    {"release", (PyCFunction)Core_release, METH_O, "Give a slot back."},
    {"allocate_many", (PyCFunction)Core_allocate_many, METH_O, "Many values, one lock acquisition, all or nothing."},
    {"release_many", (PyCFunction)Core_release_many, METH_O, "Many handles, one lock acquisition, all or nothing."},
    {"recover", (PyCFunction)Core_recover, METH_VARARGS, "Rebuild from slot states."},
    {"commit_extent", (PyCFunction)Core_commit_extent, METH_VARARGS, "Record a new extent."},
    {"pre_initialize", (PyCFunction)Core_pre_initialize, METH_O, "Fill every slot with one value."},
    {"take_slot", (PyCFunction)Core_take_slot, METH_NOARGS, "A slot being written, and its previous bytes."},
    {"publish_slot", (PyCFunction)(void (*)(void))Core_publish_slot, METH_FASTCALL, "Publish a taken slot."},
    {"unwind_slot", (PyCFunction)Core_unwind_slot, METH_O, "Give back a taken slot."},
    {"counters", (PyCFunction)Core_counters, METH_NOARGS, "The statistics counters."},
    {"len", (PyCFunction)Core_len, METH_NOARGS, "Slots in use."},
    {"reset_statistics", (PyCFunction)Core_reset_statistics, METH_NOARGS, "Zero the event counters."},
    {"clients", (PyCFunction)Core_clients, METH_NOARGS, "Attached processes."},
    {"slot_range", (PyCFunction)Core_slot_range, METH_O, "Where a slot's bytes are."},
    {"slot_states", (PyCFunction)Core_slot_states, METH_NOARGS, "Every slot's metadata."},
    {"close", (PyCFunction)Core_close, METH_NOARGS, "Unmap and leave the client table."},
    {"after_fork", (PyCFunction)Core_after_fork, METH_O, "In a forked child: a new client entry."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"entry", (getter)Core_get_entry, NULL, "This process's client entry.", NULL},
    {"extents", (getter)Core_get_extents, NULL, "Extents mapped here.", NULL},
    {"cached", (getter)Core_get_cached, NULL, "Slots in this process's magazine.", NULL},
    {"closed", (getter)Core_get_closed, NULL, "True after close().", NULL},
    {"semaphore_value", (getter)Core_get_sem_value, NULL, "Free-slot tokens now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* A Core is closed until __init__ succeeds: no method touches a mapping it does not have. */
static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Core *c = (Core *)PyType_GenericNew(type, args, kw);
    if (c) {
        c->closed = 1;
        c->live_fd = -1;
        c->entry = -1;
    }
    return (PyObject *)c;
}

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fastalloc_shm._core.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled core of one pool in this process.",
    .tp_new = Core_new,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
};

/* extent_size(capacity, stride, alignment) and main_size(...): the geometry, for Python's segment creation. */
static PyObject *py_extent_size(PyObject *mod, PyObject *args)
{
    unsigned int cap, stride, alignment;
    if (!PyArg_ParseTuple(args, "III", &cap, &stride, &alignment))
        return NULL;
    return PyLong_FromSize_t(extent_bytes(cap, stride, alignment));
}
static PyObject *py_data_offset(PyObject *mod, PyObject *args)
{
    unsigned int cap, alignment;
    if (!PyArg_ParseTuple(args, "II", &cap, &alignment))
        return NULL;
    return PyLong_FromSize_t(extent_data_offset(cap, alignment));
}
static PyObject *py_init_extent(PyObject *mod, PyObject *args)
{
    PyObject *buffer;
    unsigned int cap;
    if (!PyArg_ParseTuple(args, "OI", &buffer, &cap))
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(buffer, &v, PyBUF_WRITABLE) < 0)
        return NULL;
    if ((size_t)v.len < EXT_HEADER_BYTES) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "buffer too small for an extent");
        return NULL;
    }
    uint32_t *w = v.buf;
    w[EXT_CAPACITY] = cap;
    w[EXT_HEAD] = 0;
    w[EXT_FRESH] = 0;
    w[EXT_MAGIC] = EXTENT_MAGIC;
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* lock_byte(fd, byte): an OFD write lock on one byte, held until the file description closes. */
static PyObject *py_lock_byte(PyObject *mod, PyObject *args)
{
    int fd, byte;
    if (!PyArg_ParseTuple(args, "ii", &fd, &byte))
        return NULL;
    if (entry_lock(fd, byte, F_WRLCK, F_OFD_SETLK) == 0)
        Py_RETURN_TRUE;
    if (errno == EAGAIN || errno == EACCES)
        Py_RETURN_FALSE;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* byte_locked(fd, byte): does another open file description hold a lock on it? */
static PyObject *py_byte_locked(PyObject *mod, PyObject *args)
{
    int fd, byte;
    if (!PyArg_ParseTuple(args, "ii", &fd, &byte))
        return NULL;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1, .l_pid = 0};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(fl.l_type != F_UNLCK);
}

static PyObject *py_fault_active(PyObject *mod, PyObject *unused) { return PyBool_FromLong(fault_point != F_NONE); }

/* fault(name): a fault point reached by Python code (grow.created): acts as a core point does. */
static PyObject *py_fault(PyObject *mod, PyObject *name)
{
    const char *text = PyUnicode_AsUTF8(name);
    if (!text)
        return NULL;
    for (int p = 1; p < F_COUNT; p++)
        if (!strcmp(text, fault_names[p])) {
            FAULT(p);
            Py_RETURN_NONE;
        }
    return PyErr_Format(PyExc_ValueError, "%R is not a fault point", name);
}

static PyMethodDef module_methods[] = {
    {"init_mutex", (PyCFunction)init_mutex, METH_O, "Initialize the robust mutex in a new header."},
    {"extent_size", py_extent_size, METH_VARARGS, "Bytes of an extent."},
    {"data_offset", py_data_offset, METH_VARARGS, "Offset of slot 0's bytes in an extent."},
    {"init_extent", py_init_extent, METH_VARARGS, "Write a new extent's header."},
    {"lock_byte", py_lock_byte, METH_VARARGS, "OFD-lock one byte of a file."},
    {"byte_locked", py_byte_locked, METH_VARARGS, "Is a byte OFD-locked by another file description?"},
    {"fault_active", py_fault_active, METH_NOARGS, "True when FASTALLOC_FAULT names a core point."},
    {"fault", py_fault, METH_O, "Reach a fault point from Python code."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_core", "The compiled core of fastalloc-shm.", -1, module_methods};

PyMODINIT_FUNC PyInit__core(void)
{
    if (fault_parse() < 0)
        return NULL;
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0)
        goto fail;
    PyObject *layout = PyDict_New();
    if (!layout || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        goto fail;
    }
#define X_EXPORT(name, value)                                                   \
    {                                                                           \
        PyObject *v = PyLong_FromUnsignedLongLong((unsigned long long)(value)); \
        if (!v || PyDict_SetItemString(layout, #name, v) < 0) {                 \
            Py_XDECREF(v);                                                      \
            goto fail;                                                          \
        }                                                                       \
        Py_DECREF(v);                                                           \
    }
    LAYOUT_ITEMS(X_EXPORT)
    X_EXPORT(MAGIC, MAGIC)
    X_EXPORT(MUTEX_SIZE, sizeof(pthread_mutex_t))
#undef X_EXPORT
    PyObject *codes = Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "CLOSED", E_CLOSED, "INVALID",
                                    E_INVALID, "STALE", E_STALE, "TORN", E_TORN, "EXHAUSTED", E_EXHAUSTED, "TOO_LARGE",
                                    E_TOO_LARGE, "PACK", E_PACK, "UNPACK", E_UNPACK,
                                    "LOCK_TIMEOUT", E_LOCK_TIMEOUT, "DAMAGED", E_DAMAGED, "BUSY_READ", E_BUSY_READ, "OS", E_OS,
                                    "DUPLICATE", E_DUPLICATE, "UNTRUSTED", E_UNTRUSTED);
    if (!codes || PyModule_AddObject(m, "ERRORS", codes) < 0) {
        Py_XDECREF(codes);
        goto fail;
    }
    PyObject *points = PyTuple_New(F_COUNT - 1);
    if (!points)
        goto fail;
    for (int p = 1; p < F_COUNT; p++) {
        PyObject *text = PyUnicode_FromString(fault_names[p]);
        if (!text) {
            Py_DECREF(points);
            goto fail;
        }
        PyTuple_SET_ITEM(points, p - 1, text);
    }
    if (PyModule_AddObject(m, "FAULT_POINTS", points) < 0) {
        Py_DECREF(points);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

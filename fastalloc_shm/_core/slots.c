/* slots.c: slot states, free lists, handles, and the read that never tears.
 *
 * A slot's metadata (layout.h) is its generation and state word, which form
 * one u64 so a compare-and-swap can claim both, its value's length, and a
 * sequence word: the free-list link while the slot is free, the write
 * sequence of set() (odd while writing) while it holds a value.
 *
 * Invariants:
 * - A handle is (generation, pool-wide index); it names a value only while
 *   the slot's generation equals it with UNREADABLE clear. Every release
 *   moves the generation on (next_generation), so an old handle never
 *   matches a reused slot until 2**31 - 1 releases of that slot later.
 * - Free lists are changed only under the lock. An extent's slots at or past
 *   its fresh mark were never handed out: they are free without being listed.
 * - A slot is claimed for release with one CAS of (generation, state): of
 *   two racing releases, exactly one wins (a ThreadLocalPool releases without
 *   the lock).
 * - A reader (get) loads the sequence, checks the generation, copies, and
 *   checks both again: it returns a value only if no set() touched the slot
 *   meanwhile. A torn value keeps UNREADABLE while set() repairs it, until
 *   the new value is published, so it is never returned as one.
 */

static inline uint32_t next_generation(uint32_t gen)
{
    gen &= GENERATION_MASK;
    return gen >= GENERATION_MASK ? 1 : gen + 1;
}

/* Does (g, w) hold a value the handle's generation names: published (allocated, or taken
 * from a channel), or torn? */
static inline int holds_value(uint32_t g, uint32_t w, uint32_t gen)
{
    return (g == gen && (state_of(w) == ALLOCATED || state_is_taken(state_of(w))))
           || (g == (gen | UNREADABLE) && state_of(w) == TORN);
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
    meta_of(e, local)[META_SEQ] = w[EXT_HEAD];
    w[EXT_HEAD] = local + 1;
}

static int free_hint(Core *c)
{
    uint64_t hint = c->hdr[HDR_FREE_HINT];
    return hint < (uint64_t)c->n_ext ? (int)hint : 0;
}

/* Take one slot from any extent (lock held). 1 taken (*ep, *local), 0 none, -1 damaged (f). */
static int take_one(Core *c, uint32_t state, Extent **ep, uint32_t *local, Failure *f)
{
    int start = free_hint(c);
    for (int i = 0, k = start; i < c->n_ext; i++, k = k + 1 == c->n_ext ? 0 : k + 1) {
        int64_t got = pop_slot(c, &c->ext[k], state);
        if (got == -2)
            return fail(f, E_DAMAGED, "a free list is damaged; run recover()");
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

/* A slot taken by this process and not handed out: back on its free list,
 * generation unchanged (no handle of it left us). Lock held. */
typedef struct {
    Extent *e;
    uint32_t local;
} Taken;

static void unwind_locked(Core *c, const Taken *t, Py_ssize_t n)
{
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        uint32_t *m = meta_of(t[i].e, t[i].local);
        STORE((uint64_t *)m, pair(m[META_GEN] | UNREADABLE, FREE << STATE_SHIFT));
        push_slot(t[i].e, t[i].local);
    }
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

/* Give back slots taken under the lock and never handed out: as if never taken. */
static void unwind_taken(Core *c, const Taken *t, Py_ssize_t n, int counted)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb); /* why we give them back: the caller's to raise */
    if (core_lock(c) == 0) {
        unwind_locked(c, t, n);
        if (counted) {
            c->hdr[HDR_ALLOCATIONS] -= (uint64_t)n;
            c->hdr[HDR_IN_USE] -= (uint64_t)n;
        }
        core_unlock(c);
        tokens_post(c, n);
    } else {
        PyErr_Clear(); /* the slots stay ours: recovery frees them once we are gone */
    }
    PyErr_Restore(type, value, tb);
}

/* Claim a slot holding a value for release: (gen, ALLOCATED|o) or a torn
 * (gen|U, TORN|o) -> (next|U, new_word). 1 claimed; 0 stale or busy (*busy
 * set while a set() holds it). */
static int claim_release(uint32_t *m, uint32_t gen, uint32_t new_word, int *busy)
{
    uint64_t *p = (uint64_t *)m;
    uint64_t cur = LOAD_ACQ(p);
    for (;;) {
        uint32_t g = (uint32_t)cur, w = (uint32_t)(cur >> 32);
        if (!holds_value(g, w, gen)) {
            if (busy)
                *busy = (g & GENERATION_MASK) == gen && state_of(w) == SETTING;
            return 0;
        }
        if (CAS(p, &cur, pair(next_generation(gen) | UNREADABLE, new_word)))
            return 1;
    }
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

static inline PyObject *make_handle(uint32_t gen, uint64_t index)
{
    return PyLong_FromUnsignedLong((unsigned long)(((uint64_t)gen << 32) | index));
}

/* The slot of a handle; InvalidHandle when it names none. A handle within the pool's capacity
 * whose extent this process cannot map (missing, untrusted, damaged) gets the mapping's own
 * error instead: the handle is fine, the extent is not. */
static inline Extent *slot_of_handle(Core *c, PyObject *h, uint32_t *gen, uint32_t *local)
{
    uint64_t index;
    if (!decode_handle(h, gen, &index)) {
        RAISE(c, E_INVALID, "O)", h);
        return NULL;
    }
    Extent *e = locate(c, index, local);
    if (!e && index < LOAD(&c->hdr[HDR_CAPACITY])) {
        if (map_new_extents(c) < 0)
            return NULL;
        e = locate(c, index, local);
    }
    if (!e)
        RAISE(c, E_INVALID, "O)", h);
    return e;
}

/* Why a handle does not name a readable value: torn, or stale. No lock held. */
static PyObject *raise_not_live(Core *c, PyObject *h, const uint32_t *m, uint32_t gen)
{
    uint32_t g = LOAD(&m[META_GEN]), w = LOAD(&m[META_WORD]);
    if (g == (gen | UNREADABLE) && (state_of(w) == TORN || state_of(w) == SETTING)) { /* torn, or being repaired */
        int entry = (int)(owner_of(w) >> INCARNATION_BITS);
        uint32_t pid = entry < MAX_CLIENTS ? client_pid(c, entry) : 0;
        return RAISE(c, E_TORN, "OI)", h, pid);
    }
    return RAISE(c, E_STALE, "O)", h);
}

/* ---- taking slots for new values ---- */

/* Slots allocated now, every process's lock-free counts included. */
static int64_t slots_in_use(const Core *c)
{
    uint64_t sum = LOAD(&c->hdr[HDR_IN_USE]);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        const uint64_t *cw = client_words(c, i);
        sum += LOAD(&cw[CLIENT_ALLOCATIONS]) - LOAD(&cw[CLIENT_DEALLOCATIONS]);
    }
    return (int64_t)sum;
}

/* Take up to `want` slots that other processes' magazines hold (lock held; the free
 * lists are empty). A magazine's slot is CACHED by its owner; the thief claims it by
 * CAS (CACHED|owner -> state|me), the same CAS the owner's lock-free pop makes, so
 * exactly one of them gets it, and the owner skips what was taken. A drain, the
 * only other writer of a cached slot, holds the lock as the thief does. The scan
 * resumes where the last one stopped, and runs only while the counts say some
 * slot is free (capacity above the slots in use): a full pool costs no scan. */
static Py_ssize_t steal_locked(Core *c, uint32_t state, Taken *t, Py_ssize_t want)
{
    uint64_t capacity = c->ext[c->n_ext - 1].first + c->ext[c->n_ext - 1].cap;
    int64_t in_use = slots_in_use(c);
    if (c->kind != KIND_THREADLOCAL || want <= 0 || in_use >= (int64_t)capacity)
        return 0;
    uint64_t index = c->hdr[HDR_STEAL_CURSOR];
    if (index >= capacity)
        index = 0;
    Py_ssize_t n = 0;
    uint32_t mine = c->owner;
    for (uint64_t scanned = 0; scanned < capacity && n < want; scanned++, index = index + 1 == capacity ? 0 : index + 1) {
        uint32_t local;
        Extent *e = locate(c, index, &local);
        if (!e)
            break;
        uint64_t *m = (uint64_t *)meta_of(e, local);
        uint64_t cur = LOAD_ACQ(m);
        uint32_t w = (uint32_t)(cur >> 32);
        if (state_of(w) != CACHED || owner_of(w) == mine
            || !CAS(m, &cur, pair((uint32_t)cur, (state << STATE_SHIFT) | mine)))
            continue;
        FAULT(F_STEAL_CLAIMED);
        t[n].e = e;
        t[n].local = local;
        n++;
    }
    c->hdr[HDR_STEAL_CURSOR] = index;
    c->hdr[HDR_STEALS] += (uint64_t)n;
    return n;
}

static PyObject *exhausted(Core *c, Py_ssize_t wanted)
{
    /* One per slot refused, as total_allocations counts one per slot (RedisPool too). */
    __atomic_fetch_add(&c->hdr[HDR_FAILURES], (uint64_t)wanted, __ATOMIC_RELAXED);
    return RAISE(c, E_EXHAUSTED, "n)", wanted);
}

/* Called under the lock with a slot just taken (a channel's put writes and queues it there). */
typedef void (*TakenHook)(Core *c, Extent *e, uint32_t local, void *arg);

/* Take one slot for a new value, waiting up to `timeout` s (<= 0: no wait) for a
 * release. 1 taken (*ep, *local; the caller writes it, or `then` did under the lock),
 * -1 exception. */
static int take_for_allocate(Core *c, double timeout, Extent **ep, uint32_t *local, uint32_t state, TakenHook then,
                             void *arg)
{
    double deadline = timeout > 0 ? monotonic_now() + timeout : 0;
    for (;;) {
        int token = token_try(c);
        if (token)
            FAULT(F_ALLOC_TOKEN);
        if (map_new_extents(c) < 0 || core_lock(c) < 0) {
            if (token)
                tokens_post(c, 1);
            return -1;
        }
        Failure f = {0};
        int got = take_one(c, state, ep, local, &f);
        if (got == 0) {
            Taken stolen;
            if (steal_locked(c, state, &stolen, 1) == 1) {
                *ep = stolen.e;
                *local = stolen.local;
                got = 1;
            }
        }
        if (got == 1) {
            if (state == WRITING)
                count_allocations(c, 1);
            FAULT(F_ALLOC_POPPED);
            if (then)
                then(c, *ep, *local, arg);
        }
        core_unlock(c);
        if (got == 1)
            return 1;
        if (got < 0) {
            raise_failure(c, &f);
            return -1;
        }
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
        if (timeout <= 0 || monotonic_now() >= deadline) {
            exhausted(c, 1);
            return -1;
        }
        /* Counted as a waiter: a release into a magazine then posts a token to wake us. */
        __atomic_fetch_add(&c->hdr[HDR_WAITERS], 1, __ATOMIC_SEQ_CST);
        int waited = token_wait_slice(c, deadline);
        __atomic_fetch_sub(&c->hdr[HDR_WAITERS], 1, __ATOMIC_SEQ_CST);
        if (waited < 0)
            return -1;
        if (waited == 1)
            tokens_post(c, 1); /* the loop takes it again with the free lists in view */
    }
}

/* Take `count` slots (at least `minimum`) under one acquisition, growing as
 * policy allows; `then` runs under the lock for each slot taken. n taken; -1
 * exception; -2 full (nothing raised: the caller decides). */
static Py_ssize_t take_many(Core *c, Py_ssize_t count, Py_ssize_t minimum, uint32_t state, Taken *t, TakenHook then,
                            void *arg)
{
    for (;;) {
        if (map_new_extents(c) < 0 || core_lock(c) < 0)
            return -1;
        Py_ssize_t n = 0;
        Failure f = {0};
        int got = 1;
        while (n < count && (got = take_one(c, state, &t[n].e, &t[n].local, &f)) == 1) {
            n++;
            FAULT(F_BATCH_TAKING);
        }
        Py_ssize_t listed = n; /* from the free lists: each had a token */
        if (got == 0)
            n += steal_locked(c, state, t + n, count - n);
        if (got >= 0 && n >= minimum) {
            if (state == WRITING)
                count_allocations(c, (uint64_t)n);
            for (Py_ssize_t i = 0; then && i < n; i++)
                then(c, t[i].e, t[i].local, arg);
            core_unlock(c);
            tokens_take(c, listed);
            return n;
        }
        unwind_locked(c, t, n);
        core_unlock(c);
        if (n > listed)
            tokens_post(c, n - listed); /* stolen slots went to the free lists */
        if (got < 0) {
            raise_failure(c, &f);
            return -1;
        }
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

/* magazines.c: ThreadLocalPool's per-process cache of slots.
 *
 * A magazine is an array of pool-wide indices in this process's memory, each
 * slot marked CACHED by this process's owner word in shared memory, so that
 * recovery returns them to the free lists if the process dies. Allocating
 * from it and releasing into it take no lock: an allocate pops an index and
 * publishes; a release claims the slot with a CAS (exactly one of two racing
 * releases wins) and pushes the index. Refills take a batch under one lock
 * acquisition; when a magazine holds more than twice the batch, the bottom
 * goes back to the free lists, if the lock is free right now: a release that
 * has succeeded never waits for, or fails on, the drain after it (that drain
 * waits for a later release, or close()).
 *
 * A magazine never hides a free slot: an allocator that finds the free lists
 * empty steals cached slots from other processes' magazines (slots.c), so the
 * owner's pop claims its slot by CAS (CACHED|me -> WRITING|me) and drops an
 * index a thief took. A release into a magazine while an allocator waits for
 * a slot posts a token to wake it.
 *
 * Threads of the process share the magazine; every touch holds the GIL, and
 * code that released it (a lock wait) looks at the magazine afresh after.
 */

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

/* Fill the magazine with up to `batch` slots, CACHED by this process. 0; -1 exception; -2 the pool is full. */
static int refill(Core *c)
{
    if (magazine_reserve(c, c->mag_len + c->batch) < 0)
        return -1;
    Taken *t = PyMem_Malloc(c->batch * sizeof(Taken));
    if (!t) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t n = take_many(c, c->batch, 1, CACHED, t, NULL, NULL);
    if (n < 0) {
        PyMem_Free(t);
        return (int)n;
    }
    /* Another thread may have refilled while we waited for the lock: room again, or give them back. */
    if (magazine_reserve(c, c->mag_len + n) < 0) {
        unwind_taken(c, t, n, 0);
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

/* Give `count` slots from the bottom of the magazine back to the free lists.
 * Lock held; returns how many went back (the caller posts their tokens). */
static Py_ssize_t drain_locked(Core *c, Py_ssize_t count)
{
    if (count > c->mag_len)
        count = c->mag_len;
    Py_ssize_t given = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t local;
        Extent *e = locate(c, c->mag[i], &local);
        if (!e)
            continue;
        uint32_t *m = meta_of(e, local);
        uint64_t cur = LOAD((uint64_t *)m);
        if ((uint32_t)(cur >> 32) != ((CACHED << STATE_SHIFT) | c->owner))
            continue; /* repaired away by a recovery that judged us dead: not ours now */
        STORE((uint64_t *)m, pair((uint32_t)cur | UNREADABLE, FREE << STATE_SHIFT));
        push_slot(e, local);
        given++;
        FAULT(F_BATCH_RELEASING);
    }
    memmove(c->mag, c->mag + count, (size_t)(c->mag_len - count) * sizeof(uint32_t));
    c->mag_len -= count;
    return given;
}

/* Drain `count` slots, waiting for the lock. 0; -1 exception. */
static int drain(Core *c, Py_ssize_t count)
{
    if (count <= 0)
        return 0;
    if (core_lock(c) < 0)
        return -1;
    Py_ssize_t given = drain_locked(c, count); /* the count is clamped: other threads allocated meanwhile */
    core_unlock(c);
    tokens_post(c, given);
    return 0;
}

/* Drain `count` slots if the lock is free now; never raises. */
static void drain_if_free(Core *c, Py_ssize_t count)
{
    if (count <= 0 || !core_trylock(c))
        return;
    Py_ssize_t given = drain_locked(c, count);
    core_unlock(c);
    tokens_post(c, given);
}

/* Claim the top of the magazine for writing: CACHED|me -> WRITING|me by CAS, the
 * same CAS a thief makes (slots.c, steal_locked); an index a thief took is
 * dropped. 1 claimed (*e, *local; popped), 0 the magazine is empty. */
static int magazine_claim(Core *c, Extent **ep, uint32_t *local)
{
    uint32_t cached = (CACHED << STATE_SHIFT) | c->owner;
    while (c->mag_len) {
        Extent *e = locate(c, c->mag[c->mag_len - 1], local);
        c->mag_len--;
        if (!e)
            continue; /* cannot be: our own index; dropped rather than trusted */
        uint64_t *m = (uint64_t *)meta_of(e, *local);
        uint64_t cur = LOAD(m);
        if ((uint32_t)(cur >> 32) == cached && CAS(m, &cur, pair((uint32_t)cur, (WRITING << STATE_SHIFT) | c->owner))) {
            FAULT(F_MAGAZINE_CLAIMED);
            *ep = e;
            return 1;
        }
    }
    return 0;
}

/* Publish a claimed magazine slot. NULL only when out of memory: the slot goes back on top. */
static PyObject *magazine_publish(Core *c, Extent *e, uint32_t local, const Packed *p)
{
    PyObject *h = handle_of_taken(e, local);
    if (!h) {
        uint64_t *m = (uint64_t *)meta_of(e, local);
        STORE(m, pair((uint32_t)LOAD(m), (CACHED << STATE_SHIFT) | c->owner));
        c->mag[c->mag_len++] = (uint32_t)(e->first + local);
        return NULL;
    }
    uint64_t *mine = c->my_entry;
    mine[CLIENT_ALLOCATIONS]++;
    int64_t used = (int64_t)(LOAD(&c->hdr[HDR_IN_USE]) + (mine[CLIENT_ALLOCATIONS] - mine[CLIENT_DEALLOCATIONS])
                             + (uint64_t)c->others_in_use);
    if (used > (int64_t)LOAD(&c->hdr[HDR_PEAK]))
        STORE(&c->hdr[HDR_PEAK], (uint64_t)used); /* a high-water mark: a lost race costs one slot of precision */
    write_and_publish(c, e, local, p);
    return h;
}

static PyObject *magazine_release(Core *c, PyObject *h, Extent *e, uint32_t local, uint32_t gen)
{
    uint32_t *m = meta_of(e, local);
    int busy = 0;
    if (magazine_reserve(c, c->mag_len + 1) < 0)
        return NULL;
    /* Counted before the claim: a thief that reads the counts while the slot is already
     * cached must not take the pool for full (it would skip the scan); undone if the claim fails. */
    c->my_entry[CLIENT_DEALLOCATIONS]++;
    if (claim_release(m, gen, (CACHED << STATE_SHIFT) | c->owner, &busy)) {
        FAULT(F_MAGAZINE_RELEASE);
        c->mag[c->mag_len++] = (uint32_t)(e->first + local);
        if (LOAD(&c->hdr[HDR_WAITERS]))
            tokens_post(c, 1); /* an allocator waits for a slot: wake it, it steals this one */
        if (c->mag_len > 2 * (Py_ssize_t)c->batch)
            drain_if_free(c, c->mag_len - c->batch);
        Py_RETURN_NONE;
    }
    c->my_entry[CLIENT_DEALLOCATIONS]--;
    if (!busy)
        return raise_not_live(c, h, m, gen);
    /* A set() holds the slot: wait for it under the lock (which also repairs after
     * a setter that died), then free the slot straight to the free lists. */
    if (core_lock(c) < 0)
        return NULL;
    int claimed = claim_release(m, gen, FREE << STATE_SHIFT, NULL);
    if (claimed) {
        push_slot(e, local);
        count_deallocations(c, 1);
    }
    core_unlock(c);
    if (!claimed)
        return raise_not_live(c, h, m, gen);
    tokens_post(c, 1);
    Py_RETURN_NONE;
}

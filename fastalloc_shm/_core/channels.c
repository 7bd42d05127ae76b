/* channels.c: FIFOs of the pool's own slots, from producers to consumers.
 *
 * A channel is an entry of the header's channel table (a name and u64 words,
 * layout.h) and a singly linked list threaded through the SEQ word of its
 * slots' metadata: head and tail are pool-wide indices + 1. Every change of a
 * list happens under the pool lock, so a put or a get is one lock round trip:
 * put takes a free slot, writes the value, marks it QUEUED and links it at
 * the tail; get unlinks the head and either frees the slot (get) or hands it
 * to its consumer (get_handle: TAKEN + channel, owner = the consumer).
 *
 * Invariants:
 * - A QUEUED slot's owner field is its channel's number and its generation is
 *   UNREADABLE: the channel owns it; the handle that put it there is stale
 *   (put_handle moves the generation on), so nobody else can touch it.
 * - Nothing is lost: a producer killed inside put leaves its slot being
 *   written (freed by recovery) or QUEUED (recovery links it at the tail if
 *   the list does not reach it); a consumer that dies holding a TAKEN slot has
 *   it put back at the head of its channel by recovery: at-least-once.
 * - A consumer that finds its channel empty sleeps on the channel's wake word
 *   (a futex in the shared header) in slices, the GIL released, after reading
 *   the word under the lock; a put moves the word and wakes one sleeper, so
 *   no put is missed between the look and the sleep.
 * - The waiting word counts the consumers blocked in a get (its low half),
 *   from their first sleep until the get returns, in the epoch of its high
 *   half. A consumer killed asleep cannot take its count back, so a repair
 *   (which runs after any death) starts a new epoch at zero and wakes every
 *   sleeper: each counts itself again before it sleeps again, and one counted
 *   in an older epoch takes nothing back. The count is true across processes,
 *   after a death from the next repair on.
 */

#include <linux/futex.h>
#include <math.h>
#include <sys/syscall.h>

static inline uint64_t *channel_words(const Core *c, int ch)
{
    return (uint64_t *)(c->main + CHANNEL_TABLE_OFFSET + (size_t)ch * CHANNEL_BYTES);
}
static inline uint32_t *wake_word(const Core *c, int ch) { return (uint32_t *)&channel_words(c, ch)[CH_WAKE]; }
static inline int channel_in_use(const Core *c, int ch) { return LOAD((const uint8_t *)channel_words(c, ch)) != 0; }

/* Consumers asleep on `ch` now: the low half of its waiting word (the high half is the epoch). */
static inline uint32_t channel_waiting(const Core *c, int ch) { return (uint32_t)LOAD(&channel_words(c, ch)[CH_WAITING]); }

static void channel_wake(Core *c, int ch)
{
    __atomic_fetch_add(wake_word(c, ch), 1, __ATOMIC_SEQ_CST);
    if (channel_waiting(c, ch))
        syscall(SYS_futex, wake_word(c, ch), FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Link a QUEUED slot (its SEQ already 0) at the tail. Lock held. */
static void channel_append(Core *c, int ch, uint64_t index)
{
    uint64_t *cw = channel_words(c, ch);
    uint64_t tail = cw[CH_TAIL];
    uint32_t local;
    Extent *e = tail ? locate(c, tail - 1, &local) : NULL;
    if (e)
        meta_of(e, local)[META_SEQ] = (uint32_t)(index + 1);
    else
        cw[CH_HEAD] = index + 1;
    cw[CH_TAIL] = index + 1;
    cw[CH_LENGTH]++;
}

/* Link a slot already marked QUEUED at the head (a dead consumer's, put back). Lock held. */
static void channel_link_front(Core *c, int ch, Extent *e, uint32_t local)
{
    uint64_t *cw = channel_words(c, ch), index = e->first + local;
    meta_of(e, local)[META_SEQ] = (uint32_t)cw[CH_HEAD];
    cw[CH_HEAD] = index + 1;
    if (!cw[CH_TAIL])
        cw[CH_TAIL] = index + 1;
    cw[CH_LENGTH]++;
    cw[CH_REQUEUED]++;
}

/* Queue a slot this process holds (its value written): QUEUED with generation `gen`. Lock held. */
static void channel_queue(Core *c, int ch, Extent *e, uint32_t local, uint32_t gen)
{
    uint32_t *m = meta_of(e, local);
    m[META_SEQ] = 0;
    STORE_REL((uint64_t *)m, pair(gen | UNREADABLE, (QUEUED << STATE_SHIFT) | (uint32_t)ch));
    FAULT(F_CHANNEL_QUEUED);
    channel_append(c, ch, e->first + local);
    channel_words(c, ch)[CH_PUTS]++;
}

/* Unlink the head. 1 popped (*ep, *local, *gen: its queued generation), 0 empty, -1 damaged (f). Lock held. */
static int channel_pop(Core *c, int ch, Extent **ep, uint32_t *local, uint32_t *gen, Failure *f)
{
    uint64_t *cw = channel_words(c, ch);
    uint64_t head = cw[CH_HEAD];
    if (!head)
        return 0;
    Extent *e = locate(c, head - 1, local);
    if (!e)
        return fail(f, E_DAMAGED, "a channel's head is outside the pool; run recover()");
    uint32_t *m = meta_of(e, *local);
    uint64_t cur = LOAD((uint64_t *)m);
    uint32_t w = (uint32_t)(cur >> 32), next = m[META_SEQ];
    if (state_of(w) != QUEUED || owner_of(w) != (uint32_t)ch || !((uint32_t)cur & UNREADABLE))
        return fail(f, E_DAMAGED, "a channel's list is damaged; run recover()");
    cw[CH_HEAD] = next;
    if (!next)
        cw[CH_TAIL] = 0;
    cw[CH_LENGTH]--;
    cw[CH_GETS]++;
    *ep = e;
    *gen = (uint32_t)cur & GENERATION_MASK;
    FAULT(F_CHANNEL_POPPED);
    return 1;
}

/* Rebuild every channel's list (lock held; recovery.c, before the slots are judged):
 * keep the order the links give as far as they are sound, marking what they reach in
 * `linked` (one bit per pool-wide index); judge_slot appends the rest. */
static void channels_relink(Core *c, uint8_t *linked, uint64_t capacity)
{
    for (int ch = 0; ch < MAX_CHANNELS; ch++) {
        uint64_t *cw = channel_words(c, ch);
        uint64_t at = cw[CH_HEAD], last = 0, length = 0;
        uint32_t *last_meta = NULL;
        cw[CH_HEAD] = 0;
        for (uint64_t steps = 0; at && at <= capacity && steps < capacity && channel_in_use(c, ch); steps++) {
            uint32_t local;
            Extent *e = locate(c, at - 1, &local);
            if (!e || (linked[(at - 1) >> 3] & (1u << ((at - 1) & 7))))
                break;
            uint32_t *m = meta_of(e, local);
            uint64_t cur = LOAD((uint64_t *)m);
            uint32_t w = (uint32_t)(cur >> 32);
            if (state_of(w) != QUEUED || owner_of(w) != (uint32_t)ch || !((uint32_t)cur & GENERATION_MASK))
                break;
            linked[(at - 1) >> 3] |= (uint8_t)(1u << ((at - 1) & 7));
            if (!last)
                cw[CH_HEAD] = at;
            last = at;
            last_meta = m;
            length++;
            at = m[META_SEQ];
        }
        if (last_meta)
            last_meta[META_SEQ] = 0;
        cw[CH_TAIL] = last;
        cw[CH_LENGTH] = length;
        /* A new epoch of waiters: whoever died asleep is no longer counted; the living count
         * themselves again once woken (they wait for this lock, then sleep anew). */
        if (!channel_in_use(c, ch))
            continue;
        uint64_t was = __atomic_exchange_n(&cw[CH_WAITING], ((LOAD(&cw[CH_WAITING]) >> 32) + 1) << 32, __ATOMIC_SEQ_CST);
        if ((uint32_t)was) {
            __atomic_fetch_add(wake_word(c, ch), 1, __ATOMIC_SEQ_CST);
            syscall(SYS_futex, wake_word(c, ch), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        }
    }
}

/* Open channel `name` (created in the first free entry if absent). Its number, or -1 raised. */
static int channel_open_locked(Core *c, const char *name, size_t len, Failure *f)
{
    int free_entry = -1;
    for (int ch = 0; ch < MAX_CHANNELS; ch++) {
        const char *entry = (const char *)channel_words(c, ch);
        if (!entry[0]) {
            if (free_entry < 0)
                free_entry = ch;
        } else if (strnlen(entry, CHANNEL_NAME_BYTES) == len && !memcmp(entry, name, len)) {
            return ch;
        }
    }
    if (free_entry < 0)
        return fail(f, E_CHANNEL_LIMIT, "the pool has 64 channels, the most it can");
    uint64_t *cw = channel_words(c, free_entry);
    memset(cw, 0, CHANNEL_BYTES);
    memcpy(cw, name, len);
    return free_entry;
}

/* A consumer's place in its channel's waiting count, held from its first sleep until its get returns. */
typedef struct {
    int counted;
    uint64_t epoch; /* the waiting word's high half when it counted itself */
} Waiter;

/* Count `w` among the consumers waiting on `ch`, again if a repair started a new epoch since. */
static void waiter_count(Core *c, int ch, Waiter *w)
{
    uint64_t *waiting = &channel_words(c, ch)[CH_WAITING];
    if (w->counted && LOAD(waiting) >> 32 == w->epoch)
        return;
    w->epoch = __atomic_fetch_add(waiting, 1, __ATOMIC_SEQ_CST) >> 32;
    w->counted = 1;
}

/* Uncount `w`, unless a repair started a new epoch meanwhile (that one counts nobody old). */
static void waiter_done(Core *c, int ch, Waiter *w)
{
    if (!w->counted)
        return;
    uint64_t *waiting = &channel_words(c, ch)[CH_WAITING];
    uint64_t cur = LOAD(waiting);
    while (cur >> 32 == w->epoch && (uint32_t)cur && !CAS(waiting, &cur, cur - 1))
        ;
    w->counted = 0;
}

/* Wait one slice for a put into `ch` (its wake word was `seen` under the lock), the GIL
 * released, counted as waiting (`w`: the caller uncounts it when its get returns).
 * 1 look again, 0 the deadline passed, -1 a signal handler raised. */
static int channel_wait(Core *c, int ch, uint32_t seen, double deadline, Waiter *w)
{
    double now = monotonic_now();
    if (now >= deadline)
        return 0;
    double slice = deadline - now < WAIT_SLICE ? deadline - now : WAIT_SLICE;
    struct timespec rel = {(time_t)slice, (long)((slice - (double)(time_t)slice) * 1e9)};
    uint32_t *word = wake_word(c, ch);
    waiter_count(c, ch, w);
    Py_BEGIN_ALLOW_THREADS
    syscall(SYS_futex, word, FUTEX_WAIT, seen, &rel, NULL, 0);
    Py_END_ALLOW_THREADS
    return PyErr_CheckSignals() < 0 ? -1 : 1;
}

static double deadline_of(double timeout) { return timeout < 0 ? INFINITY : monotonic_now() + timeout; }

/* ---- the operations (type.c guards them) ---- */

static PyObject *channel_empty(Core *c, int ch, double timeout)
{
    char name[CHANNEL_NAME_BYTES + 1] = {0};
    memcpy(name, channel_words(c, ch), CHANNEL_NAME_BYTES);
    return RAISE(c, E_CHANNEL_EMPTY, "sd)", name, timeout < 0 ? 0.0 : timeout);
}

static int channel_number(Core *c, int ch)
{
    if (ch < 0 || ch >= MAX_CHANNELS || !channel_in_use(c, ch)) {
        PyErr_Format(PyExc_ValueError, "no channel number %d in this pool", ch);
        return -1;
    }
    return 0;
}

static PyObject *channel_open_impl(Core *c, PyObject *name)
{
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(name, &len);
    if (!text)
        return NULL;
    if (len < 1 || len >= CHANNEL_NAME_BYTES || strlen(text) != (size_t)len)
        return PyErr_Format(PyExc_ValueError, "channel name %R: 1 to %d bytes", name, CHANNEL_NAME_BYTES - 1);
    if (core_lock(c) < 0)
        return NULL;
    Failure f = {0};
    int ch = channel_open_locked(c, text, (size_t)len, &f);
    core_unlock(c);
    return ch < 0 ? raise_failure(c, &f) : PyLong_FromLong(ch);
}

typedef struct {
    int ch;
    const Packed *packed; /* one value per slot, in order */
    Py_ssize_t next;
} Putting;

/* Write the next value into a slot just taken and queue it (lock held: take_for_allocate / take_many). */
static void put_locked(Core *c, Extent *e, uint32_t local, void *arg)
{
    Putting *put = arg;
    const Packed *p = &put->packed[put->next++];
    uint32_t *m = meta_of(e, local);
    copy_packed(slot_of(c, e, local), p);
    m[META_LEN] = (uint32_t)packed_size(p);
    channel_queue(c, put->ch, e, local, LOAD(&m[META_GEN]) & GENERATION_MASK);
}

/* put(value): take a slot (waiting up to `timeout`, < 0 forever), write, queue: one lock round trip. */
static PyObject *channel_put_impl(Core *c, int ch, PyObject *value, double timeout)
{
    if (channel_number(c, ch) < 0)
        return NULL;
    Packed p;
    if (pack_checked(c, value, &p) < 0)
        return NULL;
    Putting put = {ch, &p, 0};
    Taken t;
    int r = take_for_allocate(c, timeout < 0 ? 1e9 : timeout, &t.e, &t.local, WRITING, put_locked, &put);
    packed_done(&p);
    if (r != 1)
        return NULL;
    channel_wake(c, ch);
    Py_RETURN_NONE;
}

/* put_many(values): all or nothing, one lock round trip for the batch once its slots are free. */
static PyObject *channel_put_many_impl(Core *c, int ch, PyObject *values, double timeout)
{
    if (channel_number(c, ch) < 0)
        return NULL;
    Batch b;
    PyObject *result = NULL;
    if (batch_pack(c, values, "put_many", &b) < 0)
        goto done;
    Py_ssize_t n = b.n;
    double deadline = deadline_of(timeout < 0 ? 1e9 : timeout);
    /* Tokens this wait holds, one per slot it saw free: kept, so that with 1..n-1 slots free the
     * next wait sleeps until a release instead of taking the same free slot's token again (a
     * spin). Given back before each look at the free lists, and at every end. */
    Py_ssize_t held = 0;
    for (Py_ssize_t got = 0; n;) {
        tokens_post(c, held);
        held = 0;
        Putting put = {ch, b.packed, 0};
        got = take_many(c, n, n, WRITING, b.taken, put_locked, &put);
        if (got == n)
            break;
        if (got == -1)
            goto done;
        while (held < n) {
            if (timeout == 0 || monotonic_now() >= deadline) {
                tokens_post(c, held);
                exhausted(c, n);
                goto done;
            }
            __atomic_fetch_add(&c->hdr[HDR_WAITERS], 1, __ATOMIC_SEQ_CST);
            int waited = token_wait_slice(c, deadline);
            __atomic_fetch_sub(&c->hdr[HDR_WAITERS], 1, __ATOMIC_SEQ_CST);
            if (waited < 0) {
                tokens_post(c, held);
                goto done;
            }
            if (waited == 0)
                break; /* a slice without a release: look again (the count may be low after a crash) */
            held++;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        channel_wake(c, ch);
    result = Py_NewRef(Py_None);
done:
    batch_done(&b);
    return result;
}

/* put_handle(h): the channel takes a slot its caller holds; `h` is stale from now on. */
static PyObject *channel_put_handle_impl(Core *c, int ch, PyObject *h)
{
    if (channel_number(c, ch) < 0)
        return NULL;
    uint32_t gen, local;
    Extent *e = slot_of_handle(c, h, &gen, &local);
    if (!e || exported_slot(c, e->first + local) || core_lock(c) < 0)
        return NULL;
    uint32_t *m = meta_of(e, local);
    uint64_t cur = LOAD_ACQ((uint64_t *)m);
    for (;;) {
        uint32_t g = (uint32_t)cur, st = state_of((uint32_t)(cur >> 32));
        if (g != gen || (st != ALLOCATED && !state_is_taken(st))) {
            core_unlock(c);
            return raise_not_live(c, h, m, gen);
        }
        /* CAS: a ThreadLocalPool's owner may release the same handle lock-free meanwhile. */
        if (CAS((uint64_t *)m, &cur, pair(next_generation(gen) | UNREADABLE, (QUEUED << STATE_SHIFT) | (uint32_t)ch)))
            break;
    }
    m[META_SEQ] = 0;
    FAULT(F_CHANNEL_QUEUED);
    channel_append(c, ch, e->first + local);
    channel_words(c, ch)[CH_PUTS]++;
    core_unlock(c);
    channel_wake(c, ch);
    Py_RETURN_NONE;
}

/* Wait until the channel has an item (or the deadline passes), then pop up to `max_items` under one
 * lock acquisition: as handles TAKEN by this process (`take`), or read and freed. A list, or NULL. */
static PyObject *channel_take(Core *c, int ch, Py_ssize_t max_items, double timeout, int take)
{
    if (channel_number(c, ch) < 0)
        return NULL;
    if (max_items < 1)
        return PyErr_Format(PyExc_ValueError, "max_items must be at least 1, not %zd", max_items);
    PyObject *out = PyList_New(0); /* before the lock: it is a GC object */
    if (!out)
        return NULL;
    double deadline = deadline_of(timeout);
    Waiter w = {0};
    for (;;) {
        if (core_lock(c) < 0)
            goto fail;
        Failure f = {0};
        Py_ssize_t n = 0, freed = 0;
        int got = 0;
        while (n < max_items) {
            Extent *e;
            uint32_t local, gen;
            if ((got = channel_pop(c, ch, &e, &local, &gen, &f)) != 1)
                break;
            uint32_t *m = meta_of(e, local);
            uint64_t index = e->first + local;
            PyObject *item;
            if (take) {
                m[META_SEQ] = 0; /* the link it held: as a value's write sequence, even (no write in progress) */
                STORE_REL((uint64_t *)m, pair(gen, ((TAKEN + (uint32_t)ch) << STATE_SHIFT) | c->owner));
                item = make_handle(gen, index); /* an int: no GC, no Python code */
            } else {
                uint32_t len = m[META_LEN];
                item = len <= c->geo.slot_size ? PyBytes_FromStringAndSize((const char *)slot_of(c, e, local), len) : NULL;
            }
            if (!item || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                /* Out of memory (or a length past the slot): back at the head, untouched (not yet freed). */
                STORE_REL((uint64_t *)m, pair(gen | UNREADABLE, (QUEUED << STATE_SHIFT) | (uint32_t)ch));
                channel_link_front(c, ch, e, local);
                channel_words(c, ch)[CH_GETS]--;
                channel_words(c, ch)[CH_REQUEUED]--;
                got = -2;
                break;
            }
            Py_DECREF(item);
            if (!take) { /* its bytes are in the list: the slot is free from now on */
                STORE_REL((uint64_t *)m, pair(next_generation(gen) | UNREADABLE, FREE << STATE_SHIFT));
                push_slot(e, local);
                freed++;
            }
            n++;
        }
        if (freed) {
            count_deallocations(c, (uint64_t)freed);
            c->hdr[HDR_FREE_HINT] = 0;
        }
        uint32_t seen = LOAD(wake_word(c, ch));
        core_unlock(c);
        tokens_post(c, freed);
        if (got == -1) {
            raise_failure(c, &f);
            goto fail;
        }
        if (got == -2 && n) {
            PyErr_Clear(); /* the items taken so far are the answer; the one that failed is back at the head */
        } else if (got == -2) {
            if (!PyErr_Occurred())
                raise_damaged(c, "a queued value is longer than its slot; run recover()");
            goto fail;
        }
        if (n) {
            waiter_done(c, ch, &w);
            return out;
        }
        if (timeout == 0) {
            channel_empty(c, ch, timeout);
            goto fail;
        }
        int r = channel_wait(c, ch, seen, deadline, &w);
        if (r < 0)
            goto fail;
        if (r == 0) {
            channel_empty(c, ch, timeout);
            goto fail;
        }
    }
fail:
    waiter_done(c, ch, &w);
    Py_DECREF(out);
    return NULL;
}

/* Items a get took whose decoding ran out of memory: their bytes back at the head of the
 * channel, in their order, in slots taken again (one lock round trip; no Python code). */
typedef struct {
    int ch;
    PyObject *copies; /* a list only this call holds: nothing else can change it */
    Py_ssize_t next;
} Requeue;

static void requeue_locked(Core *c, Extent *e, uint32_t local, void *arg)
{
    Requeue *r = arg;
    /* The last first: each goes in front of the one after it. */
    PyObject *copy = PyList_GET_ITEM(r->copies, PyList_GET_SIZE(r->copies) - 1 - r->next++);
    uint32_t *m = meta_of(e, local);
    memcpy(slot_of(c, e, local), PyBytes_AS_STRING(copy), (size_t)PyBytes_GET_SIZE(copy));
    m[META_LEN] = (uint32_t)PyBytes_GET_SIZE(copy);
    STORE_REL((uint64_t *)m, pair((LOAD(&m[META_GEN]) & GENERATION_MASK) | UNREADABLE, (QUEUED << STATE_SHIFT) | (uint32_t)r->ch));
    channel_link_front(c, r->ch, e, local);
    channel_words(c, r->ch)[CH_GETS]--; /* not delivered after all */
}

/* Out of memory while decoding what a get took: put the copies back (at-least-once), keeping
 * the MemoryError. Best effort: it needs the slots (just freed: others may have taken them). */
static void requeue_copies(Core *c, int ch, PyObject *copies)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    Py_ssize_t n = PyList_GET_SIZE(copies);
    Taken few[64], *taken = n <= 64 ? few : PyMem_Calloc((size_t)n, sizeof(Taken));
    if (taken) {
        Requeue r = {ch, copies, 0};
        if (take_many(c, n, n, WRITING, taken, requeue_locked, &r) == n)
            channel_wake(c, ch);
        PyErr_Clear(); /* a failure to requeue: the MemoryError is what the caller hears */
        if (taken != few)
            PyMem_Free(taken);
    }
    PyErr_Restore(type, value, tb);
}

/* The values a channel_take without `take` copied out: decoded now, outside the lock. */
static PyObject *decode_all(Core *c, int ch, PyObject *copies)
{
    Py_ssize_t n = PyList_GET_SIZE(copies);
    PyObject *values = PyList_New(n);
    for (Py_ssize_t i = 0; values && i < n; i++) {
        PyObject *copy = PyList_GET_ITEM(copies, i), *raw = NULL;
        PyObject *v = decode_value((const uint8_t *)PyBytes_AS_STRING(copy), (uint32_t)PyBytes_GET_SIZE(copy), &raw);
        if (!v && raw) {
            Py_DECREF(raw);
            v = unpack_copy(c, Py_None, Py_NewRef(copy));
        }
        if (!v)
            Py_CLEAR(values);
        else
            PyList_SET_ITEM(values, i, v);
    }
    if (!values && PyErr_ExceptionMatches(PyExc_MemoryError))
        requeue_copies(c, ch, copies); /* a value that does not decode is dropped: it never would */
    return values;
}

static PyObject *channel_get_impl(Core *c, int ch, double timeout)
{
    PyObject *copies = channel_take(c, ch, 1, timeout, 0);
    if (!copies)
        return NULL;
    PyObject *values = decode_all(c, ch, copies);
    Py_DECREF(copies);
    PyObject *v = values ? Py_NewRef(PyList_GET_ITEM(values, 0)) : NULL;
    Py_XDECREF(values);
    return v;
}

static PyObject *channel_get_many_impl(Core *c, int ch, Py_ssize_t max_items, double timeout)
{
    PyObject *copies = channel_take(c, ch, max_items, timeout, 0);
    if (!copies)
        return NULL;
    PyObject *values = decode_all(c, ch, copies);
    Py_DECREF(copies);
    return values;
}

static PyObject *channel_get_handle_impl(Core *c, int ch, double timeout)
{
    PyObject *handles = channel_take(c, ch, 1, timeout, 1);
    if (!handles)
        return NULL;
    PyObject *h = Py_NewRef(PyList_GET_ITEM(handles, 0));
    Py_DECREF(handles);
    return h;
}

/* channel_wait(ch, seconds) -> True if the channel has an item now, else False after a put or
 * `seconds` (at most one slice): a wait that takes nothing, for asyncio's helper thread. */
static PyObject *channel_watch_impl(Core *c, int ch, double seconds)
{
    if (channel_number(c, ch) < 0 || core_lock(c) < 0)
        return NULL;
    uint64_t length = channel_words(c, ch)[CH_LENGTH];
    uint32_t seen = LOAD(wake_word(c, ch));
    core_unlock(c);
    if (length)
        Py_RETURN_TRUE;
    Waiter w = {0};
    int r = channel_wait(c, ch, seen, monotonic_now() + seconds, &w);
    waiter_done(c, ch, &w);
    if (r < 0)
        return NULL;
    Py_RETURN_FALSE;
}

/* The counters of channel `ch` as a dict (name, length, puts, gets, requeued, waiting): no lock, a
 * snapshot a moment old. A new reference, or NULL. */
static PyObject *channel_counters(Core *c, int ch)
{
    const uint64_t *cw = channel_words(c, ch);
    char name[CHANNEL_NAME_BYTES + 1] = {0};
    memcpy(name, cw, CHANNEL_NAME_BYTES);
    /* "replace": a damaged name is shown as such rather than hiding every counter */
    PyObject *text = PyUnicode_DecodeUTF8(name, (Py_ssize_t)strlen(name), "replace");
    if (!text)
        return NULL;
    return Py_BuildValue("{s:N,s:K,s:K,s:K,s:K,s:I}", "name", text, "length", (unsigned long long)LOAD(&cw[CH_LENGTH]),
                         "puts", (unsigned long long)LOAD(&cw[CH_PUTS]), "gets", (unsigned long long)LOAD(&cw[CH_GETS]),
                         "requeued", (unsigned long long)LOAD(&cw[CH_REQUEUED]), "waiting", channel_waiting(c, ch));
}

/* channel_stats(ch) -> dict: the channel's name and counters. */
static PyObject *channel_stats_impl(Core *c, int ch)
{
    if (channel_number(c, ch) < 0)
        return NULL;
    return channel_counters(c, ch);
}

/* channels() -> [names of the pool's channels, by number] (None for a free entry). */
static PyObject *channels_impl(Core *c)
{
    PyObject *out = PyList_New(MAX_CHANNELS);
    for (int ch = 0; out && ch < MAX_CHANNELS; ch++) {
        char name[CHANNEL_NAME_BYTES + 1] = {0};
        memcpy(name, channel_words(c, ch), CHANNEL_NAME_BYTES);
        PyObject *item = name[0] ? PyUnicode_FromString(name) : Py_NewRef(Py_None);
        if (!item) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, ch, item);
    }
    return out;
}

/* operations.c: allocate, get, set, release and the batches: the mechanisms composed.
 *
 * Each operation follows one shape: check and convert its arguments, run all
 * Python code it needs (packing) before it touches a slot, take what it needs
 * under the lock (raising only after unlocking), then write and publish.
 * type.c wraps each in op_enter/op_leave, so close() never unmaps under it.
 */

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

static PyObject *allocate_impl(Core *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout_obj = NULL;
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "allocate(value, timeout=None)");
        return NULL;
    }
    PyObject *value = args[0];
    if (nargs == 2)
        timeout_obj = args[1];
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "timeout") != 0) {
            PyErr_Format(PyExc_TypeError, "allocate() got an unexpected keyword argument %R", PyTuple_GET_ITEM(kwnames, i));
            return NULL;
        }
        timeout_obj = args[nargs + i];
    }
    double timeout;
    if (parse_timeout(timeout_obj, &timeout) < 0)
        return NULL;
    Packed p;
    if (pack_checked(c, value, &p) < 0)
        return NULL;
    PyObject *h = NULL;
    Taken t;
    int from_magazine = c->kind == KIND_THREADLOCAL;
    while (from_magazine && !magazine_claim(c, &t.e, &t.local)) {
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
    if (from_magazine) {
        h = magazine_publish(c, t.e, t.local, &p);
    } else {
        if (take_for_allocate(c, timeout, &t.e, &t.local, WRITING, NULL, NULL) == 1) {
            h = handle_of_taken(t.e, t.local);
            if (h)
                write_and_publish(c, t.e, t.local, &p);
            else
                unwind_taken(c, &t, 1, 1);
        }
    }
    packed_done(&p);
    return h;
}

#define READ_RETRIES 100000

static PyObject *get_impl(Core *c, PyObject *h)
{
    uint32_t gen, local;
    Extent *e = slot_of_handle(c, h, &gen, &local);
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
            if (n <= c->geo.slot_size) {
                PyObject *copy = NULL;
                PyObject *v = decode_value(src, n, &copy); /* allocates no GC object: runs no Python */
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (LOAD(&m[META_SEQ]) == seq && LOAD(&m[META_GEN]) == gen) {
                    if (v)
                        return v;
                    return copy ? unpack_copy(c, h, copy) : NULL;
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

static PyObject *release_impl(Core *c, PyObject *h)
{
    uint32_t gen, local;
    Extent *e = slot_of_handle(c, h, &gen, &local);
    if (!e || exported_slot(c, e->first + local))
        return NULL;
    if (c->kind == KIND_THREADLOCAL)
        return magazine_release(c, h, e, local, gen);
    uint32_t *m = meta_of(e, local);
    if (core_lock(c) < 0)
        return NULL;
    /* Only a ThreadLocalPool releases without the lock; here the lock alone orders
     * every writer of the pair, so a check and a store claim the slot. */
    uint64_t cur = LOAD((uint64_t *)m);
    if (!holds_value((uint32_t)cur, (uint32_t)(cur >> 32), gen)) {
        core_unlock(c);
        return raise_not_live(c, h, m, gen);
    }
    STORE_REL((uint64_t *)m, pair(next_generation(gen) | UNREADABLE, FREE << STATE_SHIFT));
    FAULT(F_RELEASE_FREED);
    push_slot(e, local);
    count_deallocations(c, 1);
    uint64_t k = (uint64_t)(e - c->ext);
    if (k < c->hdr[HDR_FREE_HINT])
        c->hdr[HDR_FREE_HINT] = k;
    FAULT(F_RELEASE_PUSHED);
    core_unlock(c);
    tokens_post(c, 1);
    Py_RETURN_NONE;
}

static PyObject *set_impl(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set(handle, value)");
        return NULL;
    }
    PyObject *h = args[0];
    uint32_t gen, local;
    uint64_t index;
    if (!decode_handle(h, &gen, &index))
        return RAISE(c, E_INVALID, "O)", h);
    Packed p;
    if (pack_checked(c, args[1], &p) < 0)
        return NULL;
    Extent *e = slot_of_handle(c, h, &gen, &local); /* after packing: no slot pointer across Python code */
    if (!e || core_lock(c) < 0) {
        packed_done(&p);
        return NULL;
    }
    uint32_t *m = meta_of(e, local);
    uint64_t *pm = (uint64_t *)m;
    /* Claim the slot from lock-free releasers: (gen, ALLOCATED|o) -> (gen, SETTING|o), or a
     * torn (gen|U, TORN|o) -> (gen|U, SETTING|o): a torn value stays unreadable until the
     * new one is published, so no reader takes the bytes under repair for a value. */
    uint64_t cur = LOAD_ACQ(pm);
    uint32_t w;
    for (;;) {
        w = (uint32_t)(cur >> 32);
        if (!holds_value((uint32_t)cur, w, gen)) {
            core_unlock(c);
            packed_done(&p);
            return raise_not_live(c, h, m, gen);
        }
        if (CAS(pm, &cur, pair((uint32_t)cur, (SETTING << STATE_SHIFT) | owner_of(w))))
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
    /* Published as it was claimed: allocated, or still taken from its channel (a torn value: allocated). */
    uint32_t published = state_is_taken(state_of(w)) ? w : (ALLOCATED << STATE_SHIFT) | owner_of(w);
    STORE_REL(pm, pair(gen, published));
    core_unlock(c);
    packed_done(&p);
    Py_RETURN_NONE;
}

static PyObject *allocate_many_impl(Core *c, PyObject *values)
{
    Batch b;
    PyObject *result = NULL;
    if (batch_pack(c, values, "allocate_many", &b) < 0)
        goto done;
    Py_ssize_t n = b.n;
    result = PyList_New(n); /* before taking: a collection it triggers runs no code with slots in hand */
    if (!result || !n)
        goto done;
    Py_ssize_t got = take_many(c, n, n, WRITING, b.taken, NULL, NULL);
    if (got == -2)
        exhausted(c, n);
    if (got < 0) {
        Py_CLEAR(result);
        goto done;
    }
    /* Every handle first, so running out of memory hands out nothing. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = handle_of_taken(b.taken[i].e, b.taken[i].local);
        if (!h) {
            unwind_taken(c, b.taken, n, 1);
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, h);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        write_and_publish(c, b.taken[i].e, b.taken[i].local, &b.packed[i]);
done:
    batch_done(&b);
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

/* Any index twice? Raises DuplicateHandle naming it. 0 none, -1 raised. */
static int refuse_duplicates(Core *c, const Releasing *r, Py_ssize_t n)
{
    if (n < 2)
        return 0;
    Releasing *sorted = PyMem_Malloc((size_t)n * sizeof(Releasing));
    if (!sorted) {
        PyErr_NoMemory();
        return -1;
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
            return -1;
        }
    PyMem_Free(sorted);
    return 0;
}

static PyObject *release_many_impl(Core *c, PyObject *handles)
{
    PyObject *items = PySequence_Tuple(handles);
    if (!items) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "release_many() takes an iterable of handles");
        }
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *result = NULL;
    Releasing *r = n ? PyMem_Calloc((size_t)n, sizeof(Releasing)) : NULL;
    if (n && !r) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        r[i].e = slot_of_handle(c, PyTuple_GET_ITEM(items, i), &r[i].gen, &r[i].local);
        if (!r[i].e)
            goto done;
        r[i].index = r[i].e->first + r[i].local;
        if (exported_slot(c, r[i].index))
            goto done;
    }
    if (refuse_duplicates(c, r, n) < 0)
        goto done;
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
            raise_not_live(c, PyTuple_GET_ITEM(items, i), m, r[i].gen);
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
    Py_DECREF(items);
    return result;
}

/* recover(reclaim, wait) -> (tally dict, lock_taken_over, dead pids). */
/* Entry `i` is the dead lock holder's (`dead_owner`: its owner id + 1), whose liveness lock may
 * still look held: the kernel hands the mutex on before the dead process's files close. */
static int was_dead_holder(const Core *c, int i, uint64_t dead_owner)
{
    return dead_owner && (int)((dead_owner - 1) >> INCARNATION_BITS) == i &&
           (client_incarnation(c, i) & INCARNATION_MASK) == ((dead_owner - 1) & INCARNATION_MASK);
}

static PyObject *recover_impl(Core *c, int reclaim, double wait)
{
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
    LockInfo info;
    if (map_new_extents(c) < 0 || core_lock_for(c, wait, reclaim, &info) < 0) {
        Py_DECREF(dead);
        return NULL;
    }
    /* A repair inside the acquisition (after a dead holder) already judged every
     * slot with this policy: its tally is the report. */
    long counts[T_COUNT] = {0};
    Failure f = {0};
    int rc = 0;
    if (info.repaired)
        memcpy(counts, info.counts, sizeof counts);
    else if ((rc = rebuild_locked(c, reclaim, counts, &f)) == 0 && repairs_in(counts))
        c->hdr[HDR_RECOVERIES]++;
    /* Also those that died while we waited for the lock (a holder among them): counted now. */
    uint32_t gone[MAX_CLIENTS];
    int n_gone = 0;
    if (rc == 0)
        for (int i = 0; i < MAX_CLIENTS; i++) { /* their slots are judged now: the entries can go */
            uint32_t pid = client_pid(c, i);
            if (pid && (!entry_alive(c, i) || was_dead_holder(c, i, info.dead_owner))) {
                gone[n_gone++] = pid;
                STORE((uint32_t *)client_words(c, i), 0u);
            }
        }
    core_unlock(c);
    if (rc < 0) {
        Py_DECREF(dead);
        return raise_failure(c, &f);
    }
    for (int i = 0; i < n_gone; i++) {
        PyObject *p = PyLong_FromUnsignedLong(gone[i]);
        int known = p ? PySequence_Contains(dead, p) : -1;
        if (known < 0 || (!known && PyList_Append(dead, p) < 0)) {
            Py_XDECREF(p);
            Py_DECREF(dead);
            return NULL;
        }
        Py_DECREF(p);
    }
    PyObject *tally = tally_dict(counts);
    if (!tally) {
        Py_DECREF(dead);
        return NULL;
    }
    return Py_BuildValue("(NON)", tally, info.dead_holder ? Py_True : Py_False, dead);
}

/* commit_extent(number, capacity): record extent `number`, created and stamped by Python, in the header. */
static PyObject *commit_extent_impl(Core *c, int number, unsigned int cap)
{
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
static PyObject *pre_initialize_impl(Core *c, PyObject *value)
{
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
static PyObject *take_slot_impl(Core *c)
{
    Taken t;
    if (take_for_allocate(c, -1, &t.e, &t.local, WRITING, NULL, NULL) < 0)
        return NULL;
    uint32_t n = LOAD(&meta_of(t.e, t.local)[META_LEN]);
    PyObject *previous = n && n <= c->geo.slot_size
                             ? PyBytes_FromStringAndSize((const char *)slot_of(c, t.e, t.local), n)
                             : Py_NewRef(Py_None);
    PyObject *r = previous ? Py_BuildValue("(KN)", (unsigned long long)(t.e->first + t.local), previous) : NULL;
    if (!r)
        unwind_taken(c, &t, 1, 1);
    return r;
}

/* A slot this process took with take_slot(); ValueError if it is not. */
static Extent *taken_slot(Core *c, PyObject *index_obj, uint32_t *local)
{
    unsigned long long index = PyLong_AsUnsignedLongLong(index_obj);
    if (PyErr_Occurred())
        return NULL;
    Extent *e = locate(c, index, local);
    if (!e || LOAD(&meta_of(e, *local)[META_WORD]) != ((WRITING << STATE_SHIFT) | c->owner)) {
        PyErr_SetString(PyExc_ValueError, "not a slot this process is writing");
        return NULL;
    }
    return e;
}

/* publish_slot(index, value) -> handle: finish acquire(). */
static PyObject *publish_slot_impl(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "publish_slot(index, value)");
        return NULL;
    }
    Packed p;
    if (pack_checked(c, args[1], &p) < 0)
        return NULL;
    uint32_t local;
    Extent *e = taken_slot(c, args[0], &local);
    PyObject *h = e ? handle_of_taken(e, local) : NULL;
    if (h)
        write_and_publish(c, e, local, &p);
    packed_done(&p);
    return h;
}

/* unwind_slot(index): give back a slot acquire() took but could not fill. */
static PyObject *unwind_slot_impl(Core *c, PyObject *index_obj)
{
    uint32_t local;
    Extent *e = taken_slot(c, index_obj, &local);
    if (!e)
        return NULL;
    Taken t = {e, local};
    unwind_taken(c, &t, 1, 1);
    Py_RETURN_NONE;
}

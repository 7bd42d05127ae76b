/* statistics.c: what the pool says about itself: counters, usage, channels, clients, slot states.
 *
 * The header's counters are written by the lock's holder; a ThreadLocalPool's
 * lock-free allocations and releases are counted in each client entry by its
 * owner, and every reader sums them: no counter is written by two processes
 * without the lock. A channel's counters live in its entry of the channel
 * table (channels.c): puts, gets and requeued under the lock, the waiting
 * consumers by the sleepers themselves. Readers take no lock (a snapshot may
 * be a moment old), except reset_statistics, which writes.
 */

/* {name: {length, puts, gets, requeued, waiting}} of every channel, in the table's order. */
static PyObject *channels_counters(Core *c)
{
    PyObject *out = PyDict_New();
    for (int ch = 0; out && ch < MAX_CHANNELS; ch++) {
        if (!channel_in_use(c, ch))
            continue;
        PyObject *counters = channel_counters(c, ch), *name = counters ? PyDict_GetItemString(counters, "name") : NULL;
        if (!name || PyDict_SetItem(out, name, counters) < 0 || PyDict_DelItemString(counters, "name") < 0)
            Py_CLEAR(out);
        Py_XDECREF(counters);
    }
    return out;
}

static PyObject *counters_impl(Core *c)
{
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
    PyObject *channels = channels_counters(c);
    if (!channels)
        return NULL;
    return Py_BuildValue("{s:K,s:L,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:n,s:N}", "capacity",
                         (unsigned long long)LOAD(&h[HDR_CAPACITY]), "current_usage", (long long)in_use, "peak_usage",
                         (unsigned long long)peak, "total_allocations", (unsigned long long)allocs, "total_deallocations",
                         (unsigned long long)deallocs, "allocation_failures", (unsigned long long)LOAD(&h[HDR_FAILURES]),
                         "growth_count", (unsigned long long)LOAD(&h[HDR_GROWTHS]), "lock_acquisitions",
                         (unsigned long long)LOAD(&h[HDR_LOCK_ACQUISITIONS]), "lock_wait_ns",
                         (unsigned long long)LOAD(&h[HDR_LOCK_WAIT_NS]), "lock_timeouts",
                         (unsigned long long)LOAD(&h[HDR_LOCK_TIMEOUTS]), "recoveries",
                         (unsigned long long)LOAD(&h[HDR_RECOVERIES]), "steals", (unsigned long long)LOAD(&h[HDR_STEALS]),
                         "cached", c->mag_len, "channels", channels);
}

static PyObject *len_impl(Core *c)
{
    int64_t in_use = slots_in_use(c);
    return PyLong_FromLongLong(in_use > 0 ? in_use : 0);
}

/* reset_statistics(): every event counter to zero (the channels' too), as the crate's collector; usage
 * stays true, peak restarts at it. */
static PyObject *reset_statistics_impl(Core *c)
{
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
    h[HDR_FAILURES] = h[HDR_GROWTHS] = h[HDR_LOCK_WAIT_NS] = h[HDR_LOCK_TIMEOUTS] = h[HDR_RECOVERIES] = h[HDR_STEALS] = 0;
    h[HDR_LOCK_ACQUISITIONS] = 0;
    h[HDR_PEAK] = in_use > 0 ? (uint64_t)in_use : 0;
    for (int ch = 0; ch < MAX_CHANNELS; ch++) {
        uint64_t *cw = channel_words(c, ch); /* events only: length and waiting describe the channel now */
        if (channel_in_use(c, ch))
            cw[CH_PUTS] = cw[CH_GETS] = cw[CH_REQUEUED] = 0;
    }
    core_unlock(c);
    Py_RETURN_NONE;
}

/* clients() -> [(entry, pid, start_ticks, alive)] of every entry with a pid. */
static PyObject *clients_impl(Core *c)
{
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

static PyObject *slot_states_impl(Core *c)
{
    if (map_new_extents(c) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (int k = 0; k < c->n_ext; k++) {
        Extent *e = &c->ext[k];
        /* Words read before anything allocates (a collection can run Python code). */
        uint32_t fresh = LOAD(&ext_words(e)[EXT_FRESH]), at = LOAD(&ext_words(e)[EXT_HEAD]);
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


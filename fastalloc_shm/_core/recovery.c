/* recovery.c: judge every slot by its state, and rebuild from the verdicts.
 *
 * Nothing a dead process wrote half-way is trusted. Under the lock, with
 * every extent mapped (a partial view writes nothing: lock.c), each slot the
 * pool ever handed out is judged:
 *   being-written by a dead owner    -> freed (its handle never left that process)
 *   cached by a dead owner           -> freed (its magazine died with it)
 *   being set() when its setter died -> torn if the sequence is odd, else allocated
 *   allocated by a dead owner        -> kept (re-owned by ORPHAN_OWNER), or freed when `reclaim`
 *   queued on a channel              -> kept; linked at the tail if its list does not reach it
 *   taken from a channel by a dead consumer -> put back at the head of that channel
 *   metadata that makes no sense     -> freed, counted corrupt
 * then the free lists, the totals and the free-slot count are derived again.
 * A live process may release a slot into its magazine meanwhile (lock-free),
 * so each verdict is stored by compare-and-swap and judged again if the slot
 * moved. A repair touches only slots below each extent's fresh mark, so its
 * cost follows the slots ever handed out, not the capacity.
 */

static const char *tally_names[T_COUNT] = {"cached_returned", "half_written_freed", "torn_values", "orphans_kept",
                                           "orphans_reclaimed", "corrupt_slots", "requeued", "in_use"};

enum { SLOT_KEEP, SLOT_FREE, SLOT_TORN_NOW, SLOT_QUEUED, SLOT_REQUEUE };

/* What recovery makes of one slot's pair `cur`: the pair it should hold (*want), counted in `found`. */
static int judge_slot(Core *c, const uint32_t *m, uint64_t cur, int reclaim, signed char *alive, long *found, uint64_t *want)
{
    uint32_t g = (uint32_t)cur, word = (uint32_t)(cur >> 32);
    uint32_t st = state_of(word), owner = owner_of(word), seq = LOAD(&m[META_SEQ]);
    int verdict = SLOT_KEEP, bump = 1;
    *want = cur;
    if ((g & GENERATION_MASK) == 0 || (st > SETTING && st != QUEUED && !state_is_taken(st))
        || (st == QUEUED && (owner >= MAX_CHANNELS || !channel_in_use(c, (int)owner)))
        || (state_is_taken(st) && !channel_in_use(c, (int)(st - TAKEN)))) {
        found[T_CORRUPT]++;
        verdict = SLOT_FREE; /* its generation moves on from what it held: a handle to it goes stale */
    } else if (st == QUEUED) {
        found[T_IN_USE]++;
        verdict = SLOT_QUEUED;
    } else if (state_is_taken(st)) {
        found[T_IN_USE]++;
        if (!owner_alive(c, owner, alive)) {
            found[T_REQUEUED]++;
            verdict = SLOT_REQUEUE; /* at-least-once: back at the head of its channel */
            *want = pair(next_generation(g) | UNREADABLE, (QUEUED << STATE_SHIFT) | (st - TAKEN));
        }
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
            /* Torn if the setter died writing (odd sequence), or if it was repairing a
             * torn value (UNREADABLE kept through the claim) and never published. */
            if (seq & 1) {
                found[T_TORN]++;
                verdict = SLOT_TORN_NOW;
            }
            st = (seq & 1) || (g & UNREADABLE) ? TORN : ALLOCATED;
            g = st == TORN ? (g | UNREADABLE) : (g & GENERATION_MASK);
        } else if (st == TORN && !(g & UNREADABLE)) {
            st = ALLOCATED; /* set() repaired it, then died before saying so */
        }
        if (LOAD(&m[META_LEN]) > c->geo.slot_size) {
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
            owner = ORPHAN_OWNER; /* no slot names a dead incarnation after a repair (liveness.c) */
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

/* Rebuild every extent from slot states, every channel's list, and re-derive the
 * counters and the semaphore (lock held; no Python). 0 with `counts` added to; -1
 * with nothing written when not every extent can be mapped (f filled). */
static int rebuild_locked(Core *c, int reclaim, long *counts, Failure *f)
{
    if (map_extents_to(c, LOAD(&c->hdr[HDR_EXTENTS]), f) < 0)
        return -1;
    uint64_t pool_slots = c->ext[c->n_ext - 1].first + c->ext[c->n_ext - 1].cap;
    uint8_t *linked = calloc((size_t)(pool_slots / 8 + 1), 1); /* C memory: no Python under the lock */
    if (!linked)
        return fail(f, E_OS, "no memory for the repair's channel map");
    channels_relink(c, linked, pool_slots);
    signed char alive[MAX_CLIENTS];
    memset(alive, -1, sizeof alive);
    /* Fold the counters of entries whose process is gone into the header. */
    uint64_t live_delta = 0;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        uint64_t *cw = client_words(c, i);
        uint64_t a = LOAD(&cw[CLIENT_ALLOCATIONS]), d = LOAD(&cw[CLIENT_DEALLOCATIONS]);
        if (!a && !d)
            continue;
        if (entry_alive(c, i)) {
            live_delta += a - d;
            continue;
        }
        c->hdr[HDR_ALLOCATIONS] += a;
        c->hdr[HDR_DEALLOCATIONS] += d;
        STORE(&cw[CLIENT_ALLOCATIONS], 0);
        STORE(&cw[CLIENT_DEALLOCATIONS], 0);
    }
    long in_use = 0;
    uint64_t free_total = 0, capacity = 0;
    for (int k = 0; k < c->n_ext; k++) {
        Extent *e = &c->ext[k];
        uint32_t *w = ext_words(e);
        w[EXT_CAPACITY] = e->cap;
        w[EXT_POOL_ID_LOW] = (uint32_t)c->geo.pool_id;
        w[EXT_POOL_ID_HIGH] = (uint32_t)(c->geo.pool_id >> 32);
        w[EXT_MAGIC] = EXTENT_MAGIC;
        uint32_t fresh = w[EXT_FRESH];
        if (fresh > e->cap)
            fresh = e->cap;
        /* Slots past the fresh mark were never handed out: a process that died
         * before moving the mark may have marked the one at it (only that one:
         * a fresh slot is marked, then the mark moves). Clear it. */
        if (fresh < e->cap)
            STORE((uint64_t *)meta_of(e, fresh), 0);
        w[EXT_HEAD] = 0;
        for (uint32_t i = fresh; i-- > 0;) {
            uint32_t *m = meta_of(e, i);
            uint64_t cur = LOAD_ACQ((uint64_t *)m), want;
            long found[T_COUNT];
            int verdict;
            do {
                memset(found, 0, sizeof found);
                verdict = judge_slot(c, m, cur, reclaim, alive, found, &want);
            } while (want != cur && !CAS((uint64_t *)m, &cur, want));
            for (int t = 0; t < T_COUNT; t++)
                counts[t] += found[t];
            in_use += found[T_IN_USE];
            uint64_t index = e->first + i;
            if (verdict == SLOT_FREE) {
                push_slot(e, i); /* its sequence word becomes the link */
                free_total++;
            } else if (verdict == SLOT_TORN_NOW) {
                m[META_SEQ]++; /* even again: a reader sees the torn mark, not a write in progress */
            } else if (verdict == SLOT_QUEUED && !(linked[index >> 3] & (1u << (index & 7)))) {
                m[META_SEQ] = 0; /* queued, but its list did not reach it (a put or a get died) */
                channel_append(c, (int)owner_of((uint32_t)(want >> 32)), index);
            } else if (verdict == SLOT_REQUEUE) {
                channel_link_front(c, (int)owner_of((uint32_t)(want >> 32)), e, i);
                FAULT(F_CHANNEL_REQUEUED);
            }
            if (i == fresh / 2)
                FAULT(F_RECOVER_REBUILDING);
        }
        w[EXT_FRESH] = fresh;
        free_total += e->cap - fresh;
        capacity += e->cap;
    }
    free(linked);
    c->hdr[HDR_FREE_HINT] = 0;
    c->hdr[HDR_IN_USE] = (uint64_t)in_use - live_delta;
    c->hdr[HDR_CAPACITY] = capacity;
    tokens_derive(c, free_total);
    return 0;
}

/* The tally as the dict recover() reports (no lock held: it allocates). */
static PyObject *tally_dict(const long *counts)
{
    PyObject *tally = PyDict_New();
    for (int t = 0; tally && t < T_COUNT; t++) {
        PyObject *v = PyLong_FromLong(counts[t]);
        if (!v || PyDict_SetItemString(tally, tally_names[t], v) < 0)
            Py_CLEAR(tally);
        Py_XDECREF(v);
    }
    return tally;
}

static long repairs_in(const long *counts)
{
    return counts[T_CACHED] + counts[T_HALF] + counts[T_TORN] + counts[T_RECLAIMED] + counts[T_CORRUPT]
           + counts[T_REQUEUED];
}

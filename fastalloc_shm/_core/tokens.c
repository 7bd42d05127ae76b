/* tokens.c: the free-slot semaphore, the door in front of the free lists.
 *
 * The named POSIX semaphore counts free slots: an allocation takes a token
 * before it pops an index, a release posts one after it pushes, and a caller
 * with a timeout sleeps on it for a release. It is derived state: the free
 * lists under the mutex are the truth. An allocation that finds a slot
 * without a token, or a token without a slot, only heals the count, and
 * recovery re-derives it (tokens_derive). So a process killed between its
 * token and its pop costs nothing lasting.
 */

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

/* Wait one slice (at most WAIT_SLICE, never past `deadline`) for a token, the GIL
 * released. 1 got one, 0 not (the caller looks at the free lists again: the count
 * may be low after a crash), -1 a signal handler raised. */
static int token_wait_slice(Core *c, double deadline)
{
    if (token_try(c))
        return 1;
    double now = monotonic_now();
    if (now >= deadline)
        return 0;
    struct timespec ts = monotonic_at(now + WAIT_SLICE < deadline ? now + WAIT_SLICE : deadline);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sem_clockwait(c->sem, CLOCK_MONOTONIC, &ts);
    Py_END_ALLOW_THREADS
    if (rc == 0)
        return 1;
    return PyErr_CheckSignals() < 0 ? -1 : 0;
}

/* Move the count to `free_total` (lock held): by the difference, so allocators
 * taking tokens meanwhile leave it approximate, and it heals. */
static void tokens_derive(Core *c, uint64_t free_total)
{
    int tokens = 0;
    if (sem_getvalue(c->sem, &tokens) < 0)
        return;
    if ((uint64_t)tokens > free_total)
        tokens_take(c, (Py_ssize_t)((uint64_t)tokens - free_total));
    else
        tokens_post(c, (Py_ssize_t)(free_total - (uint64_t)tokens));
}

/* lock.c: the pool mutex, and its repair after a holder that died.
 *
 * Mutual exclusion is a process-shared robust pthread mutex in the header, as
 * LMDB does it (MDB_USE_ROBUST). When its holder dies the kernel marks it and
 * the next locker gets EOWNERDEAD. That locker sets HDR_REPAIR_PENDING, marks
 * the mutex consistent (checking the call's return), and repairs: rebuilds
 * the free lists and totals from slot states (recovery.c). The pending word
 * is cleared only by a repair that saw every extent; a locker that cannot
 * (EMFILE while mapping a newer extent, say) writes nothing and leaves the
 * word set, so the next locker repairs instead. No pid or clock guesses: a
 * live holder, however slow or stopped, is never robbed.
 *
 * Waits are bounded: a timed lock on CLOCK_MONOTONIC in slices of WAIT_SLICE,
 * the GIL released during each slice and signals checked between them, so
 * Ctrl-C and signal handlers run while nothing is held. A wait that runs out
 * raises LockTimeout naming the holder: the pid it recorded beside the mutex
 * or, caught inside glibc's lock or unlock where that word is 0, the thread id
 * the robust futex word holds (kernel ABI).
 *
 * Every critical section runs in C holding the GIL and calls no Python code
 * (core.h, discipline d).
 */

#define WAIT_SLICE 0.05
#define FUTEX_TID_MASK 0x3fffffff

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

/* What a locker records in HDR_LOCK_HOLDER: its pid (for messages) and, above it, its owner
 * id + 1 (for the repair after its death; 0 when it has no client entry). */
static inline uint64_t holder_word(const Core *c)
{
    return (uint64_t)(uint32_t)c->pid | (c->entry >= 0 ? (uint64_t)(c->owner + 1) << 32 : 0);
}

/* Who holds the lock, for a message: the recorded pid, else the futex word's thread id. */
static unsigned long long lock_holder(const Core *c)
{
    uint64_t pid = (uint32_t)LOAD(&c->hdr[HDR_LOCK_HOLDER]);
    if (pid)
        return pid;
    return (unsigned long long)((unsigned int)LOAD(&c->mutex->__data.__lock) & FUTEX_TID_MASK);
}

/* The mutex is ours (rc 0 or EOWNERDEAD): make it consistent and repair if one
 * is owed. 0 held; -1 failure in f, nothing held. */
static int lock_taken(Core *c, int rc, int reclaim, LockInfo *info, Failure *f)
{
    if (rc == EOWNERDEAD) {
        info->dead_holder = 1;
        info->dead_owner = LOAD(&c->hdr[HDR_LOCK_HOLDER]) >> 32;
        STORE(&c->hdr[HDR_DEAD_OWNER], info->dead_owner);
        STORE(&c->hdr[HDR_REPAIR_PENDING], 1); /* before anything else: a repairer that dies leaves it */
        int consistent = pthread_mutex_consistent(c->mutex);
        if (consistent != 0) {
            pthread_mutex_unlock(c->mutex);
            errno = consistent;
            return fail(f, E_OS, "cannot mark the pool lock consistent after its holder died");
        }
    }
    c->hdr[HDR_LOCK_HOLDER] = holder_word(c);
    c->hdr[HDR_LOCK_ACQUISITIONS]++;
    if (LOAD(&c->hdr[HDR_REPAIR_PENDING])) {
        memset(info->counts, 0, sizeof info->counts);
        if (rebuild_locked(c, reclaim, info->counts, f) < 0) {
            core_unlock(c); /* the word stays set: the next locker repairs */
            return -1;
        }
        c->hdr[HDR_RECOVERIES]++;
        STORE(&c->hdr[HDR_DEAD_OWNER], 0);
        STORE(&c->hdr[HDR_REPAIR_PENDING], 0);
        info->repaired = 1;
    }
    FAULT(F_LOCK_ACQUIRED);
    return 0;
}


/* The rest of an acquisition whose first trylock returned `rc`. */
static int lock_after_trylock(Core *c, int rc, double timeout, int reclaim, LockInfo *info)
{
    info->repaired = info->dead_holder = 0;
    info->dead_owner = 0;
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
                RAISE(c, E_LOCK_TIMEOUT, "Kd)", lock_holder(c), timeout);
                return -1;
            }
            double until = now + WAIT_SLICE < deadline ? now + WAIT_SLICE : deadline;
            struct timespec ts = monotonic_at(until);
            if (rc == EDEADLK) {
                /* The holder's thread id equals ours in another PID namespace (never
                 * this thread: no Python code runs under the lock, so nothing re-enters
                 * it): glibc refuses to wait on "ourselves", so poll. */
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
            if ((rc == EBUSY || rc == EDEADLK || rc == ETIMEDOUT) && PyErr_CheckSignals() < 0)
                return -1;
        }
        if (rc == 0 || rc == EOWNERDEAD)
            c->hdr[HDR_LOCK_WAIT_NS] += (uint64_t)((monotonic_now() - started) * 1e9);
    }
    if (rc != 0 && rc != EOWNERDEAD) {
        raise_os_errno(c, rc == ENOTRECOVERABLE ? "the pool lock is unrecoverable; unlink the pool and create it again"
                                                : "cannot take the pool lock", rc);
        return -1;
    }
    Failure f = {0};
    if (lock_taken(c, rc, reclaim, info, &f) < 0) {
        raise_failure(c, &f);
        return -1;
    }
    return 0;
}

/* Take the pool mutex within `timeout` s, repairing with `reclaim` if a repair
 * is owed. 0 held; -1 exception set (nothing held). */
static int core_lock_for(Core *c, double timeout, int reclaim, LockInfo *info)
{
    return lock_after_trylock(c, pthread_mutex_trylock(c->mutex), timeout, reclaim, info);
}

/* The hot path's acquisition: free, and no repair owed, inline. */
static inline int core_lock(Core *c)
{
    int rc = pthread_mutex_trylock(c->mutex);
    if (__builtin_expect(rc == 0 && !LOAD(&c->hdr[HDR_REPAIR_PENDING]), 1)) {
        c->hdr[HDR_LOCK_HOLDER] = holder_word(c);
        c->hdr[HDR_LOCK_ACQUISITIONS]++;
        FAULT(F_LOCK_ACQUIRED);
        return 0;
    }
    LockInfo info;
    return lock_after_trylock(c, rc, c->lock_timeout, c->reclaim, &info);
}

/* The lock if it is free now: 1 held, 0 not (busy, or a failure: nothing raised). */
static int core_trylock(Core *c)
{
    int rc = pthread_mutex_trylock(c->mutex);
    if (rc != 0 && rc != EOWNERDEAD)
        return 0;
    LockInfo info;
    info.repaired = info.dead_holder = 0;
    info.dead_owner = 0;
    Failure f = {0};
    return lock_taken(c, rc, c->reclaim, &info, &f) == 0;
}

static void core_unlock(Core *c)
{
    c->hdr[HDR_LOCK_HOLDER] = 0;
    pthread_mutex_unlock(c->mutex);
    FAULT(F_LOCK_RELEASED);
}

/* Called by the creator before the ready flag: a robust, process-shared mutex. */
static int mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (!rc)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc)
        rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

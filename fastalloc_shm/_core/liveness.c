/* liveness.c: which processes are attached, and which of them are dead.
 *
 * Each attached process owns one entry of the client table and holds an OFD
 * write lock on byte <entry> of the main segment for as long as it is
 * attached. The kernel drops the lock when the process dies, whatever its
 * PID namespace: that is the only death signal the core trusts (pids and
 * start times are shown, never trusted). Taking the byte's lock is the claim,
 * so attaching never waits on the pool mutex.
 *
 * A slot names its owner as (entry, incarnation): every claim of an entry
 * bumps its incarnation, so the slots of an earlier holder of the same entry
 * are told apart from the new holder's. The incarnation has INCARNATION_BITS
 * bits; before it wraps, the claimer repairs the pool under the lock, which
 * frees or re-owns (ORPHAN_OWNER) every slot a dead incarnation still names,
 * so a value it had once cannot be mistaken for a live owner's.
 *
 * An entry's counters are never reset here: statistics sum every entry, so
 * what a previous holder counted stays counted.
 */

static inline uint64_t *client_words(const Core *c, int entry)
{
    return (uint64_t *)(c->main + CLIENT_TABLE_OFFSET + (size_t)entry * CLIENT_BYTES);
}
static inline uint32_t client_pid(const Core *c, int entry) { return LOAD((uint32_t *)client_words(c, entry)); }
static inline uint32_t client_incarnation(const Core *c, int entry) { return LOAD((uint32_t *)client_words(c, entry) + 1); }

static int entry_lock(int fd, int entry, short type, int cmd)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = entry, .l_len = 1, .l_pid = 0};
    return fcntl(fd, cmd, &fl);
}

static int entry_alive(const Core *c, int entry)
{
    if (entry == c->entry)
        return 1;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = entry, .l_len = 1, .l_pid = 0};
    if (fcntl(c->live_fd, F_OFD_GETLK, &fl) < 0)
        return 1; /* cannot tell: never declare a process dead on a guess */
    return fl.l_type != F_UNLCK;
}

/* Is the owner recorded in a slot alive? Its entry must still carry the same
 * incarnation, and be locked. `cache` holds one verdict per entry (-1 unknown). */
static int owner_alive(const Core *c, uint32_t owner, signed char *cache)
{
    int entry = (int)(owner >> INCARNATION_BITS);
    if (entry >= MAX_CLIENTS)
        return 0;
    /* The lock holder whose death this repair follows: dead, whatever its liveness lock says yet. */
    if ((uint64_t)owner + 1 == LOAD(&c->hdr[HDR_DEAD_OWNER]))
        return 0;
    if ((client_incarnation(c, entry) & INCARNATION_MASK) != (owner & INCARNATION_MASK))
        return 0;
    if (cache[entry] < 0)
        cache[entry] = (signed char)entry_alive(c, entry);
    return cache[entry];
}

/* Entry claimed, incarnation about to wrap: repair first, so no slot names an
 * incarnation of a dead holder of this entry (c->entry is not ours yet, so the
 * repair judges every earlier holder of it dead, as it is). */
static int retire_incarnations(Core *c)
{
    LockInfo info;
    if (core_lock_for(c, c->lock_timeout, c->reclaim, &info) < 0)
        return -1;
    long counts[T_COUNT] = {0};
    Failure f = {0};
    int rc = info.repaired ? 0 : rebuild_locked(c, c->reclaim, counts, &f);
    core_unlock(c);
    if (rc < 0)
        raise_failure(c, &f);
    return rc;
}

static int register_client(Core *c, const char *liveness_path, uint64_t start_ticks)
{
    if (c->live_fd >= 0)
        close(c->live_fd);
    c->live_fd = open(liveness_path, O_RDWR | O_CLOEXEC);
    if (c->live_fd < 0) {
        raise_os(c, "cannot open the pool segment for the liveness lock");
        return -1;
    }
    c->pid = getpid();
    for (int i = 0; i < MAX_CLIENTS; i++) {
        if (entry_lock(c->live_fd, i, F_WRLCK, F_OFD_SETLK) == 0) {
            uint64_t *cw = client_words(c, i);
            uint32_t *halves = (uint32_t *)cw;
            uint32_t inc = (LOAD(&halves[1]) + 1) & INCARNATION_MASK;
            if (inc == 0) {
                if (retire_incarnations(c) < 0) {
                    entry_lock(c->live_fd, i, F_UNLCK, F_OFD_SETLK);
                    return -1;
                }
                inc = 1;
            }
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

/* Leave the client table: the magazine goes back first (if the lock can be had). */
static void unregister_client(Core *c)
{
    if (c->entry < 0)
        return;
    if (c->mag_len && drain(c, c->mag_len) < 0)
        PyErr_Clear(); /* lock stuck: the slots stay cached by us, and recovery returns them once we are gone */
    STORE((uint32_t *)c->my_entry, 0u);
    entry_lock(c->live_fd, c->entry, F_UNLCK, F_OFD_SETLK);
    c->entry = -1;
}

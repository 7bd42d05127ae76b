/* fault.c: fault points, for the crash tests.
 *
 * FASTALLOC_FAULT=<point>:<action>[:<n>] makes the n-th arrival at <point>
 * append "<pid> <point> <n>" to $FASTALLOC_FAULT_FILE (flushed: a watcher
 * always knows where the process stopped) and then act: kill (SIGKILL), stop
 * (SIGSTOP) or pause (sleep until killed). The variable is read once, at
 * import; an unknown point or action is a ValueError then, never silence.
 * This table is every point there is, the few Python code reaches
 * (grow.created) included: _core.FAULT_POINTS exports it, and the crash
 * matrix checks that each point has a case. A point costs one compare of a
 * static int when no fault is set.
 */

#define FAULT_POINTS(X) \
    X(F_LOCK_ACQUIRED, "lock.acquired") X(F_LOCK_RELEASED, "lock.released") \
    X(F_ALLOC_TOKEN, "alloc.token") X(F_ALLOC_MARKED, "alloc.marked") X(F_ALLOC_POPPED, "alloc.popped") \
    X(F_ALLOC_WRITING, "alloc.writing") X(F_RELEASE_FREED, "release.freed") X(F_RELEASE_PUSHED, "release.pushed") \
    X(F_SET_CLAIMED, "set.claimed") X(F_SET_WRITING, "set.writing") X(F_BATCH_TAKING, "batch.taking") \
    X(F_BATCH_RELEASING, "batch.releasing") X(F_MAGAZINE_RELEASE, "magazine.release") \
    X(F_MAGAZINE_CLAIMED, "magazine.claimed") X(F_STEAL_CLAIMED, "steal.claimed") \
    X(F_CHANNEL_QUEUED, "channel.queued") X(F_CHANNEL_POPPED, "channel.popped") \
    X(F_CHANNEL_REQUEUED, "channel.requeued") \
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

/* 0, or -1 with ValueError set. */
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

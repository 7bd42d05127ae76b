/* errors.h: the core's error codes, once. The core raises by calling the
 * pool's `errors(code, *args)` (fastalloc_shm/_messages.py), which turns a code
 * into the user's exception; module.c exports this table as _core.ERRORS, and
 * Python reads every code from there. The comment names each code's arguments. */
#ifndef FASTALLOC_ERRORS_H
#define FASTALLOC_ERRORS_H

#define ERROR_CODES(X) \
    X(E_CLOSED, 1, "CLOSED")            /* () */ \
    X(E_INVALID, 2, "INVALID")          /* (handle) not a handle of this pool */ \
    X(E_STALE, 3, "STALE")              /* (handle) released */ \
    X(E_TORN, 4, "TORN")                /* (handle, owner pid) */ \
    X(E_EXHAUSTED, 5, "EXHAUSTED")      /* (wanted) */ \
    X(E_TOO_LARGE, 6, "TOO_LARGE")      /* (size) */ \
    X(E_PACK, 7, "PACK")                /* (value, exception) */ \
    X(E_UNPACK, 8, "UNPACK")            /* (handle, exception) */ \
    X(E_LOCK_TIMEOUT, 9, "LOCK_TIMEOUT") /* (holder pid or thread id, seconds) */ \
    X(E_DAMAGED, 10, "DAMAGED")         /* (message) */ \
    X(E_BUSY_READ, 11, "BUSY_READ")     /* (handle) */ \
    X(E_OS, 12, "OS")                   /* (message) */ \
    X(E_DUPLICATE, 13, "DUPLICATE")     /* (handle) twice in one batch */ \
    X(E_UNTRUSTED, 14, "UNTRUSTED")     /* (extent number, path, owner uid) */ \
    X(E_CHANNEL_EMPTY, 15, "CHANNEL_EMPTY") /* (channel name, seconds waited) */ \
    X(E_CHANNEL_LIMIT, 16, "CHANNEL_LIMIT") /* (message) */

#define X_ENUM(id, value, name) id = value,
enum { ERROR_CODES(X_ENUM) };
#undef X_ENUM

#endif

/* errors.c: a failure found in C becomes the user's exception.
 *
 * The core knows what went wrong; the pool's `errors(code, *args)` callable
 * (Python, fastalloc_shm/_messages.py) knows how to say it. Calling it runs
 * Python code, so it is never called with the mutex held (discipline d):
 * code under the lock fills a Failure, and its caller raises it after
 * unlocking, through raise_failure.
 */

static PyObject *raise_code(Core *c, int code, PyObject *args_tuple)
{
    if (!args_tuple)
        return NULL;
    if (!c->errors) {
        Py_DECREF(args_tuple);
        PyErr_SetString(PyExc_RuntimeError, "this Core was never initialized");
        return NULL;
    }
    PyObject *code_obj = PyLong_FromLong(code);
    PyObject *full = NULL, *exc = NULL;
    if (code_obj) {
        Py_ssize_t n = PyTuple_GET_SIZE(args_tuple);
        full = PyTuple_New(n + 1);
        if (full) {
            PyTuple_SET_ITEM(full, 0, code_obj);
            code_obj = NULL;
            for (Py_ssize_t i = 0; i < n; i++)
                PyTuple_SET_ITEM(full, i + 1, Py_NewRef(PyTuple_GET_ITEM(args_tuple, i)));
            /* Our own reference: the callable may drop the Core's (close, tp_clear) meanwhile. */
            PyObject *errors = Py_NewRef(c->errors);
            exc = PyObject_Call(errors, full, NULL);
            Py_DECREF(errors);
        }
    }
    Py_XDECREF(code_obj);
    Py_XDECREF(full);
    Py_DECREF(args_tuple);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *raise_damaged(Core *c, const char *what)
{
    return raise_code(c, E_DAMAGED, Py_BuildValue("(s)", what));
}

static PyObject *raise_os_errno(Core *c, const char *what, int sys_errno)
{
    char text[256];
    snprintf(text, sizeof text, "%s: %s", what, strerror(sys_errno));
    return raise_code(c, E_OS, Py_BuildValue("(s)", text));
}

static PyObject *raise_os(Core *c, const char *what) { return raise_os_errno(c, what, errno); }

/* Fill a Failure (the lock may be held: no Python here). Returns -1 for `return fail(...)`. */
static int fail(Failure *f, int code, const char *what)
{
    f->code = code;
    f->what = what;
    f->sys_errno = errno;
    return -1;
}

static PyObject *raise_failure(Core *c, const Failure *f)
{
    switch (f->code) {
    case E_OS:
        return raise_os_errno(c, f->what, f->sys_errno);
    case E_UNTRUSTED: {
        char path[600];
        snprintf(path, sizeof path, "/dev/shm%s%ld", c->extent_prefix, f->number);
        return RAISE(c, E_UNTRUSTED, "lsI)", f->number, path, f->uid);
    }
    case 0:
        PyErr_SetString(PyExc_SystemError, "fastalloc_shm: a failure without a code");
        return NULL;
    default: /* E_DAMAGED, E_CHANNEL_LIMIT: (message) */
        return raise_code(c, f->code, Py_BuildValue("(s)", f->what));
    }
}

/* The pending exception, taken (a new reference), or NULL when it is not one
 * to wrap: msgpack raises TypeError, ValueError or OverflowError for a value
 * it cannot pack or bytes it cannot unpack; anything else (a signal
 * handler's exception, MemoryError) goes on as it is. */
static PyObject *fetch_exception(void)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)
        && !PyErr_ExceptionMatches(PyExc_OverflowError))
        return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

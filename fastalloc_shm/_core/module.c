/* module.c: the module _core: multi-phase init, its functions, its tables.
 *
 * Exports the Core type, the byte layout (LAYOUT, from layout.h), the error
 * codes (ERRORS, from errors.h) and the fault points (FAULT_POINTS, from
 * fault.c): Python reads each from here and restates none. The module needs
 * the GIL (Py_mod_gil): a Core's state (its magazine, its operation count)
 * is guarded by it, and the shared-memory protocol is written for one
 * Python thread in the core at a time per process.
 */

typedef struct {
    PyTypeObject *core_type;
    PyTypeObject *slot_export_type;
} ModuleState;

static struct PyModuleDef core_module;

static PyTypeObject *slot_export_type(Core *c)
{
    PyObject *mod = PyType_GetModuleByDef(Py_TYPE(c), &core_module);
    return mod ? ((ModuleState *)PyModule_GetState(mod))->slot_export_type : NULL;
}

/* A writable buffer of at least `need` bytes; -1 with ValueError when smaller. */
static int writable_buffer(PyObject *obj, Py_buffer *v, size_t need, const char *what)
{
    if (PyObject_GetBuffer(obj, v, PyBUF_WRITABLE) < 0)
        return -1;
    if ((size_t)v->len < need) {
        PyBuffer_Release(v);
        PyErr_Format(PyExc_ValueError, "buffer too small for %s", what);
        return -1;
    }
    return 0;
}

static PyObject *py_init_mutex(PyObject *mod, PyObject *buffer)
{
    Py_buffer v;
    if (writable_buffer(buffer, &v, MUTEX_OFFSET + sizeof(pthread_mutex_t), "the pool header") < 0)
        return NULL;
    int rc = mutex_init((pthread_mutex_t *)((uint8_t *)v.buf + MUTEX_OFFSET));
    PyBuffer_Release(&v);
    if (rc) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *py_extent_size(PyObject *mod, PyObject *args)
{
    unsigned int cap, stride, alignment;
    if (!PyArg_ParseTuple(args, "III", &cap, &stride, &alignment))
        return NULL;
    size_t n = extent_bytes(cap, stride, alignment);
    if (!n)
        return PyErr_Format(PyExc_ValueError, "an extent of %u slots of %u bytes does not fit in memory", cap, stride);
    return PyLong_FromSize_t(n);
}

static PyObject *py_data_offset(PyObject *mod, PyObject *args)
{
    unsigned int cap, alignment;
    if (!PyArg_ParseTuple(args, "II", &cap, &alignment))
        return NULL;
    size_t n = extent_data_offset(cap, alignment);
    if (!n)
        return PyErr_Format(PyExc_ValueError, "the metadata of %u slots does not fit in memory", cap);
    return PyLong_FromSize_t(n);
}

static PyObject *py_init_extent(PyObject *mod, PyObject *args)
{
    PyObject *buffer;
    unsigned int cap;
    unsigned long long pool_id;
    if (!PyArg_ParseTuple(args, "OIK", &buffer, &cap, &pool_id))
        return NULL;
    Py_buffer v;
    if (writable_buffer(buffer, &v, EXT_HEADER_BYTES, "an extent") < 0)
        return NULL;
    extent_stamp(v.buf, cap, pool_id);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyObject *py_lock_byte(PyObject *mod, PyObject *args)
{
    int fd, byte;
    if (!PyArg_ParseTuple(args, "ii", &fd, &byte))
        return NULL;
    if (entry_lock(fd, byte, F_WRLCK, F_OFD_SETLK) == 0)
        Py_RETURN_TRUE;
    if (errno == EAGAIN || errno == EACCES)
        Py_RETURN_FALSE;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *py_byte_locked(PyObject *mod, PyObject *args)
{
    int fd, byte;
    if (!PyArg_ParseTuple(args, "ii", &fd, &byte))
        return NULL;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1, .l_pid = 0};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(fl.l_type != F_UNLCK);
}

static PyObject *py_fault_active(PyObject *mod, PyObject *unused) { return PyBool_FromLong(fault_point != F_NONE); }

static PyObject *py_fault(PyObject *mod, PyObject *name)
{
    const char *text = PyUnicode_AsUTF8(name);
    if (!text)
        return NULL;
    for (int p = 1; p < F_COUNT; p++)
        if (!strcmp(text, fault_names[p])) {
            FAULT(p);
            Py_RETURN_NONE;
        }
    return PyErr_Format(PyExc_ValueError, "%R is not a fault point", name);
}

static PyObject *py_is_plain(PyObject *mod, PyObject *value)
{
    (void)mod;
    return PyBool_FromLong(is_plain(value, PLAIN_DEPTH));
}

static PyMethodDef module_methods[] = {
    {"is_plain", py_is_plain, METH_O,
     "is_plain(value, /)\n--\n\nIs the value plain (exact None, bool, int, float, str, bytes, lists and dicts of them)? "
     "The fast codec takes those (codec.c)."},
    {"init_mutex", py_init_mutex, METH_O,
     "init_mutex(buffer, /)\n--\n\nInitialize the robust, process-shared mutex in a new header."},
    {"extent_size", py_extent_size, METH_VARARGS,
     "extent_size(capacity, stride, alignment, /)\n--\n\nBytes of an extent (page-rounded); ValueError if it overflows."},
    {"data_offset", py_data_offset, METH_VARARGS,
     "data_offset(capacity, alignment, /)\n--\n\nOffset of slot 0's bytes in an extent."},
    {"init_extent", py_init_extent, METH_VARARGS,
     "init_extent(buffer, capacity, pool_id, /)\n--\n\nWrite a new extent's header."},
    {"lock_byte", py_lock_byte, METH_VARARGS,
     "lock_byte(fd, byte, /)\n--\n\nOFD-lock one byte of a file, held until the file description closes."},
    {"byte_locked", py_byte_locked, METH_VARARGS,
     "byte_locked(fd, byte, /)\n--\n\nDoes another open file description hold a lock on the byte?"},
    {"fault_active", py_fault_active, METH_NOARGS,
     "fault_active()\n--\n\nTrue when FASTALLOC_FAULT names a fault point."},
    {"fault", py_fault, METH_O, "fault(point, /)\n--\n\nReach a fault point from Python code (grow.created)."},
    {NULL, NULL, 0, NULL},
};

static int add_int(PyObject *dict, const char *name, unsigned long long value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    int rc = v ? PyDict_SetItemString(dict, name, v) : -1;
    Py_XDECREF(v);
    return rc;
}

/* PyModule_Add (3.13) for 3.11: adds `obj`, stealing the reference, NULL included. */
static int module_add(PyObject *m, const char *name, PyObject *obj)
{
    if (!obj)
        return -1;
    int rc = PyModule_AddObjectRef(m, name, obj);
    Py_DECREF(obj);
    return rc;
}

/* The names Python reads from the core (_layout.py, _messages.py): one table each, so a name
 * is exported by one line of its X-macro and one loop adds them all. */
typedef struct {
    const char *name;
    unsigned long long value;
} Exported;

static const Exported layout_exports[] = {
#define X_EXPORT(name, value) {#name, (unsigned long long)(value)},
    LAYOUT_ITEMS(X_EXPORT)
#undef X_EXPORT
    {"MAGIC", MAGIC},
    {"MUTEX_SIZE", sizeof(pthread_mutex_t)},
};

static const Exported error_exports[] = {
#define X_CODE(id, value, name) {name, (unsigned long long)(value)},
    ERROR_CODES(X_CODE)
#undef X_CODE
};

/* A new dict of `items`, added to the module as `name`. */
static int add_table(PyObject *m, const char *name, const Exported *items, size_t n)
{
    PyObject *dict = PyDict_New();
    if (module_add(m, name, Py_XNewRef(dict)) < 0) {
        Py_XDECREF(dict);
        return -1;
    }
    Py_DECREF(dict); /* the module holds it */
    for (size_t i = 0; i < n; i++)
        if (add_int(dict, items[i].name, items[i].value) < 0)
            return -1;
    return 0;
}

static int add_tables(PyObject *m)
{
    if (add_table(m, "LAYOUT", layout_exports, sizeof layout_exports / sizeof *layout_exports) < 0 ||
        add_table(m, "ERRORS", error_exports, sizeof error_exports / sizeof *error_exports) < 0)
        return -1;
    PyObject *points = PyTuple_New(F_COUNT - 1);
    if (!points)
        return -1;
    for (int p = 1; p < F_COUNT; p++) {
        PyObject *text = PyUnicode_FromString(fault_names[p]);
        if (!text) {
            Py_DECREF(points);
            return -1;
        }
        PyTuple_SET_ITEM(points, p - 1, text);
    }
    return module_add(m, "FAULT_POINTS", points);
}

static int module_exec(PyObject *m)
{
    if (fault_parse() < 0)
        return -1;
    ModuleState *state = PyModule_GetState(m);
    state->core_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Core_spec, NULL);
    if (!state->core_type || PyModule_AddObjectRef(m, "Core", (PyObject *)state->core_type) < 0)
        return -1;
    state->slot_export_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &SlotExport_spec, NULL);
    if (!state->slot_export_type || PyModule_AddObjectRef(m, "SlotExport", (PyObject *)state->slot_export_type) < 0)
        return -1;
    return add_tables(m);
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    ModuleState *state = PyModule_GetState(m);
    Py_VISIT(state->core_type);
    Py_VISIT(state->slot_export_type);
    return 0;
}

static int module_clear(PyObject *m)
{
    ModuleState *state = PyModule_GetState(m);
    Py_CLEAR(state->core_type);
    Py_CLEAR(state->slot_export_type);
    return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_mod_multiple_interpreters
    /* Fault points are process-wide statics. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_core",
    .m_doc = "The compiled core of fastalloc-shm: every step of every pool operation, once.",
    .m_size = sizeof(ModuleState),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }

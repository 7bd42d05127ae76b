/* type.c: the Core, a heap type with GC support: its lifetime, the operations
 * in flight, and the buffer views it exports.
 *
 * One Core per pool per process. It maps what the pool owns (the main
 * segment through the mmap Python gives it, growth extents by itself), holds
 * the free-slot semaphore and this process's client entry, and holds the
 * Python callables the pool's policy lives in (errors, pack, unpack, grow),
 * which it traverses and clears like any container.
 *
 * Invariants:
 * - A Core is closed until __init__ succeeds, and __init__ runs once.
 * - Every method that touches a mapping enters through op_enter and leaves
 *   through op_leave (GUARDED below): c->ops counts the operations in
 *   flight in this process. close() waits, the GIL released, up to
 *   lock_timeout for them to leave (new ones are refused meanwhile) or
 *   raises; called from inside an operation of its own thread (a signal
 *   handler, a packing hook) it raises at once, as waiting would never end.
 *   So nothing is unmapped under an operation.
 * - A memoryview from buffer(h) is an export counted per slot: release(h)
 *   of an exported slot and close() with any export raise BufferError, as
 *   mmap does, so a view never outlives its slot's value or its mapping.
 */

/* Operations of any Core inside the current thread: close() cannot wait for its own thread. */
static _Thread_local int ops_here __attribute__((tls_model("initial-exec")));

static inline int op_enter(Core *c)
{
    if (c->closed || c->closing) {
        RAISE(c, E_CLOSED, ")");
        return -1;
    }
    c->ops++;
    ops_here++;
    return 0;
}

static inline void op_leave(Core *c)
{
    if (c->ops > 0) /* a forked child starts at zero while its one thread may be inside */
        c->ops--;
    ops_here--;
}

#define GUARDED(call)              \
    do {                           \
        if (op_enter(c) < 0)       \
            return NULL;           \
        PyObject *result_ = (call); \
        op_leave(c);               \
        return result_;            \
    } while (0)

/* ---- exports ---- */

typedef struct {
    PyObject_HEAD
    Core *core;       /* strong */
    PyObject *index;  /* pool-wide index, the key in core->exported */
    Extent *e;
    uint32_t local;
} SlotExport;

/* BufferError if a memoryview of slot `index` is exported here: -1 raised, 0 not. */
static int exported_slot(Core *c, uint64_t index)
{
    if (!c->exports)
        return 0;
    PyObject *key = PyLong_FromUnsignedLongLong(index);
    if (!key)
        return -1;
    PyObject *n = PyDict_GetItemWithError(c->exported, key);
    Py_DECREF(key);
    if (n) {
        PyErr_Format(PyExc_BufferError, "slot %llu has %zd memoryview(s) from buffer() exported; release them first",
                     (unsigned long long)index, PyLong_AsSsize_t(n));
        return -1;
    }
    return PyErr_Occurred() ? -1 : 0;
}

static int export_count(Core *c, PyObject *index, Py_ssize_t delta)
{
    PyObject *n = PyDict_GetItemWithError(c->exported, index);
    if (!n && PyErr_Occurred())
        return -1;
    Py_ssize_t now = (n ? PyLong_AsSsize_t(n) : 0) + delta;
    if (now <= 0)
        return n ? PyDict_DelItem(c->exported, index) : 0;
    PyObject *v = PyLong_FromSsize_t(now);
    int rc = v ? PyDict_SetItem(c->exported, index, v) : -1;
    Py_XDECREF(v);
    return rc;
}

static int SlotExport_getbuffer(SlotExport *s, Py_buffer *view, int flags)
{
    Core *c = s->core;
    if (c->closed) {
        PyErr_SetString(PyExc_BufferError, "the pool is closed in this process");
        return -1;
    }
    if (export_count(c, s->index, 1) < 0)
        return -1;
    if (PyBuffer_FillInfo(view, (PyObject *)s, slot_of(c, s->e, s->local), c->geo.slot_size, 0, flags) < 0) {
        export_count(c, s->index, -1);
        return -1;
    }
    c->exports++;
    return 0;
}

static void SlotExport_releasebuffer(SlotExport *s, Py_buffer *view)
{
    Core *c = s->core;
    c->exports--;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (export_count(c, s->index, -1) < 0)
        PyErr_WriteUnraisable((PyObject *)s);
    PyErr_Restore(type, value, tb);
}

static int SlotExport_traverse(SlotExport *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->core);
    return 0;
}

static void SlotExport_dealloc(SlotExport *s)
{
    PyTypeObject *type = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    Py_XDECREF(s->core);
    Py_XDECREF(s->index);
    type->tp_free((PyObject *)s);
    Py_DECREF(type);
}

static PyType_Slot SlotExport_slots[] = {
    {Py_bf_getbuffer, SlotExport_getbuffer},
    {Py_bf_releasebuffer, SlotExport_releasebuffer},
    {Py_tp_traverse, SlotExport_traverse},
    {Py_tp_dealloc, SlotExport_dealloc},
    {Py_tp_doc, "The bytes of one slot, exported to a memoryview by Core.buffer()."},
    {0, NULL},
};

static PyType_Spec SlotExport_spec = {
    .name = "fastalloc_shm._core.SlotExport",
    .basicsize = sizeof(SlotExport),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = SlotExport_slots,
};

static PyTypeObject *slot_export_type(Core *c);

static PyObject *buffer_impl(Core *c, PyObject *h)
{
    uint32_t gen, local;
    Extent *e = slot_of_handle(c, h, &gen, &local);
    if (!e)
        return NULL;
    const uint32_t *m = meta_of(e, local);
    if (LOAD_ACQ(&m[META_GEN]) != gen)
        return raise_not_live(c, h, m, gen);
    PyTypeObject *type = slot_export_type(c);
    if (!type)
        return NULL;
    SlotExport *s = PyObject_GC_New(SlotExport, type);
    if (!s)
        return NULL;
    s->core = (Core *)Py_NewRef(c);
    s->index = PyLong_FromUnsignedLongLong(e->first + local);
    s->e = e;
    s->local = local;
    PyObject_GC_Track(s);
    PyObject *view = s->index ? PyMemoryView_FromObject((PyObject *)s) : NULL;
    Py_DECREF(s);
    return view;
}

/* ---- lifetime ---- */

static void release_resources(Core *c)
{
    unmap_extents(c);
    if (c->sem) {
        sem_close(c->sem);
        c->sem = NULL;
    }
    if (c->live_fd >= 0) {
        close(c->live_fd);
        c->live_fd = -1;
    }
    if (c->have_view) {
        PyBuffer_Release(&c->view);
        c->have_view = 0;
    }
    c->main = NULL;
    c->hdr = NULL;
    c->mutex = NULL;
    c->closed = 1;
}

/* A Core is closed until __init__ succeeds: no method touches a mapping it does not have. */
static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Core *c = (Core *)type->tp_alloc(type, 0);
    if (c) {
        c->closed = 1;
        c->live_fd = -1;
        c->entry = -1;
    }
    return (PyObject *)c;
}

static int Core_init(Core *c, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buffer", "sem_name", "segment_path", "extent_prefix", "main_uid", "kind", "lock_timeout",
                            "batch", "errors", "pack", "unpack", "grow", "start_ticks", "creating", "trusted", "reclaim",
                            "pack_plain", "unpack_plain", NULL};
    PyObject *buffer, *errors, *pack, *unpack, *grow, *trusted, *pack_plain = Py_None, *unpack_plain = Py_None;
    const char *sem_name, *segment_path, *extent_prefix;
    unsigned int main_uid, batch;
    int kind, creating, reclaim = 0;
    double lock_timeout;
    unsigned long long start_ticks;
    if (c->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "a Core is initialized once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsssIidIOOOOKpO|pOO", names, &buffer, &sem_name, &segment_path, &extent_prefix,
                                     &main_uid, &kind, &lock_timeout, &batch, &errors, &pack, &unpack, &grow, &start_ticks,
                                     &creating, &trusted, &reclaim, &pack_plain, &unpack_plain))
        return -1;
    c->initialized = 1;
    PyObject *uids = PySequence_Tuple(trusted);
    if (!uids)
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(uids) && c->n_trusted < 64; i++) {
        unsigned long uid = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(uids, i));
        if (PyErr_Occurred()) {
            Py_DECREF(uids);
            return -1;
        }
        c->trusted[c->n_trusted++] = (uid_t)uid;
    }
    Py_DECREF(uids);
    c->errors = Py_NewRef(errors);
    c->pack = Py_NewRef(pack);
    c->unpack = Py_NewRef(unpack);
    c->pack_plain = pack_plain == Py_None ? NULL : Py_NewRef(pack_plain);
    c->unpack_plain = unpack_plain == Py_None ? NULL : Py_NewRef(unpack_plain);
    c->grow = Py_NewRef(grow);
    c->exported = PyDict_New();
    if (!c->exported)
        return -1;
    c->main_uid = main_uid;
    c->kind = kind;
    c->reclaim = reclaim;
    c->lock_timeout = lock_timeout;
    c->batch = batch ? batch : 1;
    c->spin_limit = kind == KIND_THREADSAFE ? 64 : 0;
    c->spins = 8;
    c->segment_path = strdup(segment_path);
    c->extent_prefix = strdup(extent_prefix);
    if (!c->segment_path || !c->extent_prefix) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &c->view, PyBUF_WRITABLE) < 0)
        return -1;
    c->have_view = 1;
    c->main = c->view.buf;
    c->main_size = (size_t)c->view.len;
    if (((uintptr_t)c->main & 4095) || !header_geometry(c->main, c->main_size, &c->geo)) {
        raise_damaged(c, "the pool header does not match its segment");
        return -1;
    }
    c->hdr = (uint64_t *)c->main;
    c->mutex = (pthread_mutex_t *)(c->main + MUTEX_OFFSET);
    Extent *e = &c->ext[0];
    *e = (Extent){.base = c->main + HEADER_SIZE, .size = c->main_size - HEADER_SIZE, .first = 0, .cap = c->geo.cap0,
                  .data = extent_data_offset(c->geo.cap0, c->geo.alignment), .own_mapping = 0};
    c->n_ext = 1;
    if (creating)
        extent_stamp(ext_words(e), e->cap, c->geo.pool_id);
    if (!extent_sane(c, e)) {
        raise_damaged(c, "extent 0's header is damaged");
        return -1;
    }
    c->sem = sem_open(sem_name, 0);
    if (c->sem == SEM_FAILED) {
        c->sem = NULL;
        raise_os(c, "cannot open the pool's free-slot semaphore");
        return -1;
    }
    if (map_new_extents(c) < 0 || register_client(c, c->segment_path, start_ticks) < 0)
        return -1;
    c->closed = 0;
    return 0;
}

/* Wait, the GIL released, until no other thread is inside an operation. 0 or -1 raised. */
static int wait_for_operations(Core *c)
{
    if (ops_here)
        return RAISE(c, E_OS, "s)", "close() was called from inside an operation of this thread (a signal handler, "
                                    "a value's packing hook); close the pool once that call has returned"),
               -1;
    c->closing = 1;
    double deadline = monotonic_now() + c->lock_timeout;
    while (c->ops && monotonic_now() < deadline) {
        struct timespec nap = {0, 1000000};
        Py_BEGIN_ALLOW_THREADS
        nanosleep(&nap, NULL);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) {
            c->closing = 0;
            return -1;
        }
    }
    c->closing = 0;
    if (c->ops)
        return RAISE(c, E_OS, "s)", "another thread is still inside an operation of this pool after lock_timeout; "
                                    "close the pool once that call has returned"),
               -1;
    return 0;
}

static PyObject *Core_close(Core *c, PyObject *unused)
{
    if (c->closed)
        Py_RETURN_NONE;
    if (c->exports)
        return PyErr_Format(PyExc_BufferError, "cannot close the pool: %zd memoryview(s) from buffer() are exported; "
                                               "release them first", c->exports);
    if (c->ops && wait_for_operations(c) < 0)
        return NULL;
    if (c->exports) /* a waited-for operation exported one */
        return PyErr_Format(PyExc_BufferError, "cannot close the pool: %zd memoryview(s) from buffer() are exported; "
                                               "release them first", c->exports);
    c->closing = 1; /* the drain below may wait for the lock: no operation starts meanwhile */
    unregister_client(c);
    release_resources(c);
    c->closing = 0;
    Py_RETURN_NONE;
}

/* After fork, in the child: the parent's entry, magazine and liveness lock stay the parent's. */
static PyObject *Core_after_fork(Core *c, PyObject *arg)
{
    if (c->closed)
        Py_RETURN_NONE;
    unsigned long long ticks = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    c->mag_len = 0;
    c->ops = 0; /* the threads that were inside did not come along */
    c->closing = 0;
    c->entry = -1;
    if (register_client(c, c->segment_path, ticks) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int Core_traverse(Core *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->errors);
    Py_VISIT(c->pack);
    Py_VISIT(c->unpack);
    Py_VISIT(c->pack_plain);
    Py_VISIT(c->unpack_plain);
    Py_VISIT(c->grow);
    Py_VISIT(c->exported);
    return 0;
}

static int Core_clear(Core *c)
{
    Py_CLEAR(c->errors);
    Py_CLEAR(c->pack);
    Py_CLEAR(c->unpack);
    Py_CLEAR(c->pack_plain);
    Py_CLEAR(c->unpack_plain);
    Py_CLEAR(c->grow);
    Py_CLEAR(c->exported);
    return 0;
}

static void Core_dealloc(Core *c)
{
    PyTypeObject *type = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    /* Also reached when __init__ failed: keep the exception it raised. */
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb);
    if (!c->closed && c->entry >= 0) {
        unregister_client(c);
        PyErr_Clear();
    }
    PyErr_Restore(etype, evalue, etb);
    release_resources(c);
    Core_clear(c);
    PyMem_Free(c->mag);
    free(c->segment_path);
    free(c->extent_prefix);
    type->tp_free((PyObject *)c);
    Py_DECREF(type);
}

/* ---- the methods: thin, each guarded ---- */

static PyObject *Core_allocate(Core *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    GUARDED(allocate_impl(c, args, nargs, kwnames));
}
static PyObject *Core_get(Core *c, PyObject *h) { GUARDED(get_impl(c, h)); }
static PyObject *Core_set(Core *c, PyObject *const *args, Py_ssize_t nargs) { GUARDED(set_impl(c, args, nargs)); }
static PyObject *Core_release(Core *c, PyObject *h) { GUARDED(release_impl(c, h)); }
static PyObject *Core_allocate_many(Core *c, PyObject *values) { GUARDED(allocate_many_impl(c, values)); }
static PyObject *Core_release_many(Core *c, PyObject *handles) { GUARDED(release_many_impl(c, handles)); }
static PyObject *Core_buffer(Core *c, PyObject *h) { GUARDED(buffer_impl(c, h)); }

static PyObject *Core_recover(Core *c, PyObject *args)
{
    int reclaim;
    double wait;
    if (!PyArg_ParseTuple(args, "pd", &reclaim, &wait))
        return NULL;
    GUARDED(recover_impl(c, reclaim, wait));
}

static PyObject *Core_commit_extent(Core *c, PyObject *args)
{
    int number;
    unsigned int cap;
    if (!PyArg_ParseTuple(args, "iI", &number, &cap))
        return NULL;
    GUARDED(commit_extent_impl(c, number, cap));
}

static PyObject *Core_pre_initialize(Core *c, PyObject *value) { GUARDED(pre_initialize_impl(c, value)); }
static PyObject *Core_take_slot(Core *c, PyObject *unused) { GUARDED(take_slot_impl(c)); }
static PyObject *Core_publish_slot(Core *c, PyObject *const *args, Py_ssize_t nargs) { GUARDED(publish_slot_impl(c, args, nargs)); }
static PyObject *Core_unwind_slot(Core *c, PyObject *index) { GUARDED(unwind_slot_impl(c, index)); }
static PyObject *Core_counters(Core *c, PyObject *unused) { GUARDED(counters_impl(c)); }
static PyObject *Core_len(Core *c, PyObject *unused) { GUARDED(len_impl(c)); }
static PyObject *Core_reset_statistics(Core *c, PyObject *unused) { GUARDED(reset_statistics_impl(c)); }
static PyObject *Core_clients(Core *c, PyObject *unused) { GUARDED(clients_impl(c)); }
static PyObject *Core_slot_states(Core *c, PyObject *unused) { GUARDED(slot_states_impl(c)); }

static PyObject *Core_channel_open(Core *c, PyObject *name) { GUARDED(channel_open_impl(c, name)); }
static PyObject *Core_channels(Core *c, PyObject *unused) { GUARDED(channels_impl(c)); }

/* A channel call's (channel number, ..., timeout) arguments; timeout None -> -1 (forever). */
static int channel_args(PyObject *args, const char *format, int *ch, PyObject **obj, Py_ssize_t *count, double *timeout)
{
    PyObject *timeout_obj = Py_None;
    int ok = obj ? PyArg_ParseTuple(args, format, ch, obj, &timeout_obj)
                 : count ? PyArg_ParseTuple(args, format, ch, count, &timeout_obj) : PyArg_ParseTuple(args, format, ch, &timeout_obj);
    if (!ok || parse_timeout(timeout_obj, timeout) < 0)
        return -1;
    return 0;
}

static PyObject *Core_channel_put(Core *c, PyObject *args)
{
    int ch;
    PyObject *value;
    double timeout;
    if (channel_args(args, "iO|O", &ch, &value, NULL, &timeout) < 0)
        return NULL;
    GUARDED(channel_put_impl(c, ch, value, timeout));
}

static PyObject *Core_channel_put_many(Core *c, PyObject *args)
{
    int ch;
    PyObject *values;
    double timeout;
    if (channel_args(args, "iO|O", &ch, &values, NULL, &timeout) < 0)
        return NULL;
    GUARDED(channel_put_many_impl(c, ch, values, timeout));
}

static PyObject *Core_channel_put_handle(Core *c, PyObject *args)
{
    int ch;
    PyObject *h;
    if (!PyArg_ParseTuple(args, "iO", &ch, &h))
        return NULL;
    GUARDED(channel_put_handle_impl(c, ch, h));
}

static PyObject *Core_channel_get(Core *c, PyObject *args)
{
    int ch;
    double timeout;
    if (channel_args(args, "i|O", &ch, NULL, NULL, &timeout) < 0)
        return NULL;
    GUARDED(channel_get_impl(c, ch, timeout));
}

static PyObject *Core_channel_get_handle(Core *c, PyObject *args)
{
    int ch;
    double timeout;
    if (channel_args(args, "i|O", &ch, NULL, NULL, &timeout) < 0)
        return NULL;
    GUARDED(channel_get_handle_impl(c, ch, timeout));
}

static PyObject *Core_channel_get_many(Core *c, PyObject *args)
{
    int ch;
    Py_ssize_t max_items;
    double timeout;
    if (channel_args(args, "in|O", &ch, NULL, &max_items, &timeout) < 0)
        return NULL;
    GUARDED(channel_get_many_impl(c, ch, max_items, timeout));
}

static PyObject *Core_channel_wait(Core *c, PyObject *args)
{
    int ch;
    double seconds;
    if (!PyArg_ParseTuple(args, "id", &ch, &seconds))
        return NULL;
    GUARDED(channel_watch_impl(c, ch, seconds));
}

static PyObject *Core_channel_stats(Core *c, PyObject *arg)
{
    int ch = PyLong_AsLong(arg);
    if (ch == -1 && PyErr_Occurred())
        return NULL;
    GUARDED(channel_stats_impl(c, ch));
}

static PyObject *Core_get_entry(Core *c, void *unused) { return PyLong_FromLong(c->entry); }
static PyObject *Core_get_extents(Core *c, void *unused) { return PyLong_FromLong(c->n_ext); }
static PyObject *Core_get_cached(Core *c, void *unused) { return PyLong_FromSsize_t(c->mag_len); }
static PyObject *Core_get_closed(Core *c, void *unused) { return PyBool_FromLong(c->closed); }
static PyObject *Core_get_ops(Core *c, void *unused) { return PyLong_FromLong(c->ops); }
static PyObject *Core_get_exports(Core *c, void *unused) { return PyLong_FromSsize_t(c->exports); }
static PyObject *Core_get_sem_value(Core *c, void *unused)
{
    int v = 0;
    if (c->closed || !c->sem || sem_getvalue(c->sem, &v) < 0)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(v);
}

#define FASTCALL_KW(f) (PyCFunction)(void (*)(void))(f)

static PyMethodDef Core_methods[] = {
    {"allocate", FASTCALL_KW(Core_allocate), METH_FASTCALL | METH_KEYWORDS,
     "allocate($self, value, /, timeout=None)\n--\n\n"
     "Store `value` in a free slot and return its handle.\n\n"
     "A full pool raises PoolExhausted at once, or, with `timeout` seconds,\n"
     "after waiting that long for a release."},
    {"get", (PyCFunction)Core_get, METH_O,
     "get($self, handle, /)\n--\n\n"
     "The value stored under `handle`, as a new Python object.\n\n"
     "StaleHandle once the handle was released; TornValue if its writer died mid-write."},
    {"set", FASTCALL_KW(Core_set), METH_FASTCALL,
     "set($self, handle, value, /)\n--\n\n"
     "Replace the value under `handle` in place.\n\n"
     "Readers see the old value or the new one, never a mix."},
    {"release", (PyCFunction)Core_release, METH_O,
     "release($self, handle, /)\n--\n\n"
     "Give the slot back; `handle` is stale from now on.\n\n"
     "BufferError while a memoryview of the slot from buffer() is exported here."},
    {"allocate_many", (PyCFunction)Core_allocate_many, METH_O,
     "allocate_many($self, values, /)\n--\n\n"
     "One slot per value under one lock acquisition; all or nothing.\n\n"
     "Returns the handles in the order of the values."},
    {"release_many", (PyCFunction)Core_release_many, METH_O,
     "release_many($self, handles, /)\n--\n\n"
     "Release many handles under one lock acquisition.\n\n"
     "Every handle is checked first; if any is stale or invalid, none is released."},
    {"buffer", (PyCFunction)Core_buffer, METH_O,
     "buffer($self, handle, /)\n--\n\n"
     "A writable memoryview of the slot's raw bytes (slot_size long).\n\n"
     "While it is exported, release(handle) and close() raise BufferError."},
    {"recover", (PyCFunction)Core_recover, METH_VARARGS,
     "recover($self, reclaim, wait, /)\n--\n\n"
     "Rebuild from slot states: (tally, lock_taken_over, dead pids)."},
    {"commit_extent", (PyCFunction)Core_commit_extent, METH_VARARGS,
     "commit_extent($self, number, capacity, /)\n--\n\n"
     "Record extent `number`, created and stamped by the grower, in the header."},
    {"pre_initialize", (PyCFunction)Core_pre_initialize, METH_O,
     "pre_initialize($self, value, /)\n--\n\nFill every slot of extent 0 with one value (the creator, before ready)."},
    {"take_slot", (PyCFunction)Core_take_slot, METH_NOARGS,
     "take_slot($self, /)\n--\n\nA slot being written, and its previous bytes: (index, bytes or None)."},
    {"publish_slot", FASTCALL_KW(Core_publish_slot), METH_FASTCALL,
     "publish_slot($self, index, value, /)\n--\n\nWrite and publish a slot from take_slot(); its handle."},
    {"unwind_slot", (PyCFunction)Core_unwind_slot, METH_O,
     "unwind_slot($self, index, /)\n--\n\nGive back a slot from take_slot() that was not published."},
    {"counters", (PyCFunction)Core_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nThe statistics counters, summed over the client entries."},
    {"len", (PyCFunction)Core_len, METH_NOARGS, "len($self, /)\n--\n\nSlots in use now."},
    {"reset_statistics", (PyCFunction)Core_reset_statistics, METH_NOARGS,
     "reset_statistics($self, /)\n--\n\nZero the event counters; the peak restarts at the usage."},
    {"clients", (PyCFunction)Core_clients, METH_NOARGS,
     "clients($self, /)\n--\n\nAttached processes: [(entry, pid, start_ticks, alive)]."},
    {"slot_states", (PyCFunction)Core_slot_states, METH_NOARGS,
     "slot_states($self, /)\n--\n\nEvery extent's slot metadata and free list (tests, `fastalloc-shm stats`)."},
    {"close", (PyCFunction)Core_close, METH_NOARGS,
     "close($self, /)\n--\n\nLeave the client table and unmap, once no operation is inside.\n\n"
     "Waits up to lock_timeout for other threads' operations to leave; BufferError\n"
     "while a memoryview from buffer() is exported."},
    {"channel_open", (PyCFunction)Core_channel_open, METH_O,
     "channel_open($self, name, /)\n--\n\nThe number of channel `name`, created if the pool has none of that name."},
    {"channels", (PyCFunction)Core_channels, METH_NOARGS,
     "channels($self, /)\n--\n\nEvery channel entry's name, by number (None when free)."},
    {"channel_put", (PyCFunction)Core_channel_put, METH_VARARGS,
     "channel_put($self, channel, value, timeout=None, /)\n--\n\nAllocate a slot for `value` and queue it."},
    {"channel_put_many", (PyCFunction)Core_channel_put_many, METH_VARARGS,
     "channel_put_many($self, channel, values, timeout=None, /)\n--\n\nQueue every value, all or nothing."},
    {"channel_put_handle", (PyCFunction)Core_channel_put_handle, METH_VARARGS,
     "channel_put_handle($self, channel, handle, /)\n--\n\nQueue a slot the caller holds; the handle is stale after."},
    {"channel_get", (PyCFunction)Core_channel_get, METH_VARARGS,
     "channel_get($self, channel, timeout=None, /)\n--\n\nWait for an item, read it and release its slot."},
    {"channel_get_handle", (PyCFunction)Core_channel_get_handle, METH_VARARGS,
     "channel_get_handle($self, channel, timeout=None, /)\n--\n\nWait for an item and take it: its handle."},
    {"channel_get_many", (PyCFunction)Core_channel_get_many, METH_VARARGS,
     "channel_get_many($self, channel, max_items, timeout=None, /)\n--\n\nWait for items; up to max_items values."},
    {"channel_wait", (PyCFunction)Core_channel_wait, METH_VARARGS,
     "channel_wait($self, channel, seconds, /)\n--\n\nTrue if the channel has an item; else wait (at most a slice) for a put."},
    {"channel_stats", (PyCFunction)Core_channel_stats, METH_O,
     "channel_stats($self, channel, /)\n--\n\nThe channel's name, length and counters."},
    {"after_fork", (PyCFunction)Core_after_fork, METH_O,
     "after_fork($self, start_ticks, /)\n--\n\nIn a forked child: a client entry of its own."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"entry", (getter)Core_get_entry, NULL, "This process's client entry.", NULL},
    {"extents", (getter)Core_get_extents, NULL, "Extents mapped here.", NULL},
    {"cached", (getter)Core_get_cached, NULL, "Slots in this process's magazine.", NULL},
    {"closed", (getter)Core_get_closed, NULL, "True after close().", NULL},
    {"operations", (getter)Core_get_ops, NULL, "Operations of this process inside this core now.", NULL},
    {"exports", (getter)Core_get_exports, NULL, "memoryviews from buffer() exported now.", NULL},
    {"semaphore_value", (getter)Core_get_sem_value, NULL, "Free-slot tokens now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Core_slots[] = {
    {Py_tp_new, Core_new},
    {Py_tp_init, Core_init},
    {Py_tp_dealloc, Core_dealloc},
    {Py_tp_traverse, Core_traverse},
    {Py_tp_clear, Core_clear},
    {Py_tp_methods, Core_methods},
    {Py_tp_getset, Core_getset},
    {Py_tp_doc, "Core(buffer, sem_name, segment_path, extent_prefix, *, main_uid, kind, lock_timeout, batch, errors, "
                "pack, unpack, grow, start_ticks, creating, trusted, reclaim=False, pack_plain=None, unpack_plain=None)\n--\n\n"
                "The compiled core of one pool in this process."},
    {0, NULL},
};

static PyType_Spec Core_spec = {
    .name = "fastalloc_shm._core.Core",
    .basicsize = sizeof(Core),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Core_slots,
};

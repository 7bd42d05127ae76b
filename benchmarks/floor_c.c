/* The compiled floor: the least a shared-memory pool called from Python can cost.
 *
 * One POSIX segment: a header holding a process-shared robust pthread mutex, a stack of free
 * slot indices, and slots of [uint32 length][payload]. allocate pops an index under the mutex
 * and memcpys outside it; release pushes under the mutex; a handle is the bare index. Given
 * packb/unpackb (msgpack's), values go through them, called from C with no Python frame in
 * between; without, values are bytes. Absent on purpose, because a real pool pays for them:
 * generations (a stale handle reads whatever is there), torn-read protection, repair after a
 * holder's death (EOWNERDEAD only marks the mutex consistent), statistics. Indices and lengths
 * read from the segment are still checked: memory safety is not optional.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    pthread_mutex_t mutex;
    uint32_t capacity, slot_size, stride, top; /* top: how many free indices the stack holds */
} Header;

#define HEADER_SIZE 64
_Static_assert(sizeof(Header) <= HEADER_SIZE, "header outgrew its 64 bytes");

typedef struct {
    PyObject_HEAD
    char *base, *slots;
    size_t size;
    Header *hdr;
    uint32_t *stack;
    uint32_t capacity, slot_size, stride;
    PyObject *packb, *unpackb; /* NULL: bytes in, bytes out */
} Pool;

static PyTypeObject PoolType;

static size_t stack_bytes(uint32_t capacity) { return ((size_t)capacity * 4 + 7) & ~(size_t)7; }

static size_t layout(uint32_t capacity, uint32_t slot_size, uint32_t *stride) {
    *stride = (uint32_t)(((uint64_t)slot_size + 4 + 7) & ~(uint64_t)7);
    return HEADER_SIZE + stack_bytes(capacity) + (size_t)capacity * *stride;
}

static int lock(Pool *p) {
    if (!p->hdr) {
        PyErr_SetString(PyExc_ValueError, "floor pool is closed");
        return -1;
    }
    int rc = pthread_mutex_lock(&p->hdr->mutex);
    if (rc == EOWNERDEAD)
        rc = pthread_mutex_consistent(&p->hdr->mutex);
    if (rc) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return rc ? -1 : 0;
}

static void unlock(Pool *p) { pthread_mutex_unlock(&p->hdr->mutex); }

static int index_of(Pool *p, PyObject *handle, uint32_t *idx) {
    unsigned long i = PyLong_AsUnsignedLong(handle);
    if (i == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (i >= p->capacity) { /* also every handle of a closed pool: its capacity is 0 */
        PyErr_Format(PyExc_IndexError, "handle %lu out of range", i);
        return -1;
    }
    *idx = (uint32_t)i;
    return 0;
}

/* A new reference to the bytes to store: the packed value, or the bytes given. */
static PyObject *encode(Pool *p, PyObject *value) {
    PyObject *b = p->packb ? PyObject_CallOneArg(p->packb, value) : Py_NewRef(value);
    if (b && !PyBytes_Check(b)) {
        PyErr_SetString(PyExc_TypeError, "value must be bytes");
        Py_CLEAR(b);
    } else if (b && (size_t)PyBytes_GET_SIZE(b) > p->slot_size) {
        PyErr_Format(PyExc_ValueError, "%zd bytes exceed slot size %u", PyBytes_GET_SIZE(b), p->slot_size);
        Py_CLEAR(b);
    }
    return b;
}

static void store(Pool *p, uint32_t idx, PyObject *b) {
    char *slot = p->slots + (size_t)idx * p->stride;
    uint32_t n = (uint32_t)PyBytes_GET_SIZE(b);
    memcpy(slot + 4, PyBytes_AS_STRING(b), n);
    memcpy(slot, &n, 4);
}

static PyObject *Pool_allocate(Pool *p, PyObject *value) {
    PyObject *b = encode(p, value), *handle = NULL;
    if (!b || lock(p))
        goto done;
    uint32_t idx = p->hdr->top ? p->stack[--p->hdr->top] : UINT32_MAX;
    unlock(p);
    if (idx == UINT32_MAX)
        PyErr_SetString(PyExc_MemoryError, "floor pool is full");
    else if (idx >= p->capacity)
        PyErr_Format(PyExc_RuntimeError, "corrupt free stack: index %u", idx);
    else {
        store(p, idx, b);
        handle = PyLong_FromUnsignedLong(idx);
    }
done:
    Py_XDECREF(b);
    return handle;
}

static PyObject *Pool_get(Pool *p, PyObject *handle) {
    uint32_t idx, n;
    if (index_of(p, handle, &idx))
        return NULL;
    char *slot = p->slots + (size_t)idx * p->stride;
    memcpy(&n, slot, 4);
    if (n > p->slot_size)
        return PyErr_Format(PyExc_RuntimeError, "corrupt slot %u: length %u", idx, n);
    if (!p->unpackb)
        return PyBytes_FromStringAndSize(slot + 4, n);
    PyObject *view = PyMemoryView_FromMemory(slot + 4, n, PyBUF_READ);
    PyObject *value = view ? PyObject_CallOneArg(p->unpackb, view) : NULL;
    Py_XDECREF(view);
    return value;
}

static PyObject *Pool_set(Pool *p, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t idx;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "set(handle, value) takes 2 arguments, got %zd", nargs);
    PyObject *b = index_of(p, args[0], &idx) ? NULL : encode(p, args[1]);
    if (!b)
        return NULL;
    store(p, idx, b);
    Py_DECREF(b);
    Py_RETURN_NONE;
}

static PyObject *Pool_release(Pool *p, PyObject *handle) {
    uint32_t idx;
    if (index_of(p, handle, &idx) || lock(p))
        return NULL;
    int full = p->hdr->top >= p->capacity;
    if (!full)
        p->stack[p->hdr->top++] = idx;
    unlock(p);
    if (full)
        return PyErr_Format(PyExc_RuntimeError, "free stack overflow: handle %u released twice?", idx);
    Py_RETURN_NONE;
}

static PyObject *Pool_close(Pool *p, PyObject *unused) {
    if (p->base)
        munmap(p->base, p->size);
    p->base = p->slots = NULL;
    p->hdr = NULL;
    p->capacity = 0;
    Py_RETURN_NONE;
}

static void Pool_dealloc(Pool *p) {
    Pool_close(p, NULL);
    Py_XDECREF(p->packb);
    Py_XDECREF(p->unpackb);
    PyObject_Free(p);
}

/* open(name, capacity=0, slot_size=0, packb=None, unpackb=None): capacity 0 attaches to an
 * existing segment; otherwise the segment is created (exclusively) and its pages reserved. */
static PyObject *floor_open(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"name", "capacity", "slot_size", "packb", "unpackb", NULL};
    const char *name;
    unsigned int capacity = 0, slot_size = 0, stride;
    PyObject *packb = Py_None, *unpackb = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|IIOO", kwlist, &name, &capacity, &slot_size, &packb, &unpackb))
        return NULL;
    int create = capacity != 0, rc = 0;
    if (create && (slot_size == 0 || capacity > (1u << 30) || slot_size > (1u << 30)))
        return PyErr_Format(PyExc_ValueError, "capacity and slot_size must be in 1..2**30");
    size_t size = create ? layout(capacity, slot_size, &stride) : 0;
    struct stat st;
    void *base = MAP_FAILED;
    int fd = shm_open(name, create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    if (create && (ftruncate(fd, (off_t)size) ? (rc = errno) : (rc = posix_fallocate(fd, 0, (off_t)size))))
        goto fail;
    if (!create && (fstat(fd, &st) ? (rc = errno) : (size = (size_t)st.st_size) < HEADER_SIZE ? (rc = EINVAL) : 0))
        goto fail;
    if ((base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        rc = errno;
        goto fail;
    }
    close(fd);
    Header *h = base;
    if (create) {
        pthread_mutexattr_t attr;
        pthread_mutexattr_init(&attr);
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&h->mutex, &attr);
        pthread_mutexattr_destroy(&attr);
        h->capacity = capacity, h->slot_size = slot_size, h->stride = stride, h->top = capacity;
        uint32_t *stack = (uint32_t *)((char *)base + HEADER_SIZE);
        for (uint32_t i = 0; i < capacity; i++) /* popped from the top: slot 0 first */
            stack[i] = capacity - 1 - i;
    } else if (layout(h->capacity, h->slot_size, &stride) != size || stride != h->stride || h->top > h->capacity) {
        munmap(base, size);
        return PyErr_Format(PyExc_ValueError, "%s: header does not match the segment", name);
    }
    Pool *p = PyObject_New(Pool, &PoolType);
    if (!p) {
        munmap(base, size);
        return NULL;
    }
    p->base = base, p->size = size, p->hdr = h;
    p->capacity = h->capacity, p->slot_size = h->slot_size, p->stride = h->stride;
    p->stack = (uint32_t *)((char *)base + HEADER_SIZE);
    p->slots = (char *)base + HEADER_SIZE + stack_bytes(p->capacity);
    p->packb = packb == Py_None ? NULL : Py_NewRef(packb);
    p->unpackb = unpackb == Py_None ? NULL : Py_NewRef(unpackb);
    return (PyObject *)p;
fail:
    close(fd);
    if (create)
        shm_unlink(name);
    errno = rc ? rc : EINVAL;
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
}

static PyObject *floor_unlink(PyObject *m, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    if (shm_unlink(name) && errno != ENOENT)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    Py_RETURN_NONE;
}

static PyMethodDef Pool_methods[] = {
    {"allocate", (PyCFunction)Pool_allocate, METH_O, "Store a value; return its handle (the slot index)."},
    {"get", (PyCFunction)Pool_get, METH_O, "The value of a handle."},
    {"set", (PyCFunction)(void (*)(void))Pool_set, METH_FASTCALL, "Overwrite a handle's value."},
    {"release", (PyCFunction)Pool_release, METH_O, "Give a handle's slot back."},
    {"close", (PyCFunction)Pool_close, METH_NOARGS, "Unmap in this process."},
    {NULL}};

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "floor_c.Pool",
    .tp_basicsize = sizeof(Pool),
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = Pool_methods,
};

static PyMethodDef module_methods[] = {
    {"open", (PyCFunction)(void (*)(void))floor_open, METH_VARARGS | METH_KEYWORDS,
     "open(name, capacity=0, slot_size=0, packb=None, unpackb=None) -> Pool; capacity 0 attaches"},
    {"unlink", floor_unlink, METH_O, "Remove segment `name` (absent is fine)."},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "floor_c", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit_floor_c(void) { return PyType_Ready(&PoolType) < 0 ? NULL : PyModule_Create(&module); }

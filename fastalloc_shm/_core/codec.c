/* codec.c: values into slots and back (the msgpack glue).
 *
 * bytes and str, the common values, are packed and unpacked here without an
 * intermediate object: a msgpack header plus the object's own buffer. Any
 * other value goes through the pool's packers, so the bytes in a slot are
 * always one msgpack object. An untyped pool has two (_codec.py): a plain
 * value (exact None, bool, int, float, str, bytes, and lists and dicts of
 * them, checked here by a walk that runs no Python code) goes to the fast
 * one (msgspec), which writes it byte for byte as msgpack-python does; any
 * other value to the full one, which decides whether it can be stored at
 * all. Reading is the same split: slot bytes that may hold a msgpack
 * Timestamp (ext -1, which msgspec would turn into a datetime) go to the
 * full unpacker, the rest to the fast one. A typed pool has only the full
 * pair, which validates against its type.
 *
 * Packing runs Python code (the packer, a value's hooks), so it happens
 * before an operation touches a slot (core.h, discipline b), and a Packed
 * points only into objects the operation holds a reference to. A value is
 * written into a slot its writer owns (being-written), and published by one
 * release store of (generation, ALLOCATED|owner) after its bytes, length and
 * sequence: a reader that sees it published sees the whole value. The handle
 * is made before anything is published, so running out of memory then
 * leaves the slot with its taker, to give back, not handed out to nobody.
 */

typedef struct {
    uint8_t head[5];
    size_t head_len;
    const char *body;
    size_t body_len;
    PyObject *owned; /* packed by the Python packer, or NULL */
} Packed;

static size_t packed_size(const Packed *p) { return p->head_len + p->body_len; }

static void put_length(Packed *p, uint8_t tag8, uint8_t tag16, uint8_t tag32, size_t n)
{
    if (n < 256 && tag8) {
        p->head[0] = tag8;
        p->head[1] = (uint8_t)n;
        p->head_len = 2;
    } else if (n < 65536) {
        p->head[0] = tag16;
        p->head[1] = (uint8_t)(n >> 8);
        p->head[2] = (uint8_t)n;
        p->head_len = 3;
    } else {
        p->head[0] = tag32;
        p->head[1] = (uint8_t)(n >> 24);
        p->head[2] = (uint8_t)(n >> 16);
        p->head[3] = (uint8_t)(n >> 8);
        p->head[4] = (uint8_t)n;
        p->head_len = 5;
    }
}

/* How deep a plain value may nest before the full packer takes it (it has its own limit). */
#define PLAIN_DEPTH 32

static int is_plain_key(PyObject *k)
{
    return PyUnicode_CheckExact(k) || PyLong_CheckExact(k) || PyBytes_CheckExact(k) || PyFloat_CheckExact(k) ||
           PyBool_Check(k) || k == Py_None;
}

/* A value msgspec writes as msgpack-python does and that reads back as itself. The walk runs no
 * Python code (exact types only: no __hash__, __len__ or __iter__ of a user's class). */
static int is_plain(PyObject *v, int depth)
{
    if (v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v) || PyUnicode_CheckExact(v) ||
        PyBytes_CheckExact(v))
        return 1;
    if (depth <= 0)
        return 0;
    if (PyList_CheckExact(v)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++)
            if (!is_plain(PyList_GET_ITEM(v, i), depth - 1))
                return 0;
        return 1;
    }
    if (PyDict_CheckExact(v)) {
        Py_ssize_t pos = 0;
        PyObject *k, *x;
        while (PyDict_Next(v, &pos, &k, &x))
            if (!is_plain_key(k) || !is_plain(x, depth - 1))
                return 0;
        return 1;
    }
    return 0;
}

static int pack_value(Core *c, PyObject *v, Packed *p)
{
    p->owned = NULL;
    p->head_len = 0;
    if (PyBytes_CheckExact(v)) {
        Py_ssize_t n = PyBytes_GET_SIZE(v);
        if ((size_t)n <= 0xFFFFFFFFu) {
            put_length(p, 0xc4, 0xc5, 0xc6, (size_t)n);
            p->body = PyBytes_AS_STRING(v);
            p->body_len = (size_t)n;
            return 0;
        }
    } else if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s && (size_t)n <= 0xFFFFFFFFu) {
            if (n < 32) {
                p->head[0] = (uint8_t)(0xa0 | n);
                p->head_len = 1;
            } else {
                put_length(p, 0xd9, 0xda, 0xdb, (size_t)n);
            }
            p->body = s;
            p->body_len = (size_t)n;
            return 0;
        }
        PyErr_Clear(); /* lone surrogates: let the packer say what is wrong */
    }
    PyObject *b = NULL;
    if (c->pack_plain && is_plain(v, PLAIN_DEPTH)) {
        PyObject *fast = Py_NewRef(c->pack_plain);
        b = PyObject_CallOneArg(fast, v);
        Py_DECREF(fast);
        if (!b)
            PyErr_Clear(); /* e.g. an int past 64 bits: the full packer says what is wrong, in its words */
    }
    if (!b) {
        PyObject *pack = Py_NewRef(c->pack);
        b = PyObject_CallOneArg(pack, v);
        Py_DECREF(pack);
    }
    if (!b) {
        PyObject *exc = fetch_exception();
        if (exc)
            RAISE(c, E_PACK, "ON)", v, exc);
        return -1;
    }
    if (!PyBytes_Check(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "pack() must return bytes");
        return -1;
    }
    p->owned = b;
    p->body = PyBytes_AS_STRING(b);
    p->body_len = (size_t)PyBytes_GET_SIZE(b);
    return 0;
}

static void packed_done(Packed *p) { Py_CLEAR(p->owned); }

static int pack_checked(Core *c, PyObject *v, Packed *p)
{
    if (pack_value(c, v, p) < 0)
        return -1;
    size_t n = packed_size(p);
    if (n > c->geo.slot_size) {
        packed_done(p);
        RAISE(c, E_TOO_LARGE, "n)", (Py_ssize_t)n);
        return -1;
    }
    return 0;
}

static void copy_packed(uint8_t *dst, const Packed *p)
{
    memcpy(dst, p->head, p->head_len);
    memcpy(dst + p->head_len, p->body, p->body_len);
}

/* The handle a slot this process is writing will have: made before publishing. */
static PyObject *handle_of_taken(const Extent *e, uint32_t local)
{
    return make_handle(LOAD(&meta_of(e, local)[META_GEN]) & GENERATION_MASK, e->first + local);
}

/* Write a value into a slot this process took, and publish it. */
static void write_and_publish(Core *c, const Extent *e, uint32_t local, const Packed *p)
{
    uint32_t *m = meta_of(e, local);
    uint8_t *dst = slot_of(c, e, local);
    if (fault_point == F_ALLOC_WRITING) {
        memcpy(dst, p->head, p->head_len);
        FAULT(F_ALLOC_WRITING);
    }
    copy_packed(dst, p);
    m[META_LEN] = (uint32_t)packed_size(p);
    m[META_SEQ] = 0;
    uint32_t gen = LOAD(&m[META_GEN]) & GENERATION_MASK;
    STORE_REL((uint64_t *)m, pair(gen, (ALLOCATED << STATE_SHIFT) | c->owner));
}

/* bytes and str straight from the slot (the caller re-checks the sequence);
 * else NULL with *copy the raw bytes for the unpacker (or NULL: out of memory). */
static PyObject *decode_value(const uint8_t *src, uint32_t n, PyObject **copy)
{
    if (n >= 1) {
        uint8_t t = src[0];
        size_t hl = 0, len = 0;
        int is_bin = 0, is_str = 0;
        if (t == 0xc4 && n >= 2) { hl = 2; len = src[1]; is_bin = 1; }
        else if (t == 0xc5 && n >= 3) { hl = 3; len = (size_t)src[1] << 8 | src[2]; is_bin = 1; }
        else if (t == 0xc6 && n >= 5) { hl = 5; len = (size_t)src[1] << 24 | (size_t)src[2] << 16 | (size_t)src[3] << 8 | src[4]; is_bin = 1; }
        else if ((t & 0xe0) == 0xa0) { hl = 1; len = t & 0x1f; is_str = 1; }
        else if (t == 0xd9 && n >= 2) { hl = 2; len = src[1]; is_str = 1; }
        if ((is_bin || is_str) && hl + len == n) {
            if (is_bin)
                return PyBytes_FromStringAndSize((const char *)src + hl, (Py_ssize_t)len);
            PyObject *s = PyUnicode_DecodeUTF8((const char *)src + hl, (Py_ssize_t)len, "strict");
            if (s)
                return s;
            PyErr_Clear(); /* torn by a racing set(), or not ours: the slow path decides */
        }
    }
    *copy = PyBytes_FromStringAndSize((const char *)src, n);
    return NULL;
}

/* Slot bytes that may hold a msgpack Timestamp (ext type -1: fixext 4 or 8, or ext 8 of 12
 * bytes). A false alarm (a 0xff inside a number or a string) only costs the full unpacker. */
static int may_hold_timestamp(const uint8_t *s, size_t n)
{
    for (const uint8_t *p = memchr(s, 0xff, n); p; p = memchr(p + 1, 0xff, n - (size_t)(p - s) - 1)) {
        size_t i = (size_t)(p - s);
        if ((i >= 1 && (s[i - 1] == 0xd6 || s[i - 1] == 0xd7)) || (i >= 2 && s[i - 2] == 0xc7 && s[i - 1] == 0x0c))
            return 1;
        if (i + 1 >= n)
            break;
    }
    return 0;
}

static PyObject *unpack_copy(Core *c, PyObject *h, PyObject *copy)
{
    PyObject *unpack = Py_NewRef(c->unpack_plain && !may_hold_timestamp((const uint8_t *)PyBytes_AS_STRING(copy),
                                                                        (size_t)PyBytes_GET_SIZE(copy))
                                     ? c->unpack_plain
                                     : c->unpack);
    PyObject *v = PyObject_CallOneArg(unpack, copy);
    Py_DECREF(unpack);
    Py_DECREF(copy);
    if (!v) {
        PyObject *exc = fetch_exception();
        return exc ? RAISE(c, E_UNPACK, "ON)", h, exc) : NULL;
    }
    return v;
}

/* A batch of values one call was given: a tuple we own (packing runs Python code, which may
 * change the caller's list), every value packed, and room for the slots it takes. */
typedef struct {
    PyObject *items;
    Py_ssize_t n, npacked;
    Packed *packed;
    Taken *taken;
} Batch;

/* 0 packed; -1 raised. batch_done() either way. */
static int batch_pack(Core *c, PyObject *values, const char *what, Batch *b)
{
    *b = (Batch){0};
    b->items = PySequence_Tuple(values);
    if (!b->items) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s() takes an iterable of values", what);
        }
        return -1;
    }
    b->n = PyTuple_GET_SIZE(b->items);
    if (!b->n)
        return 0;
    b->packed = PyMem_Calloc((size_t)b->n, sizeof(Packed));
    b->taken = PyMem_Calloc((size_t)b->n, sizeof(Taken));
    if (!b->packed || !b->taken) {
        PyErr_NoMemory();
        return -1;
    }
    for (; b->npacked < b->n; b->npacked++)
        if (pack_checked(c, PyTuple_GET_ITEM(b->items, b->npacked), &b->packed[b->npacked]) < 0)
            return -1;
    return 0;
}

static void batch_done(Batch *b)
{
    for (Py_ssize_t i = 0; i < b->npacked; i++)
        packed_done(&b->packed[i]);
    PyMem_Free(b->packed);
    PyMem_Free(b->taken);
    Py_XDECREF(b->items);
}

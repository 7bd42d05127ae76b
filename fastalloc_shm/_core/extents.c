/* extents.c: where slots are. Geometry, mapping, locating.
 *
 * A pool is a list of extents: extent 0 inside the main segment, extent k >= 1
 * a segment of its own that a grower created and the header's extent table
 * records (base index, capacity). Committed table entries never change and
 * the count is published last (release), so any process maps new extents
 * lazily, outside the lock, when an index points past what it has mapped.
 *
 * Invariants:
 * - Every size computed from segment words is overflow-checked (geometry
 *   returns 0 on overflow) and checked against the mapping before use.
 * - An extent is used only after its header names its capacity, the extent
 *   magic and this pool's id: a process attached to an unlinked pool never
 *   maps the extents of a pool created again under the name.
 * - Mapping never raises: it reports a Failure, so it may run under the lock
 *   (a repair maps what it must see) and the caller raises after unlocking.
 */

static inline int add_overflows(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

/* Offset of slot 0's bytes from an extent's start; 0 on overflow. */
static size_t extent_data_offset(uint32_t cap, uint32_t alignment)
{
    size_t a = alignment > 64 ? alignment : 64, meta, end;
    if (__builtin_mul_overflow((size_t)cap, (size_t)META_BYTES, &meta) || add_overflows(meta, EXT_HEADER_BYTES + a - 1, &end))
        return 0;
    return end & ~(a - 1);
}

/* Bytes of an extent of `cap` slots, page-rounded; 0 on overflow. */
static size_t extent_bytes(uint32_t cap, uint32_t stride, uint32_t alignment)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), data = extent_data_offset(cap, alignment), slots, end;
    if (!data || __builtin_mul_overflow((size_t)cap, (size_t)stride, &slots) || add_overflows(data, slots, &end)
        || add_overflows(end, page - 1, &end))
        return 0;
    return end & ~(page - 1);
}

static inline uint32_t *ext_words(const Extent *e) { return (uint32_t *)e->base; }
static inline uint32_t *meta_of(const Extent *e, uint32_t local)
{
    return (uint32_t *)(e->base + EXT_HEADER_BYTES) + (size_t)local * META_WORDS;
}
static inline uint8_t *slot_of(const Core *c, const Extent *e, uint32_t local)
{
    return e->base + e->data + (size_t)local * c->geo.stride;
}

/* Write a new extent's header (creator or grower, before it is published). */
static void extent_stamp(uint32_t *w, uint32_t cap, uint64_t pool_id)
{
    w[EXT_CAPACITY] = cap;
    w[EXT_HEAD] = 0;
    w[EXT_FRESH] = 0;
    w[EXT_POOL_ID_LOW] = (uint32_t)pool_id;
    w[EXT_POOL_ID_HIGH] = (uint32_t)(pool_id >> 32);
    STORE_REL(&w[EXT_MAGIC], (uint32_t)EXTENT_MAGIC);
}

/* Does an extent's header fit its mapping and belong to this pool? */
static int extent_sane(const Core *c, const Extent *e)
{
    const uint32_t *w = ext_words(e);
    size_t need = extent_bytes(e->cap, c->geo.stride, c->geo.alignment);
    if (!need || e->size < need)
        return 0;
    uint32_t cap = LOAD(&w[EXT_CAPACITY]), fresh = LOAD(&w[EXT_FRESH]), head = LOAD(&w[EXT_HEAD]);
    uint64_t id = (uint64_t)LOAD(&w[EXT_POOL_ID_LOW]) | (uint64_t)LOAD(&w[EXT_POOL_ID_HIGH]) << 32;
    return LOAD_ACQ(&w[EXT_MAGIC]) == EXTENT_MAGIC && cap == e->cap && fresh <= cap && head <= fresh && id == c->geo.pool_id;
}

static int uid_trusted(const Core *c, uid_t uid)
{
    if (uid == c->main_uid)
        return 1;
    for (int i = 0; i < c->n_trusted; i++)
        if (uid == c->trusted[i])
            return 1;
    return 0;
}

/* Map extent k, whose table entry says (base, cap). 0 mapped; -1 failure. */
static int map_extent(Core *c, int k, uint64_t base, uint64_t cap, Failure *f)
{
    const Extent *prev = &c->ext[k - 1];
    if (cap == 0 || cap > 0xFFFFFFFFull || base != prev->first + prev->cap || base + cap > 0x100000000ull)
        return fail(f, E_DAMAGED, "extent table entry does not follow the previous extent");
    size_t need = extent_bytes((uint32_t)cap, c->geo.stride, c->geo.alignment);
    if (!need)
        return fail(f, E_DAMAGED, "an extent's geometry overflows");
    char name[512];
    snprintf(name, sizeof name, "%s%d", c->extent_prefix, k);
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return fail(f, E_OS, "cannot open a growth extent (unlinked? run recover())");
    struct stat st;
    if (fstat(fd, &st) < 0) {
        fail(f, E_OS, "cannot stat a growth extent");
        close(fd);
        return -1;
    }
    if (!uid_trusted(c, st.st_uid)) {
        close(fd);
        f->code = E_UNTRUSTED;
        f->number = k;
        f->uid = (unsigned int)st.st_uid;
        return -1;
    }
    if ((size_t)st.st_size < need) {
        close(fd);
        return fail(f, E_DAMAGED, "a growth extent is smaller than its capacity needs");
    }
    void *p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        fail(f, E_OS, "cannot map a growth extent");
        close(fd);
        return -1;
    }
    close(fd);
    Extent *e = &c->ext[k];
    *e = (Extent){.base = p, .size = need, .first = base, .cap = (uint32_t)cap,
                  .data = extent_data_offset((uint32_t)cap, c->geo.alignment), .own_mapping = 1};
    if (!extent_sane(c, e)) {
        munmap(p, need);
        *e = (Extent){0};
        return fail(f, E_DAMAGED, "a growth extent's header is damaged or belongs to another pool "
                                  "(unlinked and created again? attach it again)");
    }
    return 0;
}

/* Map the extents other processes added, up to the published count. 0 or -1 (f filled). */
static int map_extents_to(Core *c, uint64_t count, Failure *f)
{
    if (count > MAX_EXTENTS)
        return fail(f, E_DAMAGED, "extent count beyond the table");
    while ((uint64_t)c->n_ext < count) {
        int k = c->n_ext;
        const uint64_t *entry = (const uint64_t *)(c->main + EXTENT_TABLE_OFFSET) + 2 * k;
        if (map_extent(c, k, LOAD(&entry[0]), LOAD(&entry[1]), f) < 0)
            return -1;
        c->n_ext = k + 1;
    }
    return 0;
}

static inline int map_new_extents_quietly(Core *c, Failure *f)
{
    uint64_t count = LOAD_ACQ(&c->hdr[HDR_EXTENTS]);
    return count == (uint64_t)c->n_ext ? 0 : map_extents_to(c, count, f);
}

/* The same, raising: only where no lock is held. */
static inline int map_new_extents(Core *c)
{
    Failure f = {0};
    if (map_new_extents_quietly(c, &f) < 0) {
        raise_failure(c, &f);
        return -1;
    }
    return 0;
}

/* The extent and local index of a pool-wide index; NULL when there is none
 * (nothing raised: the lock may be held). */
static inline Extent *locate(Core *c, uint64_t index, uint32_t *local)
{
    Extent *e = &c->ext[0];
    if (index < e->cap) {
        *local = (uint32_t)index;
        return e;
    }
    Extent *last = &c->ext[c->n_ext - 1];
    if (index >= last->first + last->cap) {
        Failure f = {0};
        if (map_new_extents_quietly(c, &f) < 0)
            return NULL;
        last = &c->ext[c->n_ext - 1];
        if (index >= last->first + last->cap)
            return NULL;
    }
    int lo = 0, hi = c->n_ext - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->ext[mid].first <= index)
            lo = mid;
        else
            hi = mid - 1;
    }
    *local = (uint32_t)(index - c->ext[lo].first);
    return &c->ext[lo];
}

/* Read the header's geometry once into `g` and check it (discipline a, c): 1 sane. */
static int header_geometry(const uint8_t *main, size_t main_size, Geometry *g)
{
    if (main_size < HEADER_SIZE)
        return 0;
    const uint64_t *h = (const uint64_t *)main, *t = (const uint64_t *)(main + EXTENT_TABLE_OFFSET);
    uint64_t magic = LOAD(&h[HDR_MAGIC]), version = LOAD(&h[HDR_VERSION]), slot = LOAD(&h[HDR_SLOT_SIZE]);
    uint64_t stride = LOAD(&h[HDR_STRIDE]), align = LOAD(&h[HDR_ALIGNMENT]), n = LOAD(&h[HDR_EXTENTS]);
    uint64_t base0 = LOAD(&t[0]), cap0 = LOAD(&t[1]), id = LOAD(&h[HDR_POOL_ID]);
    if (magic != MAGIC || version != LAYOUT_VERSION || align < 8 || align > 4096 || (align & (align - 1)) || slot == 0
        || slot > 0xFFFFFFFFull || stride < slot || stride > 0xFFFFFFFFull || stride % align || n < 1 || n > MAX_EXTENTS
        || base0 != 0 || cap0 == 0 || cap0 > 0xFFFFFFFFull || id == 0)
        return 0;
    size_t bytes = extent_bytes((uint32_t)cap0, (uint32_t)stride, (uint32_t)align), total;
    if (!bytes || add_overflows(bytes, HEADER_SIZE, &total) || total > main_size)
        return 0;
    *g = (Geometry){.slot_size = (uint32_t)slot, .stride = (uint32_t)stride, .alignment = (uint32_t)align,
                    .cap0 = (uint32_t)cap0, .pool_id = id};
    return 1;
}

static void unmap_extents(Core *c)
{
    for (int k = 1; k < c->n_ext; k++)
        if (c->ext[k].own_mapping && c->ext[k].base)
            munmap(c->ext[k].base, c->ext[k].size);
    memset(c->ext, 0, sizeof c->ext);
    c->n_ext = 0;
}

/* Ask Python's growth policy for room (no lock held: it runs Python code).
 * 1 grew (or someone did), 0 may not grow, -1 exception. */
static int ask_growth(Core *c, Py_ssize_t wanted)
{
    if (c->grow == Py_None)
        return 0;
    PyObject *arg = PyLong_FromSsize_t(wanted);
    if (!arg)
        return -1;
    PyObject *grow = Py_NewRef(c->grow);
    PyObject *r = PyObject_CallOneArg(grow, arg);
    Py_DECREF(grow);
    Py_DECREF(arg);
    if (!r)
        return -1;
    int grew = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (grew > 0 && map_new_extents(c) < 0)
        return -1;
    return grew;
}

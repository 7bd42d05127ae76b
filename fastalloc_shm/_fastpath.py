"""The hot path of a shared-memory pool: closures over values bound once.

An allocate, get or release is some thirty bytecodes; fetching a dozen
attributes from `self` on each call would add a fifth to that. So when a pool
opens (or a forked child re-registers), `bind(pool)` builds these functions
over local copies of everything they touch and stores them on the instance,
where they shadow the class's methods. They handle extent 0 (all of a
FixedPool) and hand anything else to the class's general method: another
extent, growth, a full pool, a bad handle.

The steps and their order are those of _layout.py (slot states) and
_lock.py (the client record around the semaphore); change them together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
import posix_ipc

from . import _codec, _fault
from . import _layout as L

if TYPE_CHECKING:
    from .pool import SharedPool
    from .threadlocal import ThreadLocalPool

HOT_METHODS = ("allocate", "get", "set", "release")
# Values shorter than this are copied out of the slot before unpacking (cheaper
# for small ones); longer ones are unpacked in place.
_COPY_BELOW = 1024
_MASK = 0xFFFFFFFF
_FAULTS = _fault.ACTIVE
# Handles this layout issues have generations in 1..2**31-1; any other int is
# garbage and must not reach get()'s one-word generation compare (a slot never
# used has generation word 0, a slot not readable has bit 31 set).
_HANDLE_MIN = 1 << 32
_HANDLE_LIMIT = L.UNREADABLE << 32


def unbind(pool: SharedPool) -> None:
    """Drop the closures (and the views they hold): the class methods apply again."""
    for name in HOT_METHODS:
        pool.__dict__.pop(name, None)


def bind(pool: SharedPool) -> None:
    """Install allocate/get/release closures for `pool`'s extent 0."""
    pool.get = _make_get(pool)
    pool.set = _make_set(pool)
    pool.allocate = _make_allocate(pool)
    pool.release = _make_release(pool)


def bind_threadlocal(pool: ThreadLocalPool) -> None:
    """ThreadLocalPool: get and set as any pool; allocate/release through the magazine."""
    pool.get = _make_get(pool)
    pool.set = _make_set(pool)
    pool.allocate = _make_threadlocal_allocate(pool)
    pool.release = _make_threadlocal_release(pool)


def _make_get(pool: SharedPool):
    e = pool._e0
    u, mm, view, cap, meta, data, stride = e.u, e.mm, e.view, e.cap, e.meta_w, e.data, e.stride
    general = type(pool).get.__get__(pool)
    unpackb = msgpack.unpackb

    def get(handle: int) -> Any:
        try:
            index = handle & _MASK
            # Exactly int, as set() and release() require: one handle rule for every method.
            if index < cap and _HANDLE_MIN <= handle < _HANDLE_LIMIT and type(handle) is int:
                m = meta + (index << 2)
                seq = u[m + 3]
                generation = handle >> 32
                if u[m] == generation and not seq & 1:
                    off = data + index * stride
                    n = u[m + 2]
                    # Small values: copy out, then unpack. Large ones: unpack straight from
                    # shared memory (one copy less) and discard the result if a set() raced.
                    value = unpackb(mm[off:off + n] if n < _COPY_BELOW else view[off:off + n],
                                    raw=False, strict_map_key=False)
                    if u[m + 3] == seq and u[m] == generation:
                        return value
        except Exception:  # noqa: BLE001 - not an int, torn bytes, a closed pool: the general path says which
            pass
        return general(handle)

    get.__doc__ = type(pool).get.__doc__
    return get


def _make_set(pool: SharedPool):
    u, q, e = pool._u, pool._q, pool._e0
    mm, cap, meta, data, stride = e.mm, e.cap, e.meta_w, e.data, e.stride
    gate_acquire, gate_release, sem_acquire, sem_release, wait, state_w = _lock_parts(pool)
    pack, slot_size, too_large = pool._pack, pool._slot_size, pool._too_large
    general = type(pool).set.__get__(pool)
    busy, wants, idle, epoch = posix_ipc.BusyError, L.CLIENT_WANTS, L.CLIENT_IDLE, L.HDR_LOCK_ACQUISITIONS

    def set(handle: int, value: Any) -> None:  # noqa: A001 - the pool method's name
        if type(handle) is not int or handle & _MASK >= cap or not _HANDLE_MIN <= handle < _HANDLE_LIMIT:
            return general(handle, value)
        try:
            packed = pack(value)
        except Exception as exc:
            raise _codec.pack_error(value, exc) from None
        n = len(packed)
        if n > slot_size:
            raise too_large(n)
        index = handle & _MASK
        generation = handle >> 32
        m = meta + (index << 2)
        gate_acquire()
        u[state_w] = wants
        try:
            sem_acquire(0)
        except busy:
            wait()
        q[epoch] += 1
        if u[m] != generation:  # stale, torn or garbage: the general path sorts it out
            sem_release()
            u[state_w] = idle
            gate_release()
            return general(handle, value)
        seq = u[m + 3] | 1
        u[m + 3] = seq
        off = data + index * stride
        if _FAULTS:
            mm[off:off + n // 2] = packed[: n // 2]
            _fault.hit("set.writing")
        mm[off:off + n] = packed
        u[m + 2] = n
        u[m + 3] = (seq + 1) & _MASK
        sem_release()
        u[state_w] = idle
        gate_release()

    set.__doc__ = type(pool).set.__doc__
    return set


def _lock_parts(pool: SharedPool):
    lock = pool._lock
    return (lock.gate.acquire, lock.gate.release, lock.sem.acquire, lock.sem.release, lock._wait,
            lock.state_word)


def _make_allocate(pool: SharedPool):
    u, q, e = pool._u, pool._q, pool._e0
    mm = e.mm
    cap, meta, data, stride, top_w, fresh_w, fl = e.cap, e.meta_w, e.data, e.stride, e.top_w, e.fresh_w, e.fl_w
    gate_acquire, gate_release, sem_acquire, sem_release, wait, state_w = _lock_parts(pool)
    pack, slot_size, too_large = pool._pack, pool._slot_size, pool._too_large
    writing_tag, allocated_tag = pool._writing_tag, pool._allocated_tag
    general = type(pool).allocate.__get__(pool)
    busy, wants, idle = posix_ipc.BusyError, L.CLIENT_WANTS, L.CLIENT_IDLE
    single, peak, other = L.HDR_SINGLE_ALLOCATIONS, L.HDR_PEAK, L.HDR_LOCK_ACQUISITIONS
    unreadable, generation_mask, in_use = L.UNREADABLE, L.GENERATION_MASK, L.in_use

    def allocate(value: Any) -> int:
        try:
            packed = pack(value)
        except Exception as exc:
            raise _codec.pack_error(value, exc) from None
        n = len(packed)
        if n > slot_size:
            raise too_large(n)
        gate_acquire()
        u[state_w] = wants
        try:
            sem_acquire(0)
        except busy:
            wait()
        if _FAULTS:
            _fault.hit("lock.acquired")
        top = u[top_w]
        if top:
            # Popping extent 0's free list never raises the peak: the list was
            # empty when the fresh mark last moved, so peak >= fresh >= in use;
            # unless reset_statistics() restarted the peak at the usage of the time.
            local = u[fl + top - 1]
            m = meta + (local << 2)
            u[m + 1] = writing_tag
            if _FAULTS:
                _fault.hit("alloc.marked")
            u[top_w] = top - 1
            if q[peak] < u[fresh_w]:
                used = in_use(q) + 1  # this allocation is counted below
                if used > q[peak]:
                    q[peak] = used
        else:
            local = u[fresh_w]
            if local == cap:  # extent 0 is full: other extents, growth or PoolExhausted
                q[other] += 1  # every critical section moves the lock epoch
                sem_release()
                u[state_w] = idle
                gate_release()
                return general(value)
            m = meta + (local << 2)
            u[m] = 1 | unreadable
            u[m + 1] = writing_tag
            if _FAULTS:
                _fault.hit("alloc.marked")
            u[fresh_w] = local + 1
            if local + 1 > q[peak]:
                q[peak] = local + 1  # the free list is empty: every earlier slot is in use
        q[single] += 1
        if _FAULTS:
            _fault.hit("alloc.popped")
        sem_release()
        if _FAULTS:
            _fault.hit("lock.released")
        u[state_w] = idle
        gate_release()
        off = data + local * stride
        if _FAULTS:
            mm[off:off + n // 2] = packed[: n // 2]
            _fault.hit("alloc.writing")
        mm[off:off + n] = packed
        u[m + 2] = n
        generation = u[m] & generation_mask
        u[m] = generation  # published: get() reads it from here on
        u[m + 1] = allocated_tag
        return generation << 32 | local

    allocate.__doc__ = type(pool).allocate.__doc__
    return allocate


def _make_release(pool: SharedPool):
    u, q, e = pool._u, pool._q, pool._e0
    cap, meta, top_w, fl = e.cap, e.meta_w, e.top_w, e.fl_w
    gate_acquire, gate_release, sem_acquire, sem_release, wait, state_w = _lock_parts(pool)
    general = type(pool).release.__get__(pool)
    busy, wants, idle = posix_ipc.BusyError, L.CLIENT_WANTS, L.CLIENT_IDLE
    single, other = L.HDR_SINGLE_DEALLOCATIONS, L.HDR_LOCK_ACQUISITIONS
    unreadable, last = L.UNREADABLE, L.MAX_SLOT_GENERATION

    def release(handle: int) -> None:
        if type(handle) is not int or handle & _MASK >= cap or not _HANDLE_MIN <= handle < _HANDLE_LIMIT:
            return general(handle)
        local = handle & _MASK
        generation = handle >> 32
        m = meta + (local << 2)
        gate_acquire()
        u[state_w] = wants
        try:
            sem_acquire(0)
        except busy:
            wait()
        if _FAULTS:
            _fault.hit("lock.acquired")
        if u[m] != generation:  # stale, torn or garbage: the general path sorts it out
            q[other] += 1  # every critical section moves the lock epoch
            sem_release()
            u[state_w] = idle
            gate_release()
            return general(handle)
        u[m] = (generation + 1 if generation < last else 1) | unreadable
        u[m + 1] = 0
        if _FAULTS:
            _fault.hit("release.freed")
        top = u[top_w]
        u[fl + top] = local
        u[top_w] = top + 1
        q[single] += 1
        sem_release()
        if _FAULTS:
            _fault.hit("lock.released")
        u[state_w] = idle
        gate_release()

    release.__doc__ = type(pool).release.__doc__
    return release


def _make_threadlocal_allocate(pool: ThreadLocalPool):
    e = pool._e0
    u, mm, cap, meta, data, stride = e.u, e.mm, e.cap, e.meta_w, e.data, e.stride
    local_state, pack, slot_size, too_large = pool._local, pool._pack, pool._slot_size, pool._too_large
    magazine_of, allocated_tag = pool._magazine, pool._allocated_tag
    general = type(pool).allocate.__get__(pool)
    generation_mask = L.GENERATION_MASK

    def allocate(value: Any) -> int:
        try:
            magazine = local_state.magazine
        except AttributeError:
            magazine = magazine_of()
        slots = magazine.slots
        if not slots or slots[-1] >= cap:  # refill, or a slot of another extent
            return general(value)
        try:
            packed = pack(value)
        except Exception as exc:
            raise _codec.pack_error(value, exc) from None
        n = len(packed)
        if n > slot_size:
            raise too_large(n)
        index = slots.pop()
        net = magazine.baseline + magazine.deallocations - len(slots)
        if net > magazine.high:  # this thread's share of the peak, added when it publishes
            magazine.high = net
        m = meta + (index << 2)
        off = data + index * stride
        mm[off:off + n] = packed
        u[m + 2] = n
        generation = u[m] & generation_mask
        u[m] = generation  # published
        u[m + 1] = allocated_tag
        return generation << 32 | index

    allocate.__doc__ = type(pool).allocate.__doc__
    return allocate


def _make_threadlocal_release(pool: ThreadLocalPool):
    e = pool._e0
    u, cap, meta = e.u, e.cap, e.meta_w
    local_state, magazine_of, drain, batch = pool._local, pool._magazine, pool._drain, pool._batch
    cached_tag, general = pool._cached_tag, type(pool).release.__get__(pool)
    unreadable, last = L.UNREADABLE, L.MAX_SLOT_GENERATION

    def release(handle: int) -> None:
        if type(handle) is not int or handle & _MASK >= cap or not _HANDLE_MIN <= handle < _HANDLE_LIMIT:
            return general(handle)
        index = handle & _MASK
        generation = handle >> 32
        m = meta + (index << 2)
        if u[m] != generation:
            return general(handle)
        # Cached first: a crash in between leaves a cached slot with a readable
        # old value, which recovery frees; never "allocated but unreadable".
        u[m + 1] = cached_tag
        u[m] = (generation + 1 if generation < last else 1) | unreadable
        try:
            magazine = local_state.magazine
        except AttributeError:
            magazine = magazine_of()
        slots = magazine.slots
        slots.append(index)
        magazine.deallocations += 1
        if len(slots) > 2 * batch:
            drain(magazine, len(slots) - batch)

    release.__doc__ = type(pool).release.__doc__
    return release

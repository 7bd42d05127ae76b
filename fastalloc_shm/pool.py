"""FixedPool: a fixed number of slots in one shared segment, and the machinery every kind shares.

A pool owns (as creator) or uses (as attacher) three kinds of system object,
all named with the prefix `fastalloc.`: the main segment, its lock semaphore
and, for a GrowingPool, extent segments. `close()` unmaps them in this
process; `unlink()` removes them from the system (CPython's resource_tracker
never sees them, so no process removes them behind another's back).

The hot path (allocate, get, set, release) is kept flat: values are packed
before the lock is taken, the lock is one semaphore round trip, and slot
fields are read and written through memoryviews bound at attach time.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import secrets
import struct
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import msgpack

from . import _callables, _codec, _fastpath, _fault, _names, _trust
from . import _layout as L
from . import _segment as seg
from ._extent import Extent
from ._growth import add_extent_locked
from ._header import HalfCreated, open_ready
from ._liveness import start_ticks
from ._lock import ClientInfo, FileLock, RobustLock, read_clients
from .config import PoolConfig
from .errors import (
    ConfigError,
    FastallocError,
    IncompatiblePool,
    InvalidHandle,
    PoolExhausted,
    PoolExistsError,
    PoolNotFound,
    SerializationError,
    StaleHandle,
    ValueTooLarge,
)
from .recovery import OwnerLiveness, Tally, rebuild_extent
from .report import RecoveryReport
from .stats import PoolStatistics

_MASK = 0xFFFFFFFF
_unpackb = msgpack.unpackb
_FAULTS = _fault.ACTIVE
_UNREADABLE, _GENERATION_MASK = L.UNREADABLE, L.GENERATION_MASK
# Bounded retries of a lock-free get() racing a set() on the same slot.
READ_RETRIES = 10_000

_open_pools: weakref.WeakSet[SharedPool] = weakref.WeakSet()
_log = logging.getLogger("fastalloc_shm")


def _after_fork_in_child() -> None:
    for pool in list(_open_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SharedPool:
    """What every shared-memory pool kind shares; use FixedPool, GrowingPool,
    ThreadLocalPool or ThreadSafePool."""

    kind: ClassVar[str] = "fixed"
    may_grow: ClassVar[bool] = False
    measure_lock_wait: ClassVar[bool] = False
    spin_lock: ClassVar[bool] = False

    # Class-level defaults: close() is safe even if __init__ failed half-way.
    _closed = True
    _creator = False
    _segment: seg.Segment | None = None
    _sem = None
    _lock: RobustLock | None = None
    _file_lock: FileLock | None = None
    _extents: list[Extent] = []
    _q: memoryview | None = None
    _u: memoryview | None = None
    _name = ""
    _trusted: frozenset[int] = frozenset()

    # -- construction -------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        *,
        capacity: int | None = None,
        slot_size: int | None = None,
        config: PoolConfig | None = None,
        exist_ok: bool = False,
        trusted_uids: Iterable[int] | None = None,
        **overrides: Any,
    ) -> SharedPool:
        """Create the pool `name` (exclusively), or attach it when `exist_ok` and compatible.

        An existing pool is attached only when its owner is trusted (see `attach`) and its
        kind and every config field match; otherwise IncompatiblePool names the first difference.

        >>> pool = FixedPool.create("jobs", capacity=10_000, slot_size=256)  # doctest: +SKIP
        """
        name = _names.validate(name)
        cfg = cls._prepare_config(_build_config(capacity, slot_size, config, overrides))
        for _ in range(2):
            try:
                return cls._create_new(name, cfg)
            except PoolExistsError:
                if not exist_ok:
                    raise PoolExistsError(
                        f"pool {name!r} exists already; attach it, unlink it first, or pass exist_ok=True"
                    ) from None
            try:
                pool = cls.attach(name, trusted_uids=trusted_uids)
            except HalfCreated:
                unlink(name)
                continue
            except PoolNotFound:
                continue  # unlinked between our create and attach: try again
            pool._check_compatible(cfg)
            return pool
        raise PoolExistsError(f"pool {name!r}: could neither create nor attach it; another process keeps replacing it")

    @classmethod
    def _prepare_config(cls, cfg: PoolConfig) -> PoolConfig:
        """The config this kind runs with (validated for the kind)."""
        if not cls.may_grow and (cfg.max_capacity not in (None, cfg.capacity) or cfg.growth_strategy.kind != "none"):
            raise ConfigError(f"growth_strategy: {cls.__name__} does not grow; use GrowingPool")
        return cfg

    @classmethod
    def _create_new(cls, name: str, cfg: PoolConfig) -> SharedPool:
        record = msgpack.packb(cfg.to_record(), use_bin_type=True)
        if len(record) > L.MAX_CONFIG_BYTES:
            raise ConfigError(f"config: {len(record)} bytes recorded, at most {L.MAX_CONFIG_BYTES} fit in the header")
        stride = L.stride_for(cfg.slot_size, cfg.alignment)
        size = L.main_segment_size(cfg.capacity, stride, cfg.alignment)
        segment = seg.create_segment(_names.segment(name), size, cfg.mode, f"pool {name!r}")
        pool = cls.__new__(cls)
        pool_id = secrets.randbits(64) or 1
        try:
            q = memoryview(segment.mm).cast("Q")
            q[L.HDR_MAGIC] = L.MAGIC
            # Before the semaphore exists, so whoever finds the segment can name it (see unlink).
            q[L.HDR_POOL_ID] = pool_id
            q[L.HDR_CREATOR_PID] = os.getpid()
            q[L.HDR_CREATOR_START] = start_ticks(os.getpid())
            q[L.HDR_VERSION] = L.LAYOUT_VERSION
            q[L.HDR_KIND] = L.KIND_CODES[cls.kind]
            q[L.HDR_SLOT_SIZE] = cfg.slot_size
            q[L.HDR_STRIDE] = stride
            q[L.HDR_ALIGNMENT] = cfg.alignment
            q[L.HDR_CAPACITY] = cfg.capacity
            q[L.HDR_EXTENTS] = 1
            base_w, cap_w = L.extent_table_words(0)
            q[base_w], q[cap_w] = 0, cfg.capacity
            q[L.HDR_CONFIG_LEN] = len(record)
            segment.mm[L.CONFIG_OFFSET:L.CONFIG_OFFSET + len(record)] = record
            q.release()
            sem = seg.create_semaphore(_names.semaphore(name, pool_id), cfg.mode)
            if not seg.still_named(segment):
                # An unlink() ran meanwhile and may have read no id yet: the semaphore is ours to remove.
                seg.unlink_semaphore(_names.semaphore(name, pool_id))
            pool._trusted = _trust.trusted_uids(())
            pool._open(name, segment, sem, cfg, creating=True)
            if cfg.pre_initialize:
                pool._pre_initialize()
            if cfg.huge_pages:
                pool._advise_huge_pages()
            pool._q[L.HDR_READY] = 1
        except BaseException:
            pool._discard_half_created(segment)
            raise
        return pool

    def _check_compatible(self, cfg: PoolConfig) -> None:
        """create(exist_ok=True) found this pool (of this kind: attach checked): every field must match."""
        difference = self._config.first_difference(cfg)
        if difference is not None:
            self.close()
            raise IncompatiblePool(
                f"pool {self._name!r} exists with {difference}; unlink it or create it with the same settings"
            )

    def _discard_half_created(self, segment: seg.Segment) -> None:
        # If our name was unlinked meanwhile, it may be another pool's by now: leave it
        # (whoever unlinked ours removed, or will remove, our semaphore with it).
        ours = seg.still_named(segment)
        self.close()
        segment.close()
        if ours:
            unlink(self._name or segment.posix_name.removeprefix("/" + _names.PREFIX))

    @classmethod
    def attach(cls, name: str, *, trusted_uids: Iterable[int] | None = None) -> SharedPool:
        """Attach the existing pool `name` from any process.

        Its segments and semaphore must be owned by this process's euid, root, or a uid
        in `trusted_uids` (default: `$FASTALLOC_TRUSTED_UIDS`, comma-separated); anyone
        can create a name in /dev/shm first, and a pool's config names callables.
        """
        name = _names.validate(name)
        trusted = _trust.trusted_uids(trusted_uids)
        segment, cfg, kind = open_ready(name, trusted)
        pool_cls = cls
        if cls is SharedPool:
            from .kinds import POOL_KINDS

            pool_cls = POOL_KINDS[kind]
        elif kind != cls.kind:
            segment.close()
            from .kinds import POOL_KINDS

            raise IncompatiblePool(
                f"pool {name!r} is a {POOL_KINDS[kind].__name__}; attach it with that class or fastalloc_shm.attach()"
            )
        pool = pool_cls.__new__(pool_cls)
        pool._trusted = trusted
        try:
            pool_id = memoryview(segment.mm).cast("Q")[L.HDR_POOL_ID]
            sem = seg.open_semaphore(_names.semaphore(name, pool_id), f"pool {name!r}", trusted)
            pool._open(name, segment, sem, cfg, creating=False)
        except BaseException:
            pool.close()
            segment.close()
            raise
        return pool

    def _open(self, name: str, segment: seg.Segment, sem: Any, cfg: PoolConfig, creating: bool) -> None:
        self._name = name
        self._creator = creating
        self._segment = segment
        self._sem = sem
        self._config = cfg
        self._slot_size = cfg.slot_size
        self._stride = L.stride_for(cfg.slot_size, cfg.alignment)
        self._q = memoryview(segment.mm).cast("Q")
        self._u = memoryview(segment.mm).cast("I")
        self._pack = _codec.pack_function()
        self._file_lock = FileLock(seg.segment_path(segment.posix_name))
        self._lock = RobustLock(
            name, sem, self._u, self._q, self._file_lock, cfg.lock_timeout, self._repair_after_takeover,
            measure_wait=self.measure_lock_wait, spin=self.spin_lock,
        )
        self._extents = [Extent(0, 0, segment, L.HEADER_SIZE, self._u, cfg.capacity, self._stride,
                                cfg.alignment, owns_segment=False)]
        self._bases = [0]
        if creating:
            self._extents[0].init_header()
        self._e0 = self._extents[0]
        self._grows = self.may_grow and cfg.growth_strategy.kind != "none"
        self._map_new_extents()
        self._lock.register()
        self._set_pid(os.getpid())
        self._closed = False
        self._bind_fast_path()
        _open_pools.add(self)

    def _set_pid(self, pid: int) -> None:
        self._pid = pid
        self._writing_tag = L.WRITING_TAG | pid
        self._allocated_tag = L.ALLOCATED_TAG | pid

    def _bind_fast_path(self) -> None:
        _fastpath.bind(self)

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        self._set_pid(os.getpid())
        self._creator = False  # the child never unlinks on context exit
        self._lock.after_fork_in_child()
        self._bind_fast_path()

    def _map_new_extents(self) -> None:
        """Map extents other processes added since we last looked (lazily, on demand)."""
        q = self._q
        count = q[L.HDR_EXTENTS]
        while len(self._extents) < count:
            number = len(self._extents)
            base_w, cap_w = L.extent_table_words(number)
            base, cap = q[base_w], q[cap_w]
            posix_name = _names.extent(self._name, number)
            segment = seg.open_segment(posix_name, f"pool {self._name!r} extent {number}", self._trusted)
            ext = Extent(number, base, segment, 0, memoryview(segment.mm).cast("I"), cap, self._stride,
                         self._config.alignment, owns_segment=True)
            if not ext.header_ok():
                ext.close()
                raise IncompatiblePool(f"pool {self._name!r}: extent {number} ({posix_name}) is damaged; run recover()")
            self._extents.append(ext)
            self._bases.append(base)

    # -- properties -----------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        """Slots the pool has now."""
        self._check_open()
        return self._q[L.HDR_CAPACITY]

    @property
    def slot_size(self) -> int:
        return self._slot_size

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def nbytes(self) -> int:
        """Bytes of shared memory the pool occupies (every extent)."""
        self._check_open()
        self._map_new_extents()
        return self._segment.size + sum(e.segment.size for e in self._extents[1:])

    def __len__(self) -> int:
        """Slots in use now."""
        self._check_open()
        return L.in_use(self._q)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self.capacity}, slot_size={self._slot_size}"
        return f"{type(self).__name__}({self._name!r}, {state})"

    # -- the hot path -----------------------------------------------------------

    # While a pool is open, _fastpath's closures stand in for allocate, get and
    # release; they handle extent 0 and call these general methods for the rest.

    def allocate(self, value: Any) -> int:
        """Store `value` in a free slot and return its handle.

        >>> h = pool.allocate({"id": 1})  # doctest: +SKIP
        """
        self._check_open()
        data = self._pack_checked(value)
        (e, local), = self._take_many(1, self._writing_tag)
        return self._write_new(e, local, data)

    def try_allocate(self, value: Any) -> int | None:
        """Like allocate(), but None instead of PoolExhausted."""
        try:
            return self.allocate(value)
        except PoolExhausted:
            return None

    def get(self, handle: int) -> Any:
        """The value stored under `handle` (a fresh Python object)."""
        self._check_open()
        return self._read(handle)

    def set(self, handle: int, value: Any) -> None:
        """Replace the value under `handle` in place (readers see old or new, never a mix)."""
        self._check_open()
        try:
            data = self._pack(value)
        except Exception as exc:
            raise _codec.pack_error(value, exc) from None
        n = len(data)
        if n > self._slot_size:
            raise self._too_large(n)
        e, local = self._locate(handle)
        u = e.u
        m = e.meta_w + (local << 2)
        lock = self._lock
        lock.acquire()
        try:
            state = _live_state(u, m, handle >> 32)
            if state < 0:
                raise self._bad_handle(handle)
            seq = u[m + 3] | 1
            u[m + 3] = seq
            off = e.data + local * e.stride
            if _FAULTS:
                e.mm[off:off + n // 2] = data[: n // 2]
                _fault.hit("set.writing")
            e.mm[off:off + n] = data
            u[m + 2] = n
            u[m + 3] = (seq + 1) & _MASK
            if state == L.TORN:
                u[m] = handle >> 32
                u[m + 1] = L.ALLOCATED_TAG | (u[m + 1] & L.OWNER_MASK)
        finally:
            lock.release()

    def release(self, handle: int) -> None:
        """Give the slot back; `handle` is stale from now on."""
        self._check_open()
        e, local = self._locate(handle)
        with self._lock:
            if _live_state(e.u, e.meta_w + (local << 2), handle >> 32) < 0:
                raise self._bad_handle(handle)
            self._free_locked(e, local, handle >> 32)
            self._q[L.HDR_DEALLOCATIONS] += 1

    # -- batches ------------------------------------------------------------------

    def allocate_many(self, values: Iterable[Any]) -> list[int]:
        """Allocate one slot per value under a single lock acquisition; all or nothing."""
        self._check_open()
        packed = [self._pack_checked(v) for v in values]
        if not packed:
            return []
        taken = self._take_many(len(packed), L.WRITING_TAG | self._pid)
        handles = []
        for (e, local), data in zip(taken, packed, strict=True):
            handles.append(self._write_new(e, local, data))
        return handles

    def release_many(self, handles: Iterable[int]) -> None:
        """Release many handles under one lock acquisition. Every handle is checked
        first; if any is stale or invalid, none is released."""
        self._check_open()
        handles = list(handles)
        if not handles:
            return
        located = [self._locate(h) for h in handles]
        if len(set(handles)) != len(handles):
            raise self._bad_handle(next(h for h in handles if handles.count(h) > 1))
        with self._lock:
            for handle, (e, local) in zip(handles, located, strict=True):
                m = e.meta_w + (local << 2)
                if e.u[m] != handle >> 32 and _live_state(e.u, m, handle >> 32) < 0:
                    raise self._bad_handle(handle)
            for handle, (e, local) in zip(handles, located, strict=True):
                u, m = e.u, e.meta_w + (local << 2)
                u[m] = L.next_generation(handle >> 32) | _UNREADABLE
                u[m + 1] = L.FREE
                top = u[e.top_w]
                u[e.fl_w + top] = local
                u[e.top_w] = top + 1
            self._q[L.HDR_DEALLOCATIONS] += len(handles)
            self._q[L.HDR_FREE_HINT] = 0

    @contextmanager
    def borrowed(self, value: Any) -> Iterator[int]:
        """Allocate `value` for the duration of a with-block; released on exit."""
        self._check_open()
        handle = self.allocate(value)
        try:
            yield handle
        finally:
            self.release(handle)

    def acquire(self) -> int:
        """A slot without a value from you: `create()` the first time a slot is used,
        `reset(previous)` when it is reused (config.reset), or the pre-initialized value."""
        self._check_open()
        create, reset = self._reset_callables()
        (e, local), = self._take_many(1, L.WRITING_TAG | self._pid)
        u, m = e.u, e.meta_w + (local << 2)
        previous = _NOTHING
        if u[m + 2]:
            off = e.data + local * e.stride
            try:
                previous = _unpackb(e.mm[off:off + u[m + 2]], raw=False, strict_map_key=False)
            except ValueError:
                previous = _NOTHING
        try:
            if previous is _NOTHING:
                value = create()
            elif reset is not None:
                result = reset(previous)
                value = previous if result is None else result
            else:
                value = previous
            data = self._pack_checked(value)
        except BaseException:
            self._unwind_taken([(e, local)])
            raise
        return self._write_new(e, local, data)

    # -- internals of the operations ------------------------------------------------

    def _pack_checked(self, value: Any) -> bytes:
        try:
            data = self._pack(value)
        except Exception as exc:
            raise _codec.pack_error(value, exc) from None
        if len(data) > self._slot_size:
            raise self._too_large(len(data))
        return data

    def _write_new(self, e: Extent, local: int, data: bytes) -> int:
        """Write a value into a slot this process just took, then publish it as allocated."""
        u, m = e.u, e.meta_w + (local << 2)
        off = e.data + local * e.stride
        e.mm[off:off + len(data)] = data
        u[m + 2] = len(data)
        generation = u[m] & _GENERATION_MASK
        u[m] = generation  # published
        u[m + 1] = self._allocated_tag
        return generation << 32 | (e.base + local)

    def _take_many(self, count: int, tag: int, minimum: int | None = None, counts_as_allocation: bool = True,
                   also_locked: Callable[[], None] | None = None) -> list[tuple[Extent, int]]:
        """Take `count` free slots (at least `minimum`, default all) under one lock
        acquisition, marking each with `tag`; PoolExhausted if fewer are free.
        `also_locked` runs under the same acquisition."""
        taken: list[tuple[Extent, int]] = []
        minimum = count if minimum is None else minimum
        with self._lock:
            while len(taken) < count:
                try:
                    e = self._extent_with_room_locked()
                except BaseException:  # growth failed (no room, a bad growth function): all or nothing
                    self._unwind_locked(taken)
                    raise
                if e is None:
                    if len(taken) >= minimum:
                        break
                    self._unwind_locked(taken)
                    # One per slot refused, as total_allocations counts one per slot (and RedisPool does).
                    self._q[L.HDR_FAILURES] += minimum
                    raise self._exhausted(count)
                while len(taken) < count:
                    local = self._pop_locked(e, tag)
                    if local < 0:
                        break
                    taken.append((e, local))
                    if _FAULTS:
                        _fault.hit("batch.taking")
            if counts_as_allocation:
                self._q[L.HDR_ALLOCATIONS] += len(taken)
                self._raise_peak_locked()
            if also_locked is not None:
                also_locked()
        return taken

    def _pop_locked(self, e: Extent, tag: int) -> int:
        """Pop one slot of extent `e` (free list, then fresh ones) and mark it; -1 if none."""
        u = e.u
        top = u[e.top_w]
        if top:
            local = u[e.fl_w + top - 1]
            u[e.meta_w + (local << 2) + 1] = tag
            u[e.top_w] = top - 1
            return local
        local = u[e.fresh_w]
        if local >= e.cap:
            return -1
        m = e.meta_w + (local << 2)
        u[m] = 1 | _UNREADABLE
        u[m + 1] = tag
        if _FAULTS:
            _fault.hit("alloc.marked")
        u[e.fresh_w] = local + 1
        return local

    def _free_locked(self, e: Extent, local: int, generation: int) -> None:
        u, m = e.u, e.meta_w + (local << 2)
        u[m] = L.next_generation(generation) | _UNREADABLE
        u[m + 1] = 0
        top = u[e.top_w]
        u[e.fl_w + top] = local
        u[e.top_w] = top + 1
        if e.number and e.number < self._q[L.HDR_FREE_HINT]:
            self._q[L.HDR_FREE_HINT] = e.number

    def _unwind_locked(self, taken: list[tuple[Extent, int]]) -> None:
        """Put back slots taken by a batch that cannot complete (generation unchanged:
        no handle to them ever left this process)."""
        for e, local in reversed(taken):
            u = e.u
            u[e.meta_w + (local << 2) + 1] = 0
            top = u[e.top_w]
            u[e.fl_w + top] = local
            u[e.top_w] = top + 1

    def _unwind_taken(self, taken: list[tuple[Extent, int]]) -> None:
        with self._lock:
            self._unwind_locked(taken)
            self._q[L.HDR_ALLOCATIONS] -= len(taken)

    def _extent_with_room_locked(self) -> Extent | None:
        """An extent with a free slot, growing the pool if its kind may; None if full."""
        self._map_new_extents()
        q = self._q
        hint = min(q[L.HDR_FREE_HINT], len(self._extents) - 1)
        for e in self._extents[hint:] + self._extents[:hint]:
            u = e.u
            if u[e.top_w] or u[e.fresh_w] < e.cap:
                return e
        q[L.HDR_FREE_HINT] = len(self._extents) - 1
        if not self._grows:
            return None
        if self._config.growth_strategy.kind == "custom":
            self._check_callable_owner("growth_strategy")
        return add_extent_locked(self)

    def _raise_peak_locked(self) -> None:
        q = self._q
        used = L.in_use(q)
        if used > q[L.HDR_PEAK]:
            q[L.HDR_PEAK] = used

    def _locate(self, handle: int) -> tuple[Extent, int]:
        """The extent and local index of a handle's slot; InvalidHandle if it has none."""
        if type(handle) is not int or not 0 < handle >> 32 <= L.MAX_SLOT_GENERATION:
            raise self._bad_handle(handle)
        located = self._extent_of(handle & _MASK)
        if located is None:
            raise self._bad_handle(handle)
        return located

    def _extent_of(self, index: int) -> tuple[Extent, int] | None:
        """(extent, local index) of a pool-wide slot index, mapping new extents as needed."""
        e = self._e0
        if index < e.cap:
            return e, index
        self._map_new_extents()
        e = self._extents[bisect.bisect_right(self._bases, index) - 1]
        return (e, index - e.base) if index - e.base < e.cap else None

    def _check_open(self) -> None:
        if self._closed:
            raise FastallocError(f"pool {self._name!r} is closed in this process; attach it again")

    def _read(self, handle: int) -> Any:
        """get() for any slot: retries while a set() is under way, names torn values."""
        e, local = self._locate(handle)
        u, m = e.u, e.meta_w + (local << 2)
        generation = handle >> 32
        for attempt in range(READ_RETRIES):
            seq = u[m + 3]
            state = _live_state(u, m, generation)
            if state < 0:
                raise self._bad_handle(handle)
            if state == L.TORN:
                raise SerializationError(
                    f"pool {self._name!r}: the value of handle {handle:#x} was torn when process "
                    f"{u[m + 1] & L.OWNER_MASK} died while overwriting it; set() it again or release it"
                )
            if not seq & 1:
                n = u[m + 2]
                off = e.data + local * e.stride
                raw = e.mm[off:off + min(n, self._slot_size)]
                if u[m + 3] == seq and u[m] == generation:
                    if n > self._slot_size:
                        raise SerializationError(f"pool {self._name!r}: slot of handle {handle:#x} is damaged; run recover()")
                    try:
                        return _unpackb(raw, **_codec.UNPACK_OPTIONS)
                    except ValueError as exc:
                        raise _codec.unpack_error(handle, exc) from None
            if attempt > 100:
                time.sleep(0.0001)
        raise SerializationError(
            f"pool {self._name!r}: handle {handle:#x} was being overwritten during {READ_RETRIES} reads; "
            "if its writer died, run recover()"
        )

    def _check_callable_owner(self, field_name: str) -> None:
        """Callables named in a segment run in this process: only from a trusted owner (the segment
        is fstat-ed again now, at the moment of use)."""
        try:
            _trust.check_fd(self._segment.fd, seg.segment_path(self._segment.posix_name), f"pool {self._name!r}",
                            self._trusted)
        except FastallocError as exc:
            raise FastallocError(f"{field_name}: not imported or called, the pool's owner is not trusted: {exc}") from None

    def _segment_callable(self, fn: Callable[..., Any] | str, field_name: str) -> Callable[..., Any]:
        self._check_callable_owner(field_name)
        return _callables.as_callable(fn, field_name)

    def _reset_callables(self) -> tuple[Callable[[], Any], Callable[[Any], Any] | None]:
        cfg = self._config
        if cfg.reset is not None:
            return self._segment_callable(cfg.reset[0], "reset"), self._segment_callable(cfg.reset[1], "reset")
        if cfg.initializer is not None:
            return self._segment_callable(cfg.initializer, "initializer"), None
        raise ConfigError(f"reset: pool {self._name!r} has no reset_fn(create, reset) or initializer; acquire() needs one")

    def _pre_initialize(self) -> None:
        """Fill every slot of extent 0 with the initializer's value and make all of them free.

        A slot holds a packed copy, so the initializer is called once and its bytes
        are written to every slot in bulk (which also faults every page in). Without
        an initializer (the crate accepts that) the pages are only touched."""
        e = self._e0
        if self._config.initializer is None:
            for off in range(e.data, e.data + e.cap * e.stride, mmap.PAGESIZE):
                e.mm[off] = 0
            return
        init = self._segment_callable(self._config.initializer, "initializer")
        data = self._pack_checked(init())
        e.view[e.data:e.data + e.cap * e.stride] = (data + bytes(e.stride - len(data))) * e.cap
        slot_meta = struct.pack("<4I", 1 | _UNREADABLE, L.FREE, len(data), 0)
        e.meta_bytes()[:] = slot_meta * e.cap
        e.free_list_bytes()[:] = array("I", range(e.cap - 1, -1, -1)).tobytes()
        e.u[e.top_w] = e.cap
        e.u[e.fresh_w] = e.cap

    def _advise_huge_pages(self, mm: Any = None) -> None:
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is None:
            return  # not Linux: a harmless no-op, as documented
        try:
            (mm or self._segment.mm).madvise(advice)
            self._q[L.HDR_FLAGS] |= L.FLAG_HUGE_PAGES_ADVISED
        except OSError:
            pass  # the kernel said no (e.g. THP disabled): still a working pool

    @property
    def huge_pages_advised(self) -> bool:
        """True if the kernel accepted the huge-page advice for this pool."""
        self._check_open()
        return bool(self._q[L.HDR_FLAGS] & L.FLAG_HUGE_PAGES_ADVISED)

    # -- errors ---------------------------------------------------------------------

    def _too_large(self, n: int) -> ValueTooLarge:
        return ValueTooLarge(
            f"pool {self._name!r}: value packs to {n} bytes but slots hold {self._slot_size}; "
            "store less or create the pool with a larger slot_size"
        )

    def _exhausted(self, wanted: int) -> PoolExhausted:
        in_use = len(self)
        hint = "raise max_capacity" if self._grows else "raise capacity or use GrowingPool"
        return PoolExhausted(
            f"pool {self._name!r} is full ({in_use}/{self.capacity} slots in use, {wanted} wanted); {hint}"
        )

    def _bad_handle(self, handle: Any) -> FastallocError:
        if type(handle) is not int or handle <= 0 or not 0 < handle >> 32 <= L.MAX_SLOT_GENERATION:
            return InvalidHandle(f"pool {self._name!r}: {handle!r} is not a handle (an int from allocate())")
        index = handle & _MASK
        if index >= self.capacity:
            return InvalidHandle(f"pool {self._name!r}: handle {handle:#x} has index {index}, beyond capacity {self.capacity}")
        return StaleHandle(
            f"pool {self._name!r}: handle {handle:#x} (slot {index}, generation {handle >> 32}) was released; "
            "do not use a handle after release()"
        )

    # -- statistics, recovery, clients ----------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's shared counters."""
        self._check_open()
        q = self._q
        allocations, deallocations = L.total_allocations(q), L.total_deallocations(q)
        return PoolStatistics(
            capacity=q[L.HDR_CAPACITY],
            current_usage=max(0, L.in_use(q)),
            peak_usage=q[L.HDR_PEAK],
            total_allocations=allocations,
            total_deallocations=deallocations,
            allocation_failures=q[L.HDR_FAILURES],
            growth_count=q[L.HDR_GROWTHS],
            lock_acquisitions=L.epoch(q),
            lock_wait_ns=q[L.HDR_LOCK_WAIT_NS],
            lock_timeouts=q[L.HDR_LOCK_TIMEOUTS],
            recoveries=q[L.HDR_RECOVERIES],
        )

    def reset_statistics(self) -> None:
        """Zero every counter, as the crate's StatisticsCollector::reset does. Capacity
        and current usage stay true (they describe the pool, not events); the peak
        restarts at the current usage."""
        self._check_open()
        with self._lock:
            self._reset_counters_locked()

    def _reset_counters_locked(self) -> None:
        q = self._q
        in_use = L.in_use(q)
        for word in (L.HDR_ALLOCATIONS, L.HDR_DEALLOCATIONS, L.HDR_FAILURES, L.HDR_GROWTHS, L.HDR_LOCK_WAIT_NS,
                     L.HDR_LOCK_TIMEOUTS, L.HDR_RECOVERIES, *L.EPOCH_WORDS):
            q[word] = 0
        q[L.HDR_USAGE_AT_RESET] = in_use
        q[L.HDR_PEAK] = in_use

    def clients(self) -> list[ClientInfo]:
        """Processes attached to the pool, from its client table."""
        self._check_open()
        return read_clients(self._u)

    def recover(self, orphan_policy: str | None = None) -> RecoveryReport:
        """Repair after dead processes: take over a lock a dead process holds,
        rebuild free lists from slot states, return dead magazines and
        half-written slots, and keep (or with "reclaim", free) dead owners' slots."""
        self._check_open()
        policy = orphan_policy or self._config.orphan_policy
        if policy not in ("keep", "reclaim"):
            raise ConfigError(f"orphan_policy: {policy!r} is not 'keep' or 'reclaim'")
        before = self._q[L.HDR_RECOVERIES]
        with self._lock:
            taken_over = self._q[L.HDR_RECOVERIES] != before
            if not self._file_lock.lock(self._config.lock_timeout):
                raise FastallocError(f"pool {self._name!r}: another process is registering or repairing; try again")
            try:
                dead = self._drop_dead_clients()
            finally:
                self._file_lock.unlock()
            free_before = self._free_slots_locked()
            tally = self._rebuild_locked(policy == "reclaim")
            report = RecoveryReport(
                pool=self._name, orphan_policy=policy,
                dead_clients=tuple(sorted(set(dead) | tally.dead_owners)),
                lock_taken_over=taken_over, cached_returned=tally.cached_returned,
                half_written_freed=tally.half_written_freed, torn_values=tally.torn_values,
                orphans_kept=tally.orphans_kept, orphans_reclaimed=tally.orphans_reclaimed,
                corrupt_slots=tally.corrupt_slots, free_list_rebuilt=self._free_slots_locked() != free_before,
            )
            if report.repaired and not taken_over:
                self._q[L.HDR_RECOVERIES] += 1
        return report

    def _free_slots_locked(self) -> list[tuple[int, frozenset[int]]]:
        """Per extent, the fresh mark and the set of slots on the free list: the rebuild
        reorders the list, and only a change in what it holds is a repair."""
        self._map_new_extents()
        free = []
        for e in self._extents:
            top = min(e.u[e.top_w], e.cap)
            free.append((e.u[e.fresh_w], frozenset(array("I", e.free_list_bytes()[:4 * top].tobytes()))))
        return free

    def _repair_after_takeover(self) -> None:
        """Called by the lock, holding it, after taking it over from a dead process."""
        self._rebuild_locked(self._config.orphan_policy == "reclaim")

    def _rebuild_locked(self, reclaim: bool) -> Tally:
        self._map_new_extents()
        live = [c.pid for c in read_clients(self._u) if c.alive]
        alive = OwnerLiveness(live)
        tally = Tally()
        for e in self._extents:
            rebuild_extent(e, alive, reclaim, tally)
        q = self._q
        # Usage is allocations - deallocations; make it match the slots really in use.
        q[L.HDR_DEALLOCATIONS] = 0
        q[L.HDR_DEALLOCATIONS] = max(0, L.in_use(q) - tally.in_use)
        if L.in_use(q) < tally.in_use:
            q[L.HDR_ALLOCATIONS] += tally.in_use - L.in_use(q)
        q[L.HDR_FREE_HINT] = 0
        return tally

    def _drop_dead_clients(self) -> list[int]:
        """Free the client entries of dead processes (lock and flock held)."""
        dead = []
        for c in read_clients(self._u):
            if not c.alive and c.entry != self._lock.entry:
                self._u[L.client_word(c.entry, L.CLIENT_STATE)] = L.CLIENT_FREE
                self._u[L.client_word(c.entry, L.CLIENT_PID)] = 0
                dead.append(c.pid)
        return dead

    # -- buffers, lifetime ------------------------------------------------------------------

    def buffer(self, handle: int) -> memoryview:
        """A writable memoryview of the slot's raw bytes (zero copy; slot_size long).

        Writes through it bypass msgpack and the torn-read protection; release()
        the view before close()."""
        self._check_open()
        e, local = self._locate(handle)
        if _live_state(e.u, e.meta_w + (local << 2), handle >> 32) < 0:
            raise self._bad_handle(handle)
        off = e.data + local * e.stride
        return memoryview(e.mm)[off:off + self._slot_size]

    def close(self) -> None:
        """Unmap the pool in this process (the pool stays for others)."""
        _fastpath.unbind(self)
        if not self._closed:
            self._before_close()
            self._closed = True
            if self._lock is not None:
                self._lock.unregister()
        _open_pools.discard(self)
        for e in self._extents:
            e.close()
        self._extents = []
        self._e0 = None
        for view in (self._q, self._u):
            if view is not None:
                view.release()
        self._q = self._u = None
        if self._file_lock is not None:
            self._file_lock.close()
        if self._sem is not None:
            self._sem.close()
            self._sem = None
        if self._segment is not None:
            try:
                self._segment.close()
            except BufferError as exc:
                raise FastallocError(
                    f"pool {self._name!r}: release the memoryviews from buffer() before close() ({exc})"
                ) from None
            self._segment = None

    def _before_close(self) -> None:
        """Hook for kinds that hold slots privately (ThreadLocalPool's magazines)."""

    def unlink(self) -> None:
        """Remove the pool's segments and semaphore from the system (close first)."""
        self.close()
        unlink(self._name)

    def __enter__(self) -> SharedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._creator:
            self.unlink()
        else:
            self.close()

    def __reduce__(self) -> tuple[Callable[..., SharedPool], tuple[str]]:
        return (type(self).attach, (self._name,))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _live_state(u: memoryview, m: int, generation: int) -> int:
    """ALLOCATED or TORN if the slot at meta word `m` holds the value of `generation`, else -1."""
    stored = u[m]
    if stored == generation:
        return L.ALLOCATED
    if stored == generation | _UNREADABLE and u[m + 1] >> L.STATE_SHIFT == L.TORN:
        return L.TORN
    return -1


class FixedPool(SharedPool):
    """A pool with a fixed number of slots: one semaphore round trip per allocate/release.

    >>> with FixedPool.create("jobs", capacity=100, slot_size=128) as pool:  # doctest: +SKIP
    ...     h = pool.allocate({"id": 1}); pool.get(h)
    {'id': 1}
    """

    kind = "fixed"


_NOTHING = object()


def _build_config(capacity: int | None, slot_size: int | None, config: PoolConfig | None,
                  overrides: dict[str, Any]) -> PoolConfig:
    if config is not None:
        if not isinstance(config, PoolConfig):
            raise ConfigError(f"config: expected a PoolConfig, got {type(config).__name__}")
        extra = dict(overrides)
        if capacity is not None:
            extra["capacity"] = capacity
        if slot_size is not None:
            extra["slot_size"] = slot_size
        return config.with_overrides(**extra) if extra else config
    if capacity is None:
        raise ConfigError("capacity: required (pass capacity=N or config=PoolConfig(...))")
    values = {"capacity": capacity, **overrides}
    if slot_size is not None:
        values["slot_size"] = slot_size
    try:
        return PoolConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"{exc}; see PoolConfig for the fields") from None


def attach(name: str, *, trusted_uids: Iterable[int] | None = None) -> SharedPool:
    """Attach the pool `name` as the class its header records (owner check: see SharedPool.attach).

    >>> pool = attach("jobs")  # doctest: +SKIP
    """
    return SharedPool.attach(name, trusted_uids=trusted_uids)


def unlink(name: str) -> bool:
    """Remove every system object of pool `name`; False (and nothing done) if there was none.

    The semaphore removed is the one whose id the removed segment's header records,
    so a pool created again under this name meanwhile keeps its own."""
    name = _names.validate(name)
    removed, pool_id = seg.unlink_segment_with_id(_names.segment(name))
    if pool_id is not None:
        seg.unlink_semaphore(_names.semaphore(name, pool_id))
    elif removed:
        _log.warning("pool %r: its segment recorded no pool id (its creator died before writing one, or it was not"
                     " a pool), so no semaphore was removed with it; a creator dies that early only before making one",
                     name)
    for posix_name in seg.extent_names_on_disk(name):
        removed |= seg.unlink_segment(posix_name)
    return removed


def list_pools() -> list[str]:
    """Names of the pools present in /dev/shm."""
    try:
        entries = os.listdir(_names.SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in map(_names.pool_of_entry, entries) if n is not None)

"""The shared-memory pools: the public API over the compiled core.

A pool owns (as creator) or uses (as attacher) its system objects, all named
with the prefix `fastalloc.`: the main segment, its free-slot semaphore and,
for a growing pool, extent segments. `close()` unmaps them in this process;
`unlink()` removes them from the system (CPython's resource_tracker never
sees them, so no process removes them behind another's back).

Every step of an operation runs in `_core.Core` (C); this module is policy
and plumbing: creation and attach (segments, trust, the config record),
growth, recovery's report, statistics objects, messages. The hot methods
(allocate, get, set, release and the batches) are the core's own C callables,
bound on the instance when it opens, so no Python frame stands between the
user's call and the core. The class methods of the same names document them
and answer for a pool whose opening failed half-way.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import secrets
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self, overload

import psutil

from . import _callables, _codec, _core, _names, _trust
from . import _layout as L
from . import _segment as seg
from ._base import NOTHING, Pool, build_config, check_same_config
from ._growth import Grower
from ._header import HalfCreated, encode_config, open_ready, write_header
from ._messages import PoolErrors
from ._value_types import V, difference, schema_of
from .channel import Channel
from .channel import validate_name as validate_channel_name
from .config import PoolConfig
from .errors import ConfigError, FastallocError, IncompatiblePool, PoolExistsError, PoolNotFound
from .report import ClientInfo, RecoveryReport
from .stats import PoolStatistics

_log = logging.getLogger("fastalloc_shm")
_open_pools: weakref.WeakSet[SharedPool] = weakref.WeakSet()
# The core's calls that the instance binds directly (see the module docstring).
HOT_METHODS = ("allocate", "get", "set", "release", "allocate_many", "release_many")
# References to a hot method the pool itself holds (its instance dict), plus the two of a look at
# it (the local name and getrefcount's argument).
_REFS_OF_A_HOT_METHOD = 3


def _after_fork_in_child() -> None:
    for pool in list(_open_pools):
        try:
            pool._after_fork_in_child()
        except Exception:  # noqa: BLE001 - e.g. its segment was unlinked meanwhile: one pool must not cost the others theirs
            _log.warning("pool %r could not be re-attached in the forked child %d; it is closed there", pool.name,
                         os.getpid(), exc_info=True)
            pool.close()  # its core left the parent's client entry alone: it had none of its own yet


os.register_at_fork(after_in_child=_after_fork_in_child)


# psutil's create_time() resolves to the kernel's clock tick, 1/100 s on Linux.
TICKS_PER_SECOND = 100


def start_ticks(pid: int) -> int:
    """Start time of `pid` in 1/100 s, 0 if it is gone (shown beside the pid in clients(); never trusted)."""
    try:
        return round(psutil.Process(pid).create_time() * TICKS_PER_SECOND)
    except psutil.Error:
        return 0


def _liveness_path(segment: seg.Segment) -> str:
    """What the core opens for its liveness lock: the segment through this process's own fd when
    /proc shows it, so a forked child re-registers even after the name was unlinked."""
    proc = f"/proc/self/fd/{segment.fd}"
    return proc if os.path.exists(proc) else seg.segment_path(segment.posix_name)


@dataclass(frozen=True)
class KindPolicy:
    """What makes one pool kind differ from another; the core does the rest."""

    code: int
    """Recorded in the header (one of _layout's KIND_* codes); attach() picks the class by it."""
    may_grow: bool
    """Accepts a growth strategy (GrowingPool always has one)."""

    @property
    def name(self) -> str:
        """The kind's name, from the one table of kinds (_layout.KIND_NAMES)."""
        return L.KIND_NAMES[self.code]


# Every kind by the name its header records; each class enters itself when it is defined,
# so attach() finds the class without this module importing the kinds (they import it).
_KINDS: dict[str, type[SharedPool]] = {}


class SharedPool(Pool[V]):
    """What every shared-memory pool kind shares; use FixedPool, GrowingPool,
    ThreadLocalPool or ThreadSafePool."""

    _policy: ClassVar[KindPolicy]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        policy = cls.__dict__.get("_policy")
        if policy is not None:
            _KINDS[policy.name] = cls

    # Class-level defaults: close() is safe even if __init__ failed half-way.
    _closed = True
    _creator = False
    _core: Any = None
    _segment: seg.Segment | None = None
    _q: memoryview | None = None
    _name = ""
    _sem_name = ""
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
        value_type: Any = None,
        **overrides: Any,
    ) -> Self:
        """Create the pool `name` (exclusively), or attach it when `exist_ok` and compatible.

        An existing pool is attached only when its owner is trusted (see `attach`) and its
        kind and every config field match; otherwise IncompatiblePool names the first difference.
        `value_type` (a msgspec Struct, dataclass, TypedDict, `list[int]`...) makes a typed pool:
        values are validated on the way in and come back as that type; its schema is recorded.

        >>> pool = FixedPool.create("jobs", capacity=10_000, slot_size=256)  # doctest: +SKIP
        """
        name = _names.validate(name)
        cfg = cls._prepare_config(build_config(capacity, slot_size, config, overrides))
        cfg = replace(cfg, value_schema=None if value_type is None else schema_of(value_type))
        for _ in range(2):
            try:
                return cls._create_new(name, cfg, value_type)
            except PoolExistsError:
                if not exist_ok:
                    raise PoolExistsError(
                        f"pool {name!r} exists already; attach it, unlink it first, or pass exist_ok=True"
                    ) from None
            try:
                pool = cls.attach(name, trusted_uids=trusted_uids, value_type=value_type)
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
        if not cls._policy.may_grow and (cfg.max_capacity not in (None, cfg.capacity)
                                         or cfg.growth_strategy.kind != "none"):
            raise ConfigError(f"growth_strategy: {cls.__name__} does not grow; use GrowingPool")
        return cfg

    @classmethod
    def _create_new(cls, name: str, cfg: PoolConfig, value_type: Any) -> Self:
        record = encode_config(cfg)
        stride = L.stride_for(cfg.slot_size, cfg.alignment)
        size = L.main_segment_size(cfg.capacity, stride, cfg.alignment)
        segment = seg.create_segment(_names.segment(name), size, cfg.mode, f"pool {name!r}")
        # Held until this file description closes: an attacher that finds the pool not
        # ready and this byte free knows its creator died (whatever its PID namespace).
        _core.lock_byte(segment.fd, L.CREATOR_BYTE)
        pool = cls.__new__(cls)
        pool_id = secrets.randbits(64) or 1
        try:
            write_header(segment, cfg, record, cls._policy.code, pool_id, start_ticks(os.getpid()))
            _core.init_mutex(segment.mm)
            sem_name = _names.semaphore(name, pool_id)
            seg.create_semaphore(sem_name, cfg.mode, initial=cfg.capacity).close()
            if not seg.still_named(segment):
                # An unlink() ran meanwhile and may have read no id yet: the semaphore is ours to remove.
                seg.unlink_semaphore(sem_name)
            pool._open(name, segment, sem_name, cfg, _trust.trusted_uids(()), creating=True, value_type=value_type)
            if cfg.pre_initialize:
                pool._pre_initialize()
            if cfg.huge_pages:
                pool._advise_huge_pages(segment.mm)
            pool._q[L.HDR_READY] = 1
        except BaseException:
            pool._discard_half_created(segment)
            raise
        return pool

    def _check_compatible(self, cfg: PoolConfig) -> None:
        """create(exist_ok=True) found this pool (of this kind: attach checked): every field must match."""
        try:
            check_same_config(f"pool {self._name!r}", self._config, cfg, "unlink it or create it with the same settings")
        except BaseException:
            self.close()
            raise

    def _discard_half_created(self, segment: seg.Segment) -> None:
        # If our name was unlinked meanwhile, it may be another pool's by now: leave it
        # (whoever unlinked ours removed, or will remove, our semaphore with it).
        ours = seg.still_named(segment)
        self.close()
        segment.close()
        if ours:
            unlink(self._name or segment.posix_name.removeprefix("/" + _names.PREFIX))

    @classmethod
    def attach(cls, name: str, *, trusted_uids: Iterable[int] | None = None, value_type: Any = None) -> Self:
        """Attach the existing pool `name` from any process.

        Its segments and semaphore must be owned by this process's euid, root, or a uid
        in `trusted_uids` (default: `$FASTALLOC_TRUSTED_UIDS`, comma-separated); anyone
        can create a name in /dev/shm first, and a pool's config names callables.
        With `value_type`, the pool must record that type's schema (IncompatiblePool names
        the difference) and values come back as that type; without, as plain values.
        """
        name = _names.validate(name)
        trusted = _trust.trusted_uids(trusted_uids)
        segment, cfg, kind = open_ready(name, trusted)
        pool_cls = _KINDS[kind]
        if cls is not SharedPool and pool_cls is not cls:
            segment.close()
            raise IncompatiblePool(
                f"pool {name!r} is a {pool_cls.__name__}; attach it with that class or fastalloc_shm.attach()"
            )
        if value_type is not None and (wanted := schema_of(value_type)) != cfg.value_schema:
            segment.close()
            raise IncompatiblePool(f"pool {name!r}: {difference(cfg.value_schema, wanted)}")
        pool = pool_cls.__new__(pool_cls)
        try:
            pool_id = memoryview(segment.mm).cast("Q")[L.HDR_POOL_ID]
            sem_name = _names.semaphore(name, pool_id)
            seg.open_semaphore(sem_name, f"pool {name!r}", trusted).close()
            pool._open(name, segment, sem_name, cfg, trusted, creating=False, value_type=value_type)
        except BaseException:
            pool.close()
            segment.close()
            raise
        return pool

    def _open(self, name: str, segment: seg.Segment, sem_name: str, cfg: PoolConfig, trusted: frozenset[int],
              creating: bool, value_type: Any = None) -> None:
        self._name = name
        self._sem_name = sem_name
        self._creator = creating
        self._segment = segment
        self._config = cfg
        self._trusted = trusted
        self._q = memoryview(segment.mm).cast("Q")
        self._codec = _codec.Codec(value_type)
        grows = self._policy.may_grow and cfg.growth_strategy.kind != "none"
        self._core = _core.Core(
            segment.mm, sem_name, _liveness_path(segment), _names.extent_prefix(name),
            main_uid=os.fstat(segment.fd).st_uid, kind=self._policy.code, lock_timeout=cfg.lock_timeout,
            batch=cfg.batch_size, errors=PoolErrors(name, cfg, self), **self._codec.core_arguments(),
            grow=Grower(self) if grows else None, start_ticks=start_ticks(os.getpid()), creating=creating,
            trusted=tuple(trusted), reclaim=cfg.orphan_policy == "reclaim",
        )
        core = self._core
        for method in HOT_METHODS:
            setattr(self, method, getattr(core, method))
        self._closed = False
        _open_pools.add(self)

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        self._creator = False  # the child never unlinks on context exit
        self._core.after_fork(start_ticks(os.getpid()))

    # -- properties -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FastallocError(f"pool {self._name!r} is closed in this process; attach it again")

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        """Slots the pool has now."""
        self._check_open()
        return self._q[L.HDR_CAPACITY]

    @property
    def kind(self) -> str:
        """The kind's name as the header records it: "fixed", "growing", "threadlocal", "threadsafe"."""
        return self._policy.name

    @property
    def slot_size(self) -> int:
        return self._config.slot_size

    @property
    def value_type(self) -> Any:
        """The type values come back as in this attachment (None: plain msgpack values)."""
        codec = getattr(self, "_codec", None)  # None before the pool opened
        return None if codec is None else codec.value_type

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def nbytes(self) -> int:
        """Bytes of shared memory the pool occupies (every extent)."""
        self._check_open()
        stride = L.stride_for(self._config.slot_size, self._config.alignment)
        total = self._segment.size
        for number in range(1, self._q[L.HDR_EXTENTS]):
            total += L.extent_size(self._q[L.extent_table_words(number)[1]], stride, self._config.alignment)
        return total

    def __len__(self) -> int:
        """Slots in use now."""
        self._check_open()
        return self._core.len()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self.capacity}, slot_size={self.slot_size}"
        return f"{type(self).__name__}({self._name!r}, {state})"

    # -- the operations (the core's callables stand in for these while open) ------

    def allocate(self, value: V, timeout: float | None = None) -> int:
        """Store `value` in a free slot and return its handle (PoolExhausted when full,
        or after waiting up to `timeout` s for a release).

        >>> h = pool.allocate({"id": 1})  # doctest: +SKIP
        """
        self._check_open()
        raise FastallocError(f"pool {self._name!r} did not open")

    def get(self, handle: int) -> V:
        """The value stored under `handle` (a fresh Python object)."""
        self._check_open()
        raise FastallocError(f"pool {self._name!r} did not open")

    def set(self, handle: int, value: V) -> None:
        """Replace the value under `handle` in place (readers see old or new, never a mix)."""
        self._check_open()
        raise FastallocError(f"pool {self._name!r} did not open")

    def release(self, handle: int) -> None:
        """Give the slot back; `handle` is stale from now on."""
        self._check_open()
        raise FastallocError(f"pool {self._name!r} did not open")

    def allocate_many(self, values: Iterable[V]) -> list[int]:
        """Allocate one slot per value under a single lock acquisition; all or nothing."""
        self._check_open()
        raise FastallocError(f"pool {self._name!r} did not open")

    def release_many(self, handles: Iterable[int]) -> None:
        """Release many handles under one lock acquisition. Every handle is checked
        first; if any is stale or invalid, none is released."""
        self._check_open()
        raise FastallocError(f"pool {self._name!r} did not open")

    # -- acquire()'s steps (its policy is Pool.acquire) --------------------------------------

    def _take_slot(self) -> tuple[int, bytes | None]:
        return self._core.take_slot()

    def _decode_previous(self, slot: int, payload: bytes) -> Any:
        try:
            return self._codec.unpack(payload)
        except ValueError:
            return NOTHING  # not what a pool writes: the slot counts as never used

    def _fill_slot(self, slot: int, value: Any) -> int:
        return self._core.publish_slot(slot, value)

    def _keep_slot(self, slot: int, previous: Any) -> int:
        return self._core.publish_slot(slot, previous)

    def _return_slot(self, slot: int) -> None:
        self._core.unwind_slot(slot)

    # -- callables named in the config record ----------------------------------

    def _check_callable_owner(self, field_name: str) -> None:
        """Callables named in a segment run in this process: only from a trusted owner (the segment
        is fstat-ed again now, at the moment of use)."""
        try:
            _trust.check_fd(self._segment.fd, seg.segment_path(self._segment.posix_name), f"pool {self._name!r}",
                            self._trusted)
        except FastallocError as exc:
            raise FastallocError(f"{field_name}: not imported or called, the pool's owner is not trusted: {exc}") from None

    def _callable(self, fn: Callable[..., Any] | str, field_name: str) -> Callable[..., Any]:
        self._check_callable_owner(field_name)
        return _callables.as_callable(fn, field_name)

    def _pre_initialize(self) -> None:
        """Fill every slot of extent 0 with the initializer's value (called once: a slot
        holds a packed copy), and make every slot free. Without an initializer (the
        crate accepts that) the slots' pages are only touched."""
        if self._config.initializer is None:
            cfg = self._config
            start = L.HEADER_SIZE + L.data_offset(cfg.capacity, cfg.alignment)
            mm = self._segment.mm
            for offset in range(start, self._segment.size, mmap.PAGESIZE):
                mm[offset] = 0
            return
        init = self._callable(self._config.initializer, "initializer")
        self._core.pre_initialize(init())

    def _advise_huge_pages(self, mm: mmap.mmap) -> None:
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is None:
            return  # not Linux: a harmless no-op, as documented
        try:
            mm.madvise(advice)
            self._q[L.HDR_FLAGS] |= L.FLAG_HUGE_PAGES_ADVISED
        except OSError:
            pass  # the kernel said no (e.g. THP disabled): still a working pool

    @property
    def huge_pages_advised(self) -> bool:
        """True if the kernel accepted the huge-page advice for this pool."""
        self._check_open()
        return bool(self._q[L.HDR_FLAGS] & L.FLAG_HUGE_PAGES_ADVISED)

    # -- statistics, recovery, clients ----------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's shared counters."""
        self._check_open()
        counters = self._core.counters()
        del counters["cached"]
        return PoolStatistics(**counters)

    def reset_statistics(self) -> None:
        """Zero every counter, as the crate's StatisticsCollector::reset does. Capacity
        and current usage stay true (they describe the pool, not events); the peak
        restarts at the current usage."""
        self._check_open()
        self._core.reset_statistics()

    def clients(self) -> list[ClientInfo]:
        """Processes attached to the pool, from its client table (liveness from the kernel's locks)."""
        self._check_open()
        return [ClientInfo(pid, "attached" if alive else "dead", alive, entry, ticks)
                for entry, pid, ticks, alive in self._core.clients()]

    def recover(self, orphan_policy: str | None = None, *, lock_wait: float | None = None) -> RecoveryReport:
        """Repair after dead processes: rebuild free lists from slot states, return dead
        magazines and half-written slots, mark torn values, and keep (or with
        "reclaim", free) dead owners' slots. A lock whose holder died is repaired by
        whoever takes it next, this call included."""
        self._check_open()
        policy = orphan_policy or self._config.orphan_policy
        if policy not in ("keep", "reclaim"):
            raise ConfigError(f"orphan_policy: {policy!r} is not 'keep' or 'reclaim'")
        wait = self._config.lock_timeout if lock_wait is None else lock_wait
        tally, taken_over, dead = self._core.recover(policy == "reclaim", wait)
        freed = sum(tally[k] for k in ("cached_returned", "half_written_freed", "orphans_reclaimed", "corrupt_slots"))
        return RecoveryReport(
            pool=self._name, orphan_policy=policy, dead_clients=tuple(sorted(set(dead))),
            lock_taken_over=taken_over, cached_returned=tally["cached_returned"],
            half_written_freed=tally["half_written_freed"], torn_values=tally["torn_values"],
            orphans_kept=tally["orphans_kept"], orphans_reclaimed=tally["orphans_reclaimed"],
            corrupt_slots=tally["corrupt_slots"], requeued=tally["requeued"], free_list_rebuilt=bool(freed),
        )

    # -- buffers, lifetime ------------------------------------------------------------------

    def channel(self, name: str) -> Channel[V]:
        """The pool's channel `name` (created if the pool has none of that name; up to 64 per pool).

        >>> todo = pool.channel("todo"); todo.put({"id": 1}); todo.get()  # doctest: +SKIP
        {'id': 1}
        """
        self._check_open()
        name = validate_channel_name(name)
        return Channel(self, name, self._core.channel_open(name))

    def buffer(self, handle: int) -> memoryview:
        """A writable memoryview of the slot's raw bytes (zero copy; slot_size long).

        Writes through it bypass msgpack and the torn-read protection. While it is
        exported, release(handle) and close() raise BufferError (as mmap does):
        call its release() (or leave a with-block) first."""
        self._check_open()
        return self._core.buffer(handle)

    def close(self) -> None:
        """Unmap the pool in this process (the pool stays for others)."""
        if not self._closed:
            self._core.close()  # waits for other threads' operations; BufferError while a view is exported
            self._closed = True
        _open_pools.discard(self)
        if self._q is not None:
            self._q.release()
            self._q = None
        if self._segment is not None:
            self._segment.close()
            self._segment = None

    def unlink(self) -> None:
        """Remove the pool's segments and semaphore from the system (close first)."""
        self.close()
        unlink(self._name)
        if self._sem_name:
            # The one this pool opened, even if its header's id was overwritten meanwhile
            # (a pool created again under the name has a semaphore of another id).
            seg.unlink_semaphore(self._sem_name)

    def __reduce__(self) -> tuple[Callable[..., SharedPool], tuple[str]]:
        # A typed pool pickles with its type (by reference, as pickle does any class).
        value_type = self.value_type
        if value_type is None:
            return (type(self).attach, (self._name,))
        return (functools.partial(type(self).attach, value_type=value_type), (self._name,))

    def _hot_method_in_flight(self) -> bool:
        """Does anyone but this pool hold one of its hot methods (the core's own callables)?"""
        for name in HOT_METHODS:
            method = self.__dict__.get(name)
            if method is not None and sys.getrefcount(method) > _REFS_OF_A_HOT_METHOD:
                return True
        return False

    def __del__(self) -> None:
        try:
            if not self._closed and self._hot_method_in_flight():
                # A hot method of a pool nobody keeps, still to be called (`attach(name).get(h)`): it
                # holds the core, not the pool. Leave the core to let go of the pool itself when that
                # call is done (its dealloc unregisters this process and unmaps); only the fd goes now.
                _open_pools.discard(self)
                if self._segment is not None and self._segment.fd >= 0:
                    os.close(self._segment.fd)
                    self._segment.fd = -1
                return
            self.close()
        except Exception:
            pass


class FixedPool(SharedPool[V]):
    """A pool with a fixed number of slots: one lock round trip per allocate/release.

    >>> with FixedPool.create("jobs", capacity=100, slot_size=128) as pool:  # doctest: +SKIP
    ...     h = pool.allocate({"id": 1}); pool.get(h)
    {'id': 1}
    """

    _policy = KindPolicy(L.KIND_FIXED, may_grow=False)


@overload
def attach(name: str, *, trusted_uids: Iterable[int] | None = None, value_type: type[V]) -> SharedPool[V]: ...


@overload
def attach(name: str, *, trusted_uids: Iterable[int] | None = None, value_type: None = None) -> SharedPool[Any]: ...


def attach(name: str, *, trusted_uids: Iterable[int] | None = None, value_type: Any = None) -> SharedPool[Any]:
    """Attach the pool `name` as the class its header records (owner check, value_type: see SharedPool.attach).

    >>> pool = attach("jobs")  # doctest: +SKIP
    """
    return SharedPool.attach(name, trusted_uids=trusted_uids, value_type=value_type)


def unlink(name: str) -> bool:
    """Remove every system object of pool `name`; False (and nothing done) if there was none.

    The semaphore removed is the one whose id the removed segment's header records,
    so a pool created again under this name meanwhile keeps its own. A header that
    names no semaphore of the pool (garbage, or a creator that died early) costs
    the pool's other semaphores, those of no segment under the name now."""
    name = _names.validate(name)
    removed, pool_id = seg.unlink_segment_with_id(_names.segment(name))
    if removed and (pool_id is None or not seg.unlink_semaphore(_names.semaphore(name, pool_id))):
        strays = seg.unlink_stray_semaphores(name)
        if strays:
            _log.warning("pool %r: its header named no semaphore of it (damaged, or its creator died early); "
                         "removed %s by name", name, ", ".join(strays))
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

"""Growth: adding an extent to a full pool, as its GrowthStrategy says.

The core calls a pool's Grower (never holding its lock) when it finds no free
slot. Growers of all processes take turns on an exclusive `flock` of the main
segment (the kernel drops it if the grower dies). The new extent's segment is
created, sized and reserved here; the core records it in the header, which is
the commit point: a grower killed before it leaves only an unrecorded segment,
which the next grower (holding the flock) replaces.

A flock belongs to the open file description, which a fork() shares: a child
forked while another thread of its parent grows would hold the growth lock for
its whole life, and every process's growth would time out meanwhile. So every
growth's fd is recorded while it is open, and a forked child closes those of
the growths in flight in its parent's other threads (threads a child does not
have). The record and the fork are ordered by one lock, so no fd is open
unrecorded when a fork copies it.

The core holds its Grower, so the Grower holds its pool weakly (a pool dropped
without close() is freed by reference counting alone); it reads the pool
through `Growable`, and this module never imports the pool.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time
import weakref
from typing import Any, Protocol

from . import _core, _fault, _names
from . import _layout as L
from . import _segment as seg
from .config import PoolConfig
from .errors import LockTimeout, PoolExhausted

_POLL = 0.001


class Growable(Protocol):
    """What growth reads and calls of a pool (SharedPool provides it)."""

    _closed: bool
    _core: Any
    _q: Any
    _segment: seg.Segment | None

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> PoolConfig: ...

    def _check_callable_owner(self, field_name: str) -> None: ...

    def _advise_huge_pages(self, mm: mmap.mmap) -> None: ...


# The fds of the growths in flight in this process, each with the thread growing; see the module docstring.
_in_flight: dict[int, int] = {}
_in_flight_lock = threading.Lock()


def _before_fork() -> None:
    _in_flight_lock.acquire()


def _after_fork_in_parent() -> None:
    _in_flight_lock.release()


def _after_fork_in_child() -> None:
    forking_thread = threading.get_ident()
    for fd, thread in list(_in_flight.items()):
        if thread != forking_thread:  # that thread is not in the child: its growth never ends here
            del _in_flight[fd]
            try:
                os.close(fd)
            except OSError:
                pass
    _in_flight_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _open_growth_fd(path: str) -> int:
    with _in_flight_lock:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        _in_flight[fd] = threading.get_ident()
    return fd


def _close_growth_fd(fd: int) -> None:
    with _in_flight_lock:
        del _in_flight[fd]
        os.close(fd)  # drops the flock (unless a child forked meanwhile still shares it: that child closes its copy)


class Grower:
    """The `grow(wanted)` callable of one pool's core: True when the pool has more room now."""

    def __init__(self, pool: Growable) -> None:
        self._pool = weakref.ref(pool)

    def __call__(self, wanted: int) -> bool:
        pool = self._pool()
        if pool is None or pool._closed or pool._segment is None:
            return False
        seen = pool._core.extents
        cfg = pool.config
        if cfg.max_capacity is not None and pool._q[L.HDR_CAPACITY] >= cfg.max_capacity and pool._q[L.HDR_EXTENTS] == seen:
            return False  # full at max_capacity: every refused allocate asks, so answer without touching the file
        fd = _open_growth_fd(seg.segment_path(pool._segment.posix_name))
        try:
            _flock(fd, cfg.lock_timeout, pool.name)
            if pool._q[L.HDR_EXTENTS] > seen:
                return True  # another process grew it meanwhile
            return _add_extent(pool)
        finally:
            _close_growth_fd(fd)


def _flock(fd: int, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"pool {name!r}: another process has been growing it for {timeout} s") from None
            time.sleep(_POLL)


def _add_extent(pool: Growable) -> bool:
    cfg = pool.config
    q = pool._q
    capacity, number = q[L.HDR_CAPACITY], q[L.HDR_EXTENTS]
    if cfg.growth_strategy.kind == "custom":
        pool._check_callable_owner("growth_strategy")
    amount = cfg.growth_amount(capacity)
    if amount <= 0:
        return False
    if number >= L.MAX_EXTENTS:
        raise PoolExhausted(
            f"pool {pool.name!r} has grown {L.MAX_EXTENTS - 1} times, the most it can; "
            "use a larger growth amount or a larger initial capacity"
        )
    posix_name = _names.extent(pool.name, number)
    seg.unlink_segment(posix_name)  # left by a grower that died before its commit
    stride = L.stride_for(cfg.slot_size, cfg.alignment)
    segment = seg.create_segment(posix_name, L.extent_size(amount, stride, cfg.alignment), cfg.mode,
                                 f"pool {pool.name!r} growth")
    try:
        _core.init_extent(segment.mm, amount, q[L.HDR_POOL_ID])
        if cfg.huge_pages:
            pool._advise_huge_pages(segment.mm)
        if _fault.ACTIVE:
            _fault.hit("grow.created")
        committed = pool._core.commit_extent(number, amount)
        if not committed:
            seg.unlink_segment(posix_name)
        return committed
    finally:
        segment.close()

"""Growth: adding an extent to a full pool, as its GrowthStrategy says.

The core calls a pool's Grower (never holding its lock) when it finds no free
slot. Growers of all processes take turns on an exclusive `flock` of the main
segment (the kernel drops it if the grower dies). The new extent's segment is
created, sized and reserved here; the core records it in the header, which is
the commit point: a grower killed before it leaves only an unrecorded segment,
which the next grower (holding the flock) replaces.
"""

from __future__ import annotations

import fcntl
import os
import time
import weakref
from typing import TYPE_CHECKING

from . import _core, _fault, _names
from . import _layout as L
from . import _segment as seg
from .errors import LockTimeout, PoolExhausted

if TYPE_CHECKING:
    from .pool import SharedPool

_POLL = 0.001


class Grower:
    """The `grow(wanted)` callable of one pool's core: True when the pool has more room now."""

    def __init__(self, pool: SharedPool) -> None:
        self._pool = weakref.ref(pool)

    def __call__(self, wanted: int) -> bool:
        pool = self._pool()
        if pool is None or pool._closed:
            return False
        seen = pool._core.extents
        cfg = pool.config
        if cfg.max_capacity is not None and pool._q[L.HDR_CAPACITY] >= cfg.max_capacity and pool._q[L.HDR_EXTENTS] == seen:
            return False  # full at max_capacity: every refused allocate asks, so answer without touching the file
        fd = os.open(seg.segment_path(pool._segment.posix_name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _flock(fd, pool.config.lock_timeout, pool.name)
            if pool._q[L.HDR_EXTENTS] > seen:
                return True  # another process grew it meanwhile
            return _add_extent(pool)
        finally:
            os.close(fd)  # drops the flock


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


def _add_extent(pool: SharedPool) -> bool:
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

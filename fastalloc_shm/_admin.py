"""What the daemon and the CLI need beyond the public API, in one small module.

They use this instead of the internals (liveness, the lock's client records,
the pool base class), so the internals can change under them; nothing
outside the package imports a private module but this one and `_protocol`.
"""

from __future__ import annotations

import os
from typing import TypeAlias

from . import _liveness, _names
from ._lock import ClientInfo
from .errors import LockTimeout
from .pool import SharedPool
from .pool import list_pools as _list_pools
from .report import RecoveryReport

AnyPool: TypeAlias = SharedPool
"""Any shared-memory pool (FixedPool, GrowingPool, ThreadLocalPool, ThreadSafePool)."""

__all__ = ["AnyPool", "ClientInfo", "clients", "list_pools", "process_alive", "segment_inode", "start_ticks",
           "try_recover", "validate_name"]


def clients(pool: AnyPool) -> list[ClientInfo]:
    """The processes attached to `pool`, from its client table, liveness checked."""
    return pool.clients()


def process_alive(pid: int, start_ticks: int = 0) -> bool:
    """True if `pid` runs and, when `start_ticks` is given, is the process that started then."""
    return _liveness.is_alive(pid, start_ticks)


def start_ticks(pid: int) -> int:
    """Start time of `pid` (0 if it is gone): with the pid, it tells a process from a later one."""
    return _liveness.start_ticks(pid)


def validate_name(name: str) -> str:
    """`name` if it is a valid pool name, else ConfigError saying why."""
    return _names.validate(name)


def segment_inode(name: str) -> int | None:
    """Inode of pool `name`'s main segment (None: there is none): a pool created again under the name has another."""
    try:
        return os.stat(_names.SHM_DIR + _names.segment(name)).st_ino
    except FileNotFoundError:
        return None


def list_pools() -> list[str]:
    """Names of the shared-memory pools on this machine."""
    return _list_pools()


def try_recover(pool: AnyPool, wait_s: float, orphan_policy: str | None = None) -> RecoveryReport | None:
    """`pool.recover(orphan_policy)`, waiting at most `wait_s` for the pool's lock; None if it stayed busy.

    For a caller that must not stall behind a holder that is stopped (a
    debugger, `docker pause`): it tries again later. `pool` must not be used
    by another thread of this process meanwhile."""
    lock = pool._lock
    saved = lock.timeout
    lock.timeout = wait_s
    try:
        return pool.recover(orphan_policy=orphan_policy)
    except LockTimeout:
        return None
    finally:
        lock.timeout = saved

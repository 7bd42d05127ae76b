"""What the daemon and the CLI need beyond the public API, in one small module.

They use this instead of the internals (the core, the pool base class), so
the internals can change under them; nothing outside the package imports a
private module but this one and `_protocol`.
"""

from __future__ import annotations

import os
from typing import TypeAlias

import psutil

from . import _names
from .errors import LockTimeout
from .pool import TICKS_PER_SECOND, SharedPool, start_ticks
from .pool import list_pools as _list_pools
from .report import ClientInfo, RecoveryReport

AnyPool: TypeAlias = SharedPool
"""Any shared-memory pool (FixedPool, GrowingPool, ThreadLocalPool, ThreadSafePool)."""

__all__ = ["SHM_DIR", "AnyPool", "ClientInfo", "clients", "list_pools", "process_alive", "segment_inode", "start_ticks",
           "try_recover", "validate_name"]

SHM_DIR = _names.SHM_DIR
"""Where Linux keeps POSIX shared memory and semaphores (the one definition is in _names)."""


def clients(pool: AnyPool) -> list[ClientInfo]:
    """The processes attached to `pool`, from its client table, liveness from the kernel."""
    return pool.clients()


def process_alive(pid: int, ticks: int = 0) -> bool:
    """True if `pid` runs and, when `ticks` is given, is the process that started then.

    For the daemon's own registry of clients that said hello over its socket;
    pools never judge liveness this way (they use the kernel's locks)."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if ticks and abs(round(proc.create_time() * TICKS_PER_SECOND) - ticks) > 1:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


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
    debugger, `docker pause`): it tries again later."""
    try:
        return pool.recover(orphan_policy=orphan_policy, lock_wait=wait_s)
    except LockTimeout:
        return None

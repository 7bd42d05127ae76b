"""Is a process alive? pid plus start time, so a reused pid is not mistaken for the old one."""

from __future__ import annotations

import psutil

# Start times are kept in 1/100 s (the kernel's clock tick), which is what
# psutil's create_time() resolves to on Linux.
_TICKS = 100


def start_ticks(pid: int) -> int:
    """Start time of `pid` in 1/100 s since the epoch (0 if it is gone)."""
    try:
        return round(psutil.Process(pid).create_time() * _TICKS)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return 0


def is_alive(pid: int, ticks: int = 0) -> bool:
    """True if `pid` runs and (when `ticks` is given) started at that time.

    A zombie (killed, not yet reaped by its parent) counts as dead.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if ticks and abs(round(proc.create_time() * _TICKS) - ticks) > 1:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True

"""Test-only fault injection: stop a process at a named step of an operation.

Set `FASTALLOC_FAULT=<point>:<action>[:<n>]` in a process's environment before
it imports fastalloc_shm. At the n-th time (default 1st) that process reaches
`<point>`, it appends "<pid> <point> <n>" to $FASTALLOC_FAULT_FILE (if set,
flushed) and then performs `<action>`:

    kill    SIGKILL itself there
    stop    SIGSTOP itself (a test may SIGCONT it)
    pause   sleep until killed

Every point, the core's and the few reached from Python, is in the core's one
table, `_core.FAULT_POINTS`; an unknown point or action is a ValueError at
import. The core acts at its own points; Python code reaches its points
(grow.created: an extent segment created and reserved, not yet recorded in the
header) through `hit()`.
"""

from __future__ import annotations

from . import _core

ACTIVE = _core.fault_active()


def hit(point: str) -> None:
    """Called at `point`; does nothing unless FASTALLOC_FAULT names it."""
    _core.fault(point)

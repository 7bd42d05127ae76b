"""Test-only fault injection: stop a process at a named step of a critical section.

Set `FASTALLOC_FAULT=<point>:<action>[:<n>]` in a process's environment before
it imports fastalloc_shm. At the n-th time (default 1st) that process reaches
`<point>`, it performs `<action>`:

    kill    SIGKILL itself there
    pause   write "<pid> <point>\\n" to $FASTALLOC_FAULT_FILE, then sleep until killed
    stop    write the same line, then SIGSTOP itself (a test may SIGCONT it)

The compiled core reads the same variable once, at import, for its points
(`_core.FAULT_POINTS`, described beside FAULT_POINTS in _core.c): lock.acquired,
lock.released, alloc.token, alloc.marked, alloc.popped, alloc.writing,
release.freed, release.pushed, set.writing, batch.taking, batch.releasing,
magazine.release, recover.rebuilding. This module serves the one point in
Python:
    grow.created         extent segment created and reserved, not yet recorded in the header
"""

from __future__ import annotations

import os
import signal
import time

_SPEC = os.environ.get("FASTALLOC_FAULT", "")
_point, _, _rest = _SPEC.partition(":")
_action, _, _nth = _rest.partition(":")
_remaining = int(_nth or 1)

ACTIVE = bool(_SPEC)


def hit(point: str) -> None:
    """Called at `point`; does nothing unless FASTALLOC_FAULT names it."""
    global _remaining
    if point != _point:
        return
    _remaining -= 1
    if _remaining:
        return
    if _action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    marker = os.environ.get("FASTALLOC_FAULT_FILE")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} {point}\n")
    if _action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif _action == "pause":
        while True:
            time.sleep(3600)

"""Test-only fault injection: stop a process at a named step of a critical section.

Set `FASTALLOC_FAULT=<point>:<action>[:<n>]` in a process's environment before
it imports fastalloc_shm. At the n-th time (default 1st) that process reaches
`<point>`, it performs `<action>`:

    kill    SIGKILL itself there
    pause   write "<pid> <point>\\n" to $FASTALLOC_FAULT_FILE, then sleep until killed
    stop    write the same line, then SIGSTOP itself (a test may SIGCONT it)

Points (see the operation order in _layout.py):
    lock.acquired        semaphore taken (client record says "wants")
    lock.released        semaphore posted, record still says "wants"
    alloc.marked         slot marked being-written (or cached), free list or fresh mark not yet moved
    alloc.popped         free list popped, lock still held
    alloc.writing        lock released, value half written
    release.freed        slot marked free, not yet pushed on the free list
    set.writing          under the lock, sequence odd, value half written
    grow.created         extent segment created, not yet recorded in the header
    batch.taking         a batch (allocate_many, a magazine refill) is taking slots, lock held
    recover.rebuilding   repairer holds the lock, free list half rebuilt
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

"""A process whose SIGALRM handler raises every 300 us while it churns pools of every kind.

    python -m tests.alarm_child SECONDS NAME...

An exception from a signal handler can land between any two bytecodes of the
caller, so the churner keeps books it can trust whatever was interrupted: a
handle being released or set is "uncertain" until the call returns. The
handler raises only while `_armed`, which is True only inside the try around a
step, so the exception never escapes into the bookkeeping of an earlier one.
After the churn (timer off) each pool's next call must succeed; the churner
prints JSON: per pool, what it holds, how each handle read back, the errors
it met, then closes its pools and exits.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections import Counter

from fastalloc_shm import FastallocError, PoolExhausted, StaleHandle, attach

from .workers import self_checking

INTERVAL = 0.0003
MAX_HELD = 24


class Tick(Exception):
    """Raised by the SIGALRM handler, as a timeout library would."""


_armed = False


def _on_alarm(signum: int, frame: object) -> None:
    global _armed
    if _armed:
        _armed = False
        raise Tick


class Books:
    """What the churner knows of one pool: handles held (with every value each may
    hold now) and handles whose release may or may not have happened."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.held: dict[int, list] = {}
        self.uncertain: dict[int, list] = {}
        self.wrong = 0

    def step(self, rng: random.Random, n: int) -> None:
        pool, held = self.pool, self.held
        roll = rng.random()
        if not held or (len(held) < MAX_HELD and roll < 0.3):
            value = self_checking(1, n)
            held[pool.allocate(value)] = [value]
        elif len(held) < MAX_HELD and roll < 0.4:
            values = [self_checking(2, n + i) for i in range(3)]
            held.update(zip(pool.allocate_many(values), ([v] for v in values), strict=True))
        elif roll < 0.6:
            handle = rng.choice(list(held))
            self.wrong += pool.get(handle) not in held[handle]
        elif roll < 0.75:
            handle = rng.choice(list(held))
            value = self_checking(3, n)
            held[handle] = [*held[handle], value]
            pool.set(handle, value)
            held[handle] = [value]
        elif roll < 0.9:
            handle = rng.choice(list(held))
            self.uncertain[handle] = held[handle]
            del held[handle]
            pool.release(handle)
            del self.uncertain[handle]
        else:
            handles = rng.sample(list(held), min(3, len(held)))
            for handle in handles:
                self.uncertain[handle] = held.pop(handle)
            pool.release_many(handles)
            for handle in handles:
                del self.uncertain[handle]

    def settle(self) -> dict:
        """With the timer off: read everything back and report."""
        for handle in list(self.uncertain):
            if handle in self.held:
                self.held.pop(handle)
        kept = {}
        for handle, values in self.held.items():
            got = self.pool.get(handle)
            self.wrong += got not in values
            kept[str(handle)] = got
        released = 0
        for handle, values in self.uncertain.items():
            try:
                got = self.pool.get(handle)
            except StaleHandle:
                released += 1
                continue
            self.wrong += got not in values
            kept[str(handle)] = got
        return {"held": kept, "uncertain_released": released, "wrong": self.wrong}


def next_call(pool) -> dict:
    started = time.monotonic()
    try:
        handle = pool.allocate("next call")
        ok = pool.get(handle) == "next call"
        pool.release(handle)
    except FastallocError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - started}
    return {"ok": ok, "error": None, "seconds": time.monotonic() - started}


def main() -> None:
    global _armed
    seconds, names = float(sys.argv[1]), sys.argv[2:]
    books = [Books(attach(name)) for name in names]
    errors = [Counter() for _ in names]
    ticks, steps, rng = 0, 0, random.Random(0)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, INTERVAL, INTERVAL)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        which = rng.randrange(len(books))
        steps += 1
        failure = None
        try:
            try:
                _armed = True
                books[which].step(rng, steps * 4)
                _armed = False
            except FastallocError as exc:
                _armed = False
                failure = exc
        except Tick:
            ticks += 1
        if failure is not None and not isinstance(failure, PoolExhausted):
            errors[which][f"{type(failure).__name__}: {str(failure)[:200]}"] += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    _armed = False
    report = {"ticks": ticks, "steps": steps, "pools": {}}
    for name, book, errs in zip(names, books, errors, strict=True):
        report["pools"][name] = {"next_call": next_call(book.pool), **book.settle(), "errors": dict(errs)}
        try:
            book.pool.close()
        except FastallocError as exc:
            report["pools"][name]["close_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report))


if __name__ == "__main__":
    main()

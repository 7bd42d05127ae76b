"""Child processes for tests/test_lock_soundness.py.

    python -m tests.lock_child churn NAME OPS KEEP     allocate/release self-checking values, then
                                                      keep KEEP of them and print them as JSON
    python -m tests.lock_child waiters NAME COUNT TRIES   COUNT processes each try TRIES locked
                                                      operations; print their outcomes as JSON

Either may run inside `unshare --pid --fork --mount-proc`, so that the holder
and its waiters see each other's pids from different PID namespaces.
`race_releases` is run by multiprocessing: two of them release one handle at once.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import time

from fastalloc_shm import FastallocError, LockTimeout, StaleHandle, attach

from .workers import self_checking

# The longest any child waits for the test process or a sibling (seconds).
WAIT = 30
# Both racers spin until this long after the barrier, so their releases start within microseconds.
RACE_SPIN_NS = 300_000
RELEASED, STALE, OTHER_ERROR = 1, 2, 3


def churn(name: str, ops: int, keep: int) -> dict[str, dict]:
    pool = attach(name)
    rng = random.Random(os.getpid())
    held: dict[int, dict] = {}
    for n in range(ops):
        if not held or (len(held) < 8 and rng.random() < 0.6):
            value = self_checking(os.getpid(), n)
            held[pool.allocate(value)] = value
        else:
            handle = rng.choice(list(held))
            assert pool.get(handle) == held.pop(handle), f"slot {handle:#x} changed under its owner"
            pool.release(handle)
    while len(held) > keep:
        handle, value = held.popitem()
        assert pool.get(handle) == value, f"slot {handle:#x} changed under its owner"
        pool.release(handle)
    for handle, value in held.items():
        assert pool.get(handle) == value, f"slot {handle:#x} changed under its owner"
    pool.close()
    return {str(h): v for h, v in held.items()}


def _try_locked_operations(name: str, tries: int, results) -> None:
    """Alternate allocate and recover (both need the lock); record what each attempt got."""
    pool = attach(name)
    outcomes = []
    for attempt in range(tries):
        started = time.monotonic()
        try:
            if attempt % 2:
                pool.recover()
                got = "entered"
            else:
                got = f"entered, got handle {pool.allocate({'waiter': os.getpid()}):#x}"
        except LockTimeout:
            got = "LockTimeout"
        except FastallocError as exc:
            got = f"{type(exc).__name__}: {exc}"
        outcomes.append([got, time.monotonic() - started])
    pool.close()
    results.put(outcomes)


def waiters(name: str, count: int, tries: int) -> list[list]:
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_try_locked_operations, args=(name, tries, results)) for _ in range(count)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=WAIT) for _ in procs]
    for proc in procs:
        proc.join(WAIT)
    return outcomes


def race_releases(name: str, me: int, rounds: int, barrier, handles, starts, outcomes, wrong) -> None:
    """Each round one racer allocates, then both release that handle at the same instant.

    outcomes[2 * round + me] records what this racer's release did; wrong[me]
    counts values that did not read back right after allocation."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:  # on one CPU each the two really run at once, rather than take turns
        os.sched_setaffinity(0, {cpus[me % len(cpus)]})
    pool = attach(name)
    try:
        for r in range(rounds):
            if r % 2 == me:
                value = self_checking(me, r)
                handle = pool.allocate(value)
                wrong[me] += pool.get(handle) != value
                handles[r] = handle
                starts[r] = time.monotonic_ns() + RACE_SPIN_NS
            barrier.wait(WAIT)
            handle, start = handles[r], starts[r]
            while time.monotonic_ns() < start:
                pass
            try:
                pool.release(handle)
                outcomes[2 * r + me] = RELEASED
            except StaleHandle:
                outcomes[2 * r + me] = STALE
            except FastallocError:
                outcomes[2 * r + me] = OTHER_ERROR
    finally:
        pool.close()


def main() -> None:
    command, name, *numbers = sys.argv[1:]
    args = [int(n) for n in numbers]
    result = churn(name, *args) if command == "churn" else waiters(name, *args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

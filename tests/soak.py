"""Randomized soak: N workers on one pool of each kind while a killer SIGKILLs and restarts them.

    python -m tests.soak --kills 1000 --seconds 110 --kind fixed threadlocal   (what the test suite runs)
    python -m tests.soak --kills 5000 --seconds 3600                           (a longer local run)

Every worker churns every pool (one of each kind given) with self-checking
values, so a slot handed out twice shows up as a value read back wrong, which
the worker counts on the spot (it may be killed right after). At the end the
survivors stop and report what they hold, and exit. The driver reads their
values back, recovers, audits each pool through the public API
(tests/invariants.audit) and prints one JSON line of figures: values read back
wrong, slots handed out twice, slots lost, per kind and in total.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time

from fastalloc_shm import FixedPool, PoolExhausted, SerializationError, StaleHandle, ThreadLocalPool, attach, unlink

from .invariants import audit

KINDS = {"fixed": FixedPool, "threadlocal": ThreadLocalPool}
# Between kills (seconds): short enough for 1,000 kills in about a minute, long
# enough that a worker started after a kill gets to work before the next one.
KILL_GAP = (0.005, 0.05)
# Slots one worker holds in one pool at most, so that the pool is seldom full and
# allocations keep coming from the free list rather than failing.
MAX_HELD = 128


def value_for(worker: int, n: int) -> dict:
    return {"w": worker, "n": n, "check": [worker * 7919 + n] * 8}


def worker(names: list[str], number: int, stop, mismatches, ops_done, results) -> None:
    """Mixed operations on every pool until `stop` is set, then report what this worker holds."""
    rng = random.Random(number)
    pools = [attach(name) for name in names]
    held: list[dict[int, dict]] = [{} for _ in pools]
    n = 0
    while not stop.value:
        which = rng.randrange(len(pools))
        pool, mine = pools[which], held[which]
        roll = rng.random()
        if (roll < 0.45 and len(mine) < MAX_HELD) or not mine:
            n += 1
            try:
                mine[pool.allocate(value_for(number, n))] = value_for(number, n)
            except PoolExhausted:
                pass
        else:
            handle = rng.choice(list(mine))
            try:
                mismatches[number] += pool.get(handle) != mine[handle]
            except (StaleHandle, SerializationError):  # someone else released or rewrote our slot
                mismatches[number] += 1
                del mine[handle]
                continue
            if roll < 0.6:
                n += 1
                mine[handle] = value_for(number, n)
                pool.set(handle, mine[handle])
            else:
                del mine[handle]
                pool.release(handle)
        ops_done[number] += 1
    results.put((number, held))


def run(kinds: list[str], kills: int, seconds: float, workers: int, capacity: int) -> dict:
    ctx = mp.get_context("fork")
    names = [f"soak-{os.getpid()}-{kind}" for kind in kinds]
    # One counter per worker, written only by it and without a lock: a lock
    # held by a killed worker would never be released.
    mismatches, ops_done = ctx.Array("q", kills + workers, lock=False), ctx.Array("q", kills + workers, lock=False)
    stop, results = ctx.Value("b", 0, lock=False), ctx.Queue()
    pools = [KINDS[kind].create(name, capacity=capacity, slot_size=192, lock_timeout=10.0)
             for kind, name in zip(kinds, names, strict=True)]
    procs: dict[int, mp.Process] = {}
    next_number = 0

    def start() -> None:
        nonlocal next_number
        proc = ctx.Process(target=worker, args=(names, next_number, stop, mismatches, ops_done, results), daemon=True)
        proc.start()
        procs[next_number] = proc
        next_number += 1

    try:
        for _ in range(workers):
            start()
        rng = random.Random(0)
        started, done, reclaimed_during = time.monotonic(), 0, 0
        while done < kills and time.monotonic() - started < seconds:
            time.sleep(rng.uniform(*KILL_GAP))
            victim = rng.choice(list(procs))
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs.pop(victim).join()
            done += 1
            start()
            if done % 10 == 0:  # as the daemon's monitor would: free what the dead held
                reclaimed_during += sum(p.recover(orphan_policy="reclaim").orphans_reclaimed for p in pools)
        stop.value = 1
        survivors = dict(results.get(timeout=30) for _ in procs)
        for proc in procs.values():
            proc.join(30)
        elapsed = time.monotonic() - started
        figures = {"kinds": kinds, "kills": done, "seconds": round(elapsed, 1), "operations": sum(ops_done),
                   "workers": workers, "mismatches_seen_by_workers": sum(mismatches)}
        for which, (kind, pool) in enumerate(zip(kinds, pools, strict=True)):
            theirs = {h: v for held in survivors.values() for h, v in held[which].items()}
            wrong = 0
            for handle, value in theirs.items():
                try:
                    wrong += pool.get(handle) != value
                except StaleHandle:
                    wrong += 1
            # First against the survivors' slots (now orphans of exited processes): nothing
            # free may be one of them. Then with every dead process's slots reclaimed: all free.
            pool.recover()
            with_survivors = audit(pool, theirs)
            reclaimed = pool.recover(orphan_policy="reclaim").orphans_reclaimed
            empty = audit(pool, {})
            figures[kind] = {
                "values_read_back_wrong": wrong + with_survivors["values_wrong"] + empty["values_wrong"],
                "handed_out_twice": with_survivors["handed_out_twice"] + empty["handed_out_twice"],
                "slots_lost": empty["slots_lost"],
                "len_off": empty["len_off"],
                "capacity": pool.capacity,
                "survivors_held": len(theirs),
                "lock_recoveries": pool.statistics().recoveries,
            }
            reclaimed_during += reclaimed
        figures["orphans_reclaimed"] = reclaimed_during
        figures["values_read_back_wrong"] = sum(mismatches) + sum(figures[k]["values_read_back_wrong"] for k in kinds)
        figures["handed_out_twice"] = sum(figures[k]["handed_out_twice"] for k in kinds)
        figures["slots_lost"] = sum(figures[k]["slots_lost"] for k in kinds)
        return figures
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
        for pool, name in zip(pools, names, strict=True):
            pool.close()
            unlink(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KINDS), nargs="+", default=["fixed"])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=4096)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.kind, args.kills, args.seconds, args.workers, args.capacity)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

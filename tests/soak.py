"""Randomized soak: N workers on one pool while a killer SIGKILLs and restarts them.

    python -m tests.soak --kills 200 --seconds 60 --kind fixed      (what the test suite runs)
    python -m tests.soak --kills 5000 --seconds 3600                (a longer local run)

Workers keep self-checking values, so a slot handed out twice shows up as a
mismatch, which they report on the spot (a worker may be killed right after).
At the end the survivors stop gracefully and report what they hold; the
driver checks their handles, recovers, and verifies the invariants. Prints one
JSON line of figures.
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

from fastalloc_shm import FixedPool, PoolExhausted, StaleHandle, ThreadLocalPool, attach, unlink

from .invariants import check_invariants

KINDS = {"fixed": FixedPool, "threadlocal": ThreadLocalPool}


def value_for(worker: int, n: int) -> dict:
    return {"w": worker, "n": n, "check": [worker * 7919 + n] * 8}


def worker(name: str, number: int, stop, mismatches, ops_done, results) -> None:
    """Mixed operations until `stop` is set, then report what this worker holds."""
    rng = random.Random(number)
    pool = attach(name)
    held: dict[int, dict] = {}
    n = 0
    while not stop.value:
        roll = rng.random()
        if roll < 0.45 or not held:
            n += 1
            try:
                held[pool.allocate(value_for(number, n))] = value_for(number, n)
            except PoolExhausted:
                pass
        else:
            handle = rng.choice(list(held))
            if pool.get(handle) != held[handle]:
                mismatches[number] += 1
            if roll < 0.6:
                n += 1
                held[handle] = value_for(number, n)
                pool.set(handle, held[handle])
            else:
                del held[handle]
                pool.release(handle)
        ops_done[number] += 1
    results.put((number, held))


def run(kind: str, kills: int, seconds: float, workers: int, capacity: int) -> dict:
    ctx = mp.get_context("fork")
    name = f"soak-{os.getpid()}"
    # One counter per worker, written only by it and without a lock: a lock
    # held by a killed worker would never be released.
    mismatches, ops_done = ctx.Array("q", kills + workers, lock=False), ctx.Array("q", kills + workers, lock=False)
    stop, results = ctx.Value("b", 0, lock=False), ctx.Queue()
    pool = KINDS[kind].create(name, capacity=capacity, slot_size=192, lock_timeout=10.0)
    procs: dict[int, mp.Process] = {}
    next_number = 0

    def start() -> None:
        nonlocal next_number
        proc = ctx.Process(target=worker, args=(name, next_number, stop, mismatches, ops_done, results), daemon=True)
        proc.start()
        procs[next_number] = proc
        next_number += 1

    try:
        for _ in range(workers):
            start()
        rng = random.Random(0)
        started, done, reclaimed_during = time.monotonic(), 0, 0
        while done < kills and time.monotonic() - started < seconds:
            time.sleep(rng.uniform(0.02, 0.2))
            victim = rng.choice(list(procs))
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs.pop(victim).join()
            done += 1
            start()
            if done % 10 == 0:  # as the daemon's monitor would: free what the dead held
                reclaimed_during += pool.recover(orphan_policy="reclaim").orphans_reclaimed
        stop.value = 1
        survivors = dict(results.get(timeout=30) for _ in procs)
        for proc in procs.values():
            proc.join(30)
        lost_values = 0
        for held in survivors.values():
            for handle, value in held.items():
                try:
                    lost_values += pool.get(handle) != value
                except StaleHandle:
                    lost_values += 1
        kept = pool.recover()
        reclaimed = pool.recover(orphan_policy="reclaim")
        counts = check_invariants(pool)
        stats = pool.statistics()
        return {
            "kind": kind, "kills": done, "seconds": round(time.monotonic() - started, 1), "operations": sum(ops_done),
            "mismatches": sum(mismatches), "survivor_values_lost": lost_values,
            "orphans_after_kills": kept.orphans_kept, "reclaimed": reclaimed_during + reclaimed.orphans_reclaimed,
            "free_after_reclaim": counts["free"], "capacity": pool.capacity, "slots_lost": pool.capacity - counts["free"],
            "lock_recoveries": stats.recoveries,
        }
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
        pool.close()
        unlink(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KINDS), default="fixed")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=4096)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.kind, args.kills, args.seconds, args.workers, args.capacity)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Crash soak of a channel: 1 producer, N consumers killed at random while items flow through
get_handle → put on "done" → release; recover() (as the daemon runs it) after each kill.

    python -m tests.channel_soak --items 50000 --kills 300     (issue 19's full count; ~3-5 min)
    tests/test_channels.py runs it small (1,500 items, 25 kills) in every `make test`.

Each item carries a check ([n] * 4), so a value read back wrong shows; the driver counts how
often each item reached "done". At the end: every item processed at least once (at-least-once:
an item whose consumer died holding it is processed again), no value wrong, nothing left
queued, the pool empty and sound. Prints one JSON line of figures; exit status 1 on an anomaly.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from fastalloc_shm import ChannelEmpty, FixedPool

from .invariants import audit

ROOT = Path(__file__).resolve().parent.parent
AUDIT_PROBLEMS = ("values_wrong", "handed_out_twice", "slots_lost", "len_off")
IN_FLIGHT = 32  # items put and not yet through "done": kills land on items in every state


def consumer(pool_name: str) -> subprocess.Popen:
    c = subprocess.Popen([sys.executable, "-m", "tests.channel_child", pool_name, "todo", "work"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if c.stdout.readline().strip() != "ready":
        raise RuntimeError(f"a consumer did not start: {c.stderr.read()}")
    return c


def run(pool_name: str, items: int, kills: int, consumers: int = 3, seed: int = 7, seconds: float = 600,
        progress=None) -> dict:
    """The soak's figures: items, kills, processed, processed_twice, wrong, never_processed, requeued,
    left_queued, left_in_use, audit (tests/invariants.audit), seconds."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    with FixedPool.create(pool_name, capacity=64) as pool:
        todo, done = pool.channel("todo"), pool.channel("done")
        workers = [consumer(pool_name) for _ in range(consumers)]
        seen: dict[int, int] = {}
        wrong = sent = killed = 0

        def drain(wait: float) -> None:
            nonlocal wrong
            for item in done.get_many(64, timeout=wait):
                if item.get("check") != [item.get("n")] * 4:
                    wrong += 1
                    continue
                seen[item["n"]] = seen.get(item["n"], 0) + 1

        try:
            deadline = t0 + seconds
            while len(seen) < items and time.monotonic() < deadline:
                while sent < items and sent - len(seen) < IN_FLIGHT:
                    todo.put({"n": sent, "check": [sent] * 4}, timeout=5)
                    sent += 1
                # Spread over the run: the next kill once enough items are through, at a random moment after.
                if killed < kills and len(seen) >= (killed + 1) * items // (kills + 2):
                    victim = workers.pop(rng.randrange(len(workers)))
                    victim.kill()
                    victim.wait(10)
                    killed += 1
                    pool.recover()  # puts the dead consumer's taken item back at the head of "todo"
                    workers.append(consumer(pool_name))
                    if progress and killed % 25 == 0:
                        progress(f"{killed}/{kills} kills, {len(seen):,}/{items:,} items")
                try:
                    drain(0.01)
                except ChannelEmpty:
                    pass
            for _ in workers:
                todo.put(None)
            for w in workers:
                if w.wait(60) != 0:
                    raise RuntimeError(f"a consumer failed: {w.stderr.read()}")
            while len(done):
                drain(0)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        requeued = todo.statistics()["requeued"]
        leftover = pool.recover().requeued
        figures = {
            "items": items, "kills": killed, "processed": sum(seen.values()),
            "processed_twice": sum(1 for n in seen.values() if n > 1), "wrong": wrong,
            "never_processed": items - len(seen), "requeued": requeued, "requeued_at_the_end": leftover,
            "left_queued": len(todo) + len(done), "left_in_use": len(pool),
            "audit": audit(pool, {}), "seconds": round(time.monotonic() - t0, 1),
        }
    return figures


def anomalies(figures: dict) -> list[str]:
    out = [f"{figures[k]} {k.replace('_', ' ')}" for k in ("wrong", "never_processed", "requeued_at_the_end",
                                                             "left_queued", "left_in_use") if figures[k]]
    return out + [f"audit: {k} {v}" for k, v in figures["audit"].items() if k in AUDIT_PROBLEMS and v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.channel_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--kills", type=int, default=300)
    p.add_argument("--consumers", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--seconds", type=float, default=1800, help="give up after this long")
    args = p.parse_args(argv)
    import os

    figures = run(f"chsoak-{os.getpid()}", args.items, args.kills, args.consumers, args.seed, args.seconds,
                  progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(figures))
    bad = anomalies(figures)
    if bad:
        print("anomalies: " + "; ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

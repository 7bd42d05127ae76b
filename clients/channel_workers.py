"""Workers fed through a channel instead of a multiprocessing.Queue.

The work items travel inside the pool: the parent puts each item on the
channel "todo" (one lock round trip: a slot is allocated, the value written,
the slot queued), the workers get them from it, and put their results on the
channel "done". No pipe, no pickling: a multiprocessing.Queue of the same
items costs a pickling pipe per item, several times the channel's cost.

A worker takes each item with get_handle() and releases it only when its
result is queued: if a worker is killed mid-item, recovery puts the item back
at the head of "todo" for another worker (at-least-once).

The work: count the primes in a block of 1,000 numbers per item.

    python clients/channel_workers.py --workers 2 --items 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import TypedDict

from fastalloc_shm import FixedPool, attach

BLOCK = 1000  # numbers per work item


class Item(TypedDict):
    """A work item on "todo" (None there stops a worker)."""

    start: int


class Result(TypedDict):
    """A worker's answer on "done"."""

    start: int
    primes: int
    pid: int


def primes_in(start: int) -> int:
    def prime(n: int) -> bool:
        return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))

    return sum(prime(n) for n in range(start, start + BLOCK))


def worker(name: str) -> None:
    pool = attach(name)  # by name, in any process
    todo, done = pool.channel("todo"), pool.channel("done")
    while True:
        handle = todo.get_handle()  # ours until released: a crash here puts the item back
        item: Item | None = pool.get(handle)
        if item is None:
            pool.release(handle)
            break
        result: Result = {"start": item["start"], "primes": primes_in(item["start"]), "pid": os.getpid()}
        done.put(result)
        pool.release(handle)
    pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=f"channel-workers-{os.getpid()}", help="pool name (default: unique)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=256, help="slots: the most items in flight at once")
    args = parser.parse_args()

    with FixedPool.create(args.name, capacity=args.capacity, slot_size=128) as pool:
        todo, done = pool.channel("todo"), pool.channel("done")
        workers = [multiprocessing.Process(target=worker, args=(args.name,)) for _ in range(args.workers)]
        for w in workers:
            w.start()
        started = time.perf_counter()
        results: list[Result] = []
        sent = 0
        while len(results) < args.items:
            # Keep half the slots for results: put only while fewer than half are in flight.
            while sent < args.items and sent - len(results) < args.capacity // 2:
                todo.put({"start": sent * BLOCK})
                sent += 1
            results.append(done.get(timeout=60))
        for _ in workers:
            todo.put(None)
        for w in workers:
            w.join()
        took = time.perf_counter() - started
        assert sorted(r["start"] for r in results) == [i * BLOCK for i in range(args.items)]
        by_worker: dict[int, int] = {}
        for r in results:
            by_worker[r["pid"]] = by_worker.get(r["pid"], 0) + 1
        print(f"{args.items} items done by {len(by_worker)} workers in {took:.2f} s: "
              f"{sum(r['primes'] for r in results)} primes below {args.items * BLOCK}")
        print(f"todo: {todo.statistics()}")
        print(pool.statistics())


if __name__ == "__main__":
    main()

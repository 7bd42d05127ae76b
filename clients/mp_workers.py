"""A multiprocessing pool of workers sharing one FixedPool as a work queue.

The parent writes work items into the pool and passes only their handles
(plain ints) to the workers; each worker reads its item from shared memory,
computes, and writes the result back into the same slot. The parent reads the
results and releases the slots for the next batch. Values never travel
through the multiprocessing pipes, only handles do.

The work: find the longest Collatz chain among the numbers below items * 100,
one block of 100 numbers per item.

    python clients/mp_workers.py --workers 4 --items 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.util
import os
import time
from collections import Counter
from typing import TypedDict

from fastalloc_shm import FixedPool

BLOCK = 100  # numbers per work item
pool: FixedPool  # the worker's attachment, set by use_pool()


class Result(TypedDict):
    """What a worker writes over its item ({"start": n}) in the item's slot."""

    start: int
    steps: int
    pid: int


def use_pool(shared: FixedPool) -> None:
    """Worker initializer. The pool arrives attached whatever the start method:
    a forked worker inherits it, a spawned one unpickles it, which attaches by name."""
    global pool
    pool = shared
    # Pool workers skip atexit; a multiprocessing finalizer closes the attachment on a clean exit.
    multiprocessing.util.Finalize(None, pool.close, exitpriority=0)


def collatz_steps(n: int) -> int:
    steps = 0
    while n > 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


def work(handle: int) -> int:
    """Read the item behind `handle`, write the result into the same slot."""
    start: int = pool.get(handle)["start"]
    best = max(range(start, start + BLOCK), key=collatz_steps)
    result: Result = {"start": best, "steps": collatz_steps(best), "pid": os.getpid()}
    pool.set(handle, result)
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=f"mp-workers-{os.getpid()}", help="pool name")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--items", type=int, default=2000, help="work items in all")
    parser.add_argument("--capacity", type=int, default=256, help="slots: items in flight at once")
    args = parser.parse_args()

    # The creator's `with` block closes and unlinks the pool at the end.
    with FixedPool.create(args.name, capacity=args.capacity, slot_size=64) as shared:
        started = time.perf_counter()
        by_worker: Counter[int] = Counter()
        longest = {"start": 1, "steps": 0}
        with multiprocessing.Pool(args.workers, initializer=use_pool, initargs=(shared,)) as workers:
            # One batch fills the pool; its slots are released and reused by the next.
            for first in range(0, args.items, args.capacity):
                items = [{"start": i * BLOCK} for i in range(first, min(first + args.capacity, args.items))]
                handles = shared.allocate_many(items)
                for handle in workers.imap_unordered(work, handles, chunksize=4):
                    result = shared.get(handle)
                    by_worker[result.pop("pid")] += 1
                    longest = max(longest, result, key=lambda r: r["steps"])
                shared.release_many(handles)
            workers.close()  # let the workers finish cleanly (leaving `with` would terminate them)
            workers.join()
        elapsed = time.perf_counter() - started

        print(f"{sum(by_worker.values())} items done by {len(by_worker)} workers in {elapsed:.2f} s: the longest"
              f" Collatz chain below {args.items * BLOCK:,} starts at {longest['start']:,} ({longest['steps']} steps)")
        for pid, count in sorted(by_worker.items()):
            print(f"  worker {pid}: {count} items")
        print(f"pool {args.name!r} statistics:")
        print(shared.statistics())


if __name__ == "__main__":
    main()

"""A child for tests/test_crash_matrix.py: attach a pool, run one operation, exit 0.

    python -m tests.matrix_child NAME OP [HANDLE...]

Run with FASTALLOC_FAULT=<point>:kill[:n], it SIGKILLs itself inside the
operation instead, so exit status 0 means the fault point was never reached.
With FASTALLOC_FAULT_FILE set, it appends "<pid> begin <op>" to that file just
before the operation starts (after attaching), so the core's own marker line
"<pid> <point> <n>" that follows proves the point was reached inside the
operation, not while attaching. Values it writes are self-checking
(tests.workers.self_checking) and padded, so that a half-written one differs
from any whole one.
"""

from __future__ import annotations

import os
import sys

from fastalloc_shm import attach

from .workers import self_checking


def value(n: int) -> dict:
    return {**self_checking(-1, n), "pad": "c" * 120}


def begin(op: str) -> None:
    marker = os.environ.get("FASTALLOC_FAULT_FILE")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} begin {op}\n")


def main() -> None:
    name, op, *handles = sys.argv[1:]
    handles = [int(h) for h in handles]
    pool = attach(name)
    begin(op)
    if op in ("allocate", "grow", "steal"):  # "grow"/"steal": the test filled the pool, so this allocate grows it or steals
        pool.allocate(value(0))
    elif op == "allocate_many":
        pool.allocate_many([value(n) for n in range(3)])
    elif op == "release":
        pool.release(handles[0])
    elif op == "release_many":
        pool.release_many(handles)
    elif op == "set":
        pool.set(handles[0], value(1))
    elif op == "recover":
        pool.recover()
    elif op == "reset_statistics":
        pool.reset_statistics()
    elif op == "cycle":
        # Enough allocations and releases that a ThreadLocalPool's magazine refills and then
        # overflows into a drain (more than twice batch_size cached).
        mine = [pool.allocate(value(n)) for n in range(4 * pool.config.batch_size)]
        for handle in mine:
            pool.release(handle)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    pool.close()


if __name__ == "__main__":
    main()

"""Monitor: the memory of every process attached to a pool, and the pool's statistics.

    python clients/monitor.py --name jobs --interval 2 --count 5

RSS counts the pool's shared pages in each process that touched them; USS
counts a process's private pages only. A pool shared well shows up in RSS,
not in USS: the data exists once, in shared memory.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import psutil

from fastalloc_shm import attach

MIB = 2**20


def memory(pid: int) -> str:
    """RSS and USS of one process, as far as we may read them."""
    try:
        process = psutil.Process(pid)
        rss = process.memory_info().rss
        try:
            uss = f"{process.memory_full_info().uss / MIB:8.1f} MiB"  # reads /proc/<pid>/smaps
        except psutil.AccessDenied:  # another user's process: RSS only
            uss = "       ?    "
        return f"{process.name():<16} rss {rss / MIB:8.1f} MiB  uss {uss}"
    except psutil.NoSuchProcess:
        return "exited"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="pool to watch")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between reports")
    parser.add_argument("--count", type=int, default=0, help="reports to print (default: until Ctrl-C)")
    args = parser.parse_args()

    pool = attach(args.name)
    try:
        for number in range(args.count) if args.count else itertools.count():
            if number:
                time.sleep(args.interval)
            print(f"--- {time.strftime('%H:%M:%S')}  pool {pool.name!r} ({pool.kind}, "
                  f"{pool.nbytes / MIB:.1f} MiB of shared memory)")
            for client in pool.clients():
                this = "  (this monitor)" if client.pid == os.getpid() else ""
                status = memory(client.pid) if client.alive else "dead"
                print(f"  pid {client.pid:>7}  {client.state:<8} {status}{this}")
            print(pool.statistics(), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        pool.close()


if __name__ == "__main__":
    main()

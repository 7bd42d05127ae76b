"""Consumer: read handles from producer.py over a named pipe, get each item from the pool and release it.

    python clients/consumer.py --name jobs

The consumer only attaches to the pool by name; the producer creates it
(before it opens the pipe, so the pool exists once the pipe is open).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

from fastalloc_shm import attach

SENTINEL = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="jobs", help="pool name, the same for both programs")
    parser.add_argument("--fifo", help="named pipe (default: <tmp>/fastalloc-<name>.fifo)")
    args = parser.parse_args()
    fifo = args.fifo or os.path.join(tempfile.gettempdir(), f"fastalloc-{args.name}.fifo")

    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo, 0o600)
    print(f"consumer: waiting for a producer on {fifo}", flush=True)
    with open(fifo) as pipe:
        pool = attach(args.name)  # the right pool class, read from the pool's header
        received = seq_sum = 0
        try:
            for line in pipe:
                handle = int(line)
                if handle == SENTINEL:
                    break
                item = pool.get(handle)
                pool.release(handle)  # the slot goes back to the producer
                received += 1
                seq_sum += item["seq"]
            else:
                print("consumer: the producer went away before the end of the stream")
        finally:
            pool.close()
    print(f"consumer: got and released {received} items from pool {args.name!r} (sum of seq {seq_sum})")


if __name__ == "__main__":
    main()

"""Producer: put items into a pool and send their handles to consumer.py over a named pipe.

Start the two programs separately, in either order; they meet by pool name:

    python clients/consumer.py --name jobs
    python clients/producer.py --name jobs --count 1000

Only handles cross the pipe, one per line; the values stay in shared memory.
A handle is never 0, so the line "0" ends the stream. The producer owns the
pool: it removes it once the consumer has released every item.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

from fastalloc_shm import FixedPool

SENTINEL = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="jobs", help="pool name, the same for both programs")
    parser.add_argument("--count", type=int, default=1000, help="items to send")
    parser.add_argument("--capacity", type=int, default=64, help="slots: items in flight at once")
    parser.add_argument("--fifo", help="named pipe (default: <tmp>/fastalloc-<name>.fifo)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the consumer to catch up")
    args = parser.parse_args()
    fifo = args.fifo or os.path.join(tempfile.gettempdir(), f"fastalloc-{args.name}.fifo")

    # exist_ok: a pool of that name left by an earlier run is reused, not an error.
    pool = FixedPool.create(args.name, capacity=args.capacity, slot_size=128, exist_ok=True)
    waits = 0
    try:
        # Whoever starts first makes the pipe; opening it blocks until the other side opens it too.
        with contextlib.suppress(FileExistsError):
            os.mkfifo(fifo, 0o600)
        print(f"producer: pool {args.name!r} ready, waiting for a consumer on {fifo}", flush=True)
        with open(fifo, "w", buffering=1) as pipe:  # line-buffered: each handle leaves at once
            for seq in range(args.count):
                item = {"seq": seq, "text": f"item {seq}"}
                # Backpressure: a full pool means the consumer is behind; wait for it to release slots.
                deadline = time.monotonic() + args.timeout
                while (handle := pool.try_allocate(item)) is None:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"producer: pool full for {args.timeout} s; is the consumer running?")
                    waits += 1
                    time.sleep(0.001)
                pipe.write(f"{handle}\n")
            pipe.write(f"{SENTINEL}\n")
        print(f"producer: sent {args.count} items (waited {waits} times for a free slot)")

        deadline = time.monotonic() + args.timeout
        while len(pool) and time.monotonic() < deadline:
            time.sleep(0.01)
        print(f"producer: {len(pool)} items still in use at the end; pool statistics:")
        print(pool.statistics())
    finally:
        pool.close()
        pool.unlink()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)


if __name__ == "__main__":
    main()

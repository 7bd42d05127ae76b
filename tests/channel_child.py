"""A child for tests/test_channels.py and the crash matrix: attach a pool, act on a channel, report.

    python -m tests.channel_child NAME CHANNEL OP [ARG...]

OP: produce N (put N self-checking values), consume N (get N values, print them as JSON),
take_and_die (get_handle, print it, then SIGKILL itself holding the item), recover,
work (a soak's consumer: get_handle, put the item on "done", release; stop at None).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from fastalloc_shm import attach


def main() -> None:
    name, channel_name, op, *args = sys.argv[1:]
    pool = attach(name)
    channel = pool.channel(channel_name)
    if op == "produce":
        for i in range(int(args[0])):
            channel.put({"n": i, "check": [i] * 4})
    elif op == "consume":
        got = [channel.get(timeout=30) for _ in range(int(args[0]))]
        print(json.dumps(got), flush=True)
    elif op == "recover":
        pool.recover()
    elif op == "work":
        # A soak's consumer: take an item, pass it on to "done", release it; stop at None.
        done = pool.channel("done")
        print("ready", flush=True)
        while True:
            handle = channel.get_handle(timeout=60)
            item = pool.get(handle)
            if item is not None:
                time.sleep(0.002)  # "processing": a kill most likely lands while an item is held
                done.put(item)
            pool.release(handle)
            if item is None:
                break
    elif op == "take_and_die":
        handle = channel.get_handle(timeout=30)
        print(handle, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    pool.close()


if __name__ == "__main__":
    main()

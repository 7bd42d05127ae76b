"""Server time per RedisPool script: what each call costs Redis itself, apart from the network.

``python -m benchmarks.redis_script_cost [--rounds N] [--batch 64]`` starts a private
redis-server (or uses ``--redis-url``, a server nobody else uses meanwhile), runs each of the
channel's and the pool's operations `rounds` times in a phase of its own, and prints the
microseconds per call the server spent in EVALSHA during that phase (``INFO commandstats``,
reset before each twentieth of a phase, the fastest twentieth reported: the script's own run, no
I/O). Redis runs one script at a time, so
this is also how long each call holds up every other client. (SLOWLOG with a threshold of 0
would log every ``redis.call`` inside the script too, and that logging inflates the scripts'
times several-fold.) Everything created is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from contextlib import nullcontext

import redis

from fastalloc_shm import RedisPool
from fastalloc_shm.redis_pool import unlink_pool

from .redis_server import RedisServer
from .values import SMALL

PARTS = 20


def measure(url: str, rounds: int, batch: int) -> dict[str, float]:
    """Server µs per EVALSHA of each operation, by operation."""
    raw = redis.Redis.from_url(url)
    name = f"bench-{os.getpid()}-scriptcost"
    pool = RedisPool.create(name, url=url, capacity=rounds * batch + 2, slot_size=256)
    out: dict[str, float] = {}

    def phase(label: str, step: Callable[[], object]) -> None:
        # In PARTS parts, each timed alone; the fastest part stands (other load on the machine
        # preempts the server now and then: that only ever adds time).
        per_part = []
        for _ in range(PARTS):
            raw.config_resetstat()
            for _ in range(rounds // PARTS):
                step()
            stats = raw.info("commandstats").get("cmdstat_evalsha", {})
            per_part.append(stats.get("usec", 0) / max(1, stats.get("calls", 0)))
        out[label] = min(per_part)

    try:
        ch = pool.channel("todo")
        values = [SMALL] * batch
        phase(f"channel put_many {batch}", lambda: ch.put_many(values))
        phase(f"channel get_many {batch}", lambda: ch.get_many(batch))
        phase("channel put", lambda: ch.put(SMALL))
        phase("channel get", ch.get)
        for _ in range(rounds):
            ch.put(SMALL)
        handles = []
        phase("channel get_handle", lambda: handles.append(ch.get_handle()))
        phase("channel put_handle", lambda: ch.put_handle(handles.pop()))
        for _ in range(rounds):
            ch.get()
        phase("pool allocate", lambda: handles.append(pool.allocate(SMALL)))
        phase("pool get", lambda: pool.get(handles[-1]))
        phase("pool release", lambda: pool.release(handles.pop()))
        phase(f"pool allocate_many {batch}", lambda: handles.append(pool.allocate_many(values)))
        phase(f"pool release_many {batch}", lambda: pool.release_many(handles.pop()))
    finally:
        pool.close()
        unlink_pool(name, url)
        raw.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--redis-url", default=None)
    args = p.parse_args()
    with (RedisServer() if args.redis_url is None else nullcontext()) as server:
        url = args.redis_url or server.url
        if url is None:
            raise SystemExit(server.reason)
        out = measure(url, args.rounds, args.batch)
    print(f"{'operation':28} {'server µs per script':>21}")
    for label, usec in out.items():
        print(f"{label:28} {usec:21.1f}")


if __name__ == "__main__":
    main()

"""How long another client waits while RedisPool walks a big pool (issue 23, deliver 4).

``python -m benchmarks.redis_latency [SLOTS]`` (default 1,000,000) starts a private redis-server,
fills a pool of SLOTS slots from a process that then dies holding them all, and measures another
client's PING round trips (a separate process, so this one's work does not delay it) while
``recover(orphan_policy="reclaim")`` frees them, and then while ``unlink()`` deletes the pool.
Prints PING p50 / p99 / max in ms for each phase (target: p99 <= 20 ms) and how long the phase
took. Every script walks at most a fixed batch of slots (RECLAIM: HSCAN COUNT 1000; UNLINK hands
big keys to the server's background thread), so the probe's p99 stays near an idle server's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from fastalloc_shm.redis_pool import RedisPool

from .redis_server import RedisServer

BATCH = RedisPool.MAX_BATCH

# Filled by a process that dies holding every slot: its lease expires, recover() reclaims them.
FILL = textwrap.dedent("""
    import os, sys
    from fastalloc_shm import RedisPool
    pool = RedisPool.attach(sys.argv[1], url=sys.argv[2], lease_ttl=0.5)
    for left in range(int(sys.argv[3]), 0, -{batch}):
        pool.allocate_many([None] * min({batch}, left))
    os._exit(0)
""").replace("{batch}", str(BATCH))

# PINGs back to back until stdin closes; then prints the round trips (seconds) as JSON.
PROBE = textwrap.dedent("""
    import json, sys, threading, time
    import redis
    client = redis.Redis.from_url(sys.argv[1])
    client.ping()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    samples = []
    while not done.is_set():
        start = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - start)
        time.sleep(0.001)
    print(json.dumps(samples), flush=True)
""")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe_during(url: str, phase) -> dict:
    """Run `phase()` while a PING probe runs in another process; its latencies (ms) and the phase's time (s)."""
    probe = subprocess.Popen([sys.executable, "-c", PROBE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert probe.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    started = time.monotonic()
    phase()
    took = time.monotonic() - started
    time.sleep(0.2)
    out, _ = probe.communicate("", timeout=60)
    samples = json.loads(out)
    return {"pings": len(samples), "p50_ms": 1000 * _percentile(samples, 0.5),
            "p99_ms": 1000 * _percentile(samples, 0.99), "max_ms": 1000 * max(samples), "seconds": took}


def measure(url: str, slots: int) -> dict[str, dict]:
    """Fill a pool of `slots` slots held by a dead client; PING latencies during recover() and unlink()."""
    name = f"latency-{slots}"
    pool = RedisPool.create(name, url=url, capacity=slots + 1, slot_size=8, orphan_policy="reclaim")
    try:
        pool.allocate("mine")
        subprocess.run([sys.executable, "-c", FILL, name, url, str(slots)], check=True)
        time.sleep(1.0)  # the dead filler's lease expires
        assert len(pool) == slots + 1
        results = {}
        report = {}
        results["recover"] = probe_during(url, lambda: report.setdefault("r", pool.recover()))
        assert report["r"].orphans_reclaimed == slots and len(pool) == 1
        for left in range(min(slots, 100_000), 0, -BATCH):  # some slots in use again, data for every slot
            pool.allocate_many([None] * min(BATCH, left))
        results["unlink"] = probe_during(url, pool.unlink)
        return results
    finally:
        pool.close()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with RedisServer() as server:
        if server.url is None:
            sys.exit(server.reason)
        for phase, row in measure(server.url, count).items():
            print(f"{phase:<8} {count:>9,} slots: PING p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms,"
                  f" max {row['max_ms']:.2f} ms over {row['pings']} pings; took {row['seconds']:.1f} s")

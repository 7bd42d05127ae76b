"""A nemesis soak of RedisPool (issue 23, deliver 9), Jepsen's way: the history, then the checker.

``python -m benchmarks.redis_nemesis [SECONDS] [CLIENTS]`` (default 60 s, 4 clients) starts a private
redis-server persisting by RDB snapshots, which the nemesis takes. CLIENTS
processes allocate, set, read back and release self-checking values (each names its writer and a
sequence number) and log every operation with its start and end times. Meanwhile the nemesis, once
a second or so, picks a fault: take a snapshot; kill -9 and restart the server from an older snapshot
(acknowledged writes lost) or from one taken just before (nothing lost); or CLIENT PAUSE for longer
than the clients' timeout.
Afterwards the checker reads the histories and reports anomalies:

* a handle held by two clients at once (from an allocate's return to the release or the first
  StaleHandle), or handed out twice without a release between;
* a read returning anything but what the holder last wrote (a typed error is fine);
* slots lost: after the clients stopped (releasing what they held) and ``recover("reclaim")``, the
  pool must be empty.

It prints operations, faults and anomalies; ``run()`` returns them (tests/test_redis_nemesis.py runs
a short one).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import redis

from fastalloc_shm.redis_pool import RedisPool

# One client: a loop of operations until its deadline, every one logged as a JSON line
# [op, handle, value, outcome, start, end]; at the end it releases what it still holds.
CLIENT = textwrap.dedent("""
    import json, os, random, sys, time
    from fastalloc_shm import RedisPool, StaleHandle, FastallocError
    name, url, until, log_path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    me = os.getpid()
    rng = random.Random(me)
    log = open(log_path, "w", buffering=1)
    def note(op, handle, value, outcome, start):
        log.write(json.dumps([op, handle, value, outcome, start, time.monotonic()]) + "\\n")
    pool = None
    while pool is None and time.monotonic() < until:
        try:
            pool = RedisPool.attach(name, url=url, lease_ttl=2)
        except FastallocError:
            time.sleep(0.1)
    held, seq = {}, 0
    while time.monotonic() < until:
        start = time.monotonic()
        try:
            if len(held) < 5 and rng.random() < 0.6:
                seq += 1
                value = [me, seq]
                h = pool.allocate(value)
                held[h] = value
                note("allocate", h, value, "ok", start)
            elif held:
                h = rng.choice(list(held))
                r = rng.random()
                if r < 0.4:
                    got = pool.get(h)
                    note("get", h, got, "ok", start)
                elif r < 0.7:
                    seq += 1
                    pool.set(h, [me, seq])
                    held[h] = [me, seq]
                    note("set", h, [me, seq], "ok", start)
                else:
                    pool.release(h)
                    del held[h]
                    note("release", h, None, "ok", start)
        except StaleHandle as exc:
            note("stale", h, None, str(exc)[:60], start)
            held.pop(h, None)
        except FastallocError as exc:
            note("error", None, None, type(exc).__name__, start)
            time.sleep(0.05)
    for h in list(held):
        start = time.monotonic()
        for _ in range(50):
            try:
                pool.release(h)
                note("release", h, None, "ok", start)
                break
            except StaleHandle:
                note("stale", h, None, "at end", start)
                break
            except FastallocError:
                time.sleep(0.1)
    pool.close()
""")


def _server(directory: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--logfile", str(directory / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_up(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run(seconds: float, clients: int, seed: int = 0) -> dict:
    """Run the soak; {"operations", "faults", "anomalies", "lost_slots"}."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="fastalloc-nemesis-") as tmp:
        directory = Path(tmp)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = _server(directory, port)
        _wait_up(port)
        url = f"redis://127.0.0.1:{port}/0?socket_timeout=0.5"
        name = f"nemesis-{seed}"
        pool = RedisPool.create(name, url=url, capacity=64, lease_ttl=2)
        raw = redis.Redis(port=port)
        raw.save()
        raw.close()
        shutil.copy(directory / "dump.rdb", directory / "older.rdb")
        until = time.monotonic() + seconds
        logs = [directory / f"client-{i}.jsonl" for i in range(clients)]
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, name, url, str(until), str(log)])
                 for log in logs]
        faults: list[str] = []
        try:
            while time.monotonic() < until - 1.5:
                time.sleep(rng.uniform(0.5, 1.5))
                fault = rng.choice(["restart-older", "restart-fresh", "pause", "snapshot"])
                raw = redis.Redis(port=port, socket_timeout=2)
                try:
                    if fault == "snapshot":
                        raw.save()
                        shutil.copy(directory / "dump.rdb", directory / "older.rdb")
                    elif fault == "pause":
                        raw.client_pause(int(rng.uniform(600, 1500)))
                    else:
                        if fault == "restart-fresh":
                            raw.save()  # nothing lost, and still a new epoch: the server cannot tell
                        server.kill()
                        server.wait()
                        if fault == "restart-older":
                            # Back from an older snapshot: every write since is lost.
                            shutil.copy(directory / "older.rdb", directory / "dump.rdb")
                        server = _server(directory, port)
                        _wait_up(port)
                except redis.RedisError:
                    continue
                finally:
                    raw.close()
                faults.append(fault)
        finally:
            for proc in procs:
                proc.wait(timeout=120)
        history = [json.loads(line) + [i] for i, log in enumerate(logs) for line in log.read_text().splitlines()]
        pool.recover("reclaim")
        lost = len(pool)
        pool.unlink()
        pool.close()
        server.kill()
        server.wait()
    return {"operations": len(history), "faults": faults, "anomalies": check(history), "lost_slots": lost,
            "errors": sum(1 for e in history if e[0] == "error"), "stale": sum(1 for e in history if e[0] == "stale")}


def check(history: list[list]) -> list[str]:
    """Anomalies in a history of [op, handle, value, outcome, start, end, client] entries."""
    anomalies = []
    holds: dict[int, list[tuple[float, float, int]]] = {}
    open_since: dict[tuple[int, int], float] = {}
    written: dict[tuple[int, int], list] = {}
    for op, handle, value, _outcome, start, end, client in sorted(history, key=lambda e: e[5]):
        key = (client, handle)
        if op == "allocate":
            if key in open_since:
                anomalies.append(f"handle {handle} handed to client {client} twice without a release")
            open_since[key] = end
            written[key] = value
        elif op == "set":
            written[key] = value
        elif op == "get" and written.get(key) != value:
            anomalies.append(f"client {client} read {value!r} from handle {handle}, wrote {written.get(key)!r}")
        elif op in ("release", "stale") and key in open_since:
            holds.setdefault(handle, []).append((open_since.pop(key), start, client))
    for (client, handle), since in open_since.items():
        holds.setdefault(handle, []).append((since, float("inf"), client))
    for handle, spans in holds.items():
        spans.sort()
        for (_a_start, a_end, a_client), (b_start, _b_end, b_client) in zip(spans, spans[1:], strict=False):
            if b_start < a_end:
                anomalies.append(f"handle {handle} held by clients {a_client} and {b_client} at once")
    return anomalies


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    result = run(seconds, count)
    kinds = {f: result["faults"].count(f) for f in sorted(set(result["faults"]))}
    print(f"{result['operations']} operations by {count} clients in {seconds:.0f} s; faults {kinds};"
          f" {result['errors']} typed errors, {result['stale']} stale handles; lost slots {result['lost_slots']};"
          f" anomalies {len(result['anomalies'])}")
    for anomaly in result["anomalies"][:20]:
        print("  ", anomaly)
    sys.exit(1 if result["anomalies"] or result["lost_slots"] else 0)

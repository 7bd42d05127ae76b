"""`fastalloc-shm`: list, inspect, create, remove, repair and watch pools from a shell.

Every command acts on the pools in this machine's /dev/shm, or, given
`--url redis://...` (and `--cluster`), on RedisPools. Exit codes: 0 ok,
1 error (one line on stderr, never a traceback), 2 usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import _admin
from .config import GrowthStrategy
from .errors import FastallocError, PoolNotFound
from .kinds import DEFAULT_KIND, POOL_KINDS
from .pool import attach, unlink

PROG = "fastalloc-shm"
KINDS = tuple(POOL_KINDS)


class _SharedMemory:
    """Pools in this machine's /dev/shm."""

    where = _admin.SHM_DIR

    def kind(self, pool: Any) -> str:
        return pool.kind

    def clients(self, pool: Any) -> list[Any] | None:
        return _admin.clients(pool)

    def names(self) -> list[str]:
        return _admin.list_pools()

    def attach(self, name: str) -> Any:
        return attach(name)

    def create(self, name: str, kind: str | None, **config: Any) -> Any:
        return POOL_KINDS[kind or DEFAULT_KIND].create(name, **config)

    def unlink(self, name: str) -> bool:
        return unlink(name)


class _Redis:
    """RedisPools on one server or a cluster."""

    def __init__(self, url: str, cluster: bool) -> None:
        # Imported on demand: shared-memory commands never touch Redis code (or the optional redis extra).
        from . import redis_pool

        self._redis = redis_pool
        self.url = url
        self.cluster = cluster
        # Never echo the URL itself: it may carry a password.
        parts = urlsplit(url)
        self.where = f"redis {parts.hostname or 'localhost'}:{parts.port or 6379}" + (" (cluster)" if cluster else "")

    def kind(self, pool: Any) -> str:
        return "redis"

    def clients(self, pool: Any) -> list[Any] | None:
        return None  # a RedisPool tracks clients by lease, not in a client table

    def names(self) -> list[str]:
        return self._redis.list_pools(self.url, cluster=self.cluster)

    def attach(self, name: str) -> Any:
        return self._redis.RedisPool.attach(name, url=self.url, cluster=self.cluster)

    def create(self, name: str, kind: str | None, **config: Any) -> Any:
        return self._redis.RedisPool.create(name, url=self.url, cluster=self.cluster, **config)

    def unlink(self, name: str) -> bool:
        return self._redis.unlink_pool(name, self.url, cluster=self.cluster)


def _backend(args: argparse.Namespace) -> _SharedMemory | _Redis:
    return _Redis(args.url, args.cluster) if args.url else _SharedMemory()


@contextmanager
def _attached(backend: _SharedMemory | _Redis, name: str) -> Iterator[Any]:
    """Attach for the length of one command; closing never removes the pool."""
    pool = backend.attach(name)
    try:
        yield pool
    finally:
        pool.close()


def _probe(backend: _SharedMemory | _Redis, name: str) -> dict[str, Any] | None:
    """One pool's kind, slot size, statistics and other attached processes, or the error that hid them.

    None when the pool went away since it was listed."""
    try:
        with _attached(backend, name) as pool:
            clients = _other_clients(backend, pool)
            return {
                "name": name,
                "kind": backend.kind(pool),
                "slot_size": pool.slot_size,
                "stats": pool.statistics(),
                "clients": None if clients is None else sum(c["alive"] for c in clients),
            }
    except (FastallocError, OSError) as exc:
        if isinstance(exc, PoolNotFound) and name not in backend.names():
            return None
        # A pool half created, another user's (mode 0600) or not a pool at all:
        # show it as such rather than fail the whole listing.
        return {"name": name, "error": _one_line(exc)}


def _probe_all(backend: _SharedMemory | _Redis) -> list[dict[str, Any]]:
    probes = (_probe(backend, name) for name in sorted(backend.names()))
    return [p for p in probes if p is not None]


def _other_clients(backend: _SharedMemory | _Redis, pool: Any) -> list[dict[str, Any]] | None:
    """Processes attached to `pool` besides this command itself (None where the backend keeps no table)."""
    clients = backend.clients(pool)
    if clients is None:
        return None
    return [{"pid": c.pid, "state": c.state, "alive": c.alive} for c in clients if c.pid != os.getpid()]


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _table(header: list[str], rows: list[list[str]], align: str) -> str:
    """Columns padded to their widest cell; `align` holds '<' or '>' per column."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no details'}"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _channels_cell(stats: Any) -> str:
    """A pool's channels for one table cell: each name with the items queued in it."""
    return " ".join(f"{name}:{c.length:,}" for name, c in stats.channels.items()) or "-"


def cmd_ls(args: argparse.Namespace) -> int:
    backend = _backend(args)
    probes = _probe_all(backend)
    if args.json:
        _print_json([
            {"name": p["name"], "error": p["error"]} if "error" in p else {
                "name": p["name"], "kind": p["kind"], "slot_size": p["slot_size"], "capacity": p["stats"].capacity,
                "in_use": p["stats"].current_usage, "clients": p["clients"],
                "channels": p["stats"].to_dict()["channels"],
            }
            for p in probes
        ])
        return 0
    if not probes:
        print(f"no pools in {backend.where}")
        return 0
    rows = [
        [p["name"], "?", "", "", "", "", "", p["error"]] if "error" in p else [
            p["name"], p["kind"], f"{p['slot_size']:,}", f"{p['stats'].capacity:,}",
            f"{p['stats'].current_usage:,}", f"{p['stats'].utilization_rate():.1f}%", _count(p["clients"]),
            _channels_cell(p["stats"]),
        ]
        for p in probes
    ]
    print(_table(["NAME", "KIND", "SLOT", "CAPACITY", "IN USE", "USE%", "CLIENTS", "CHANNELS (QUEUED)"], rows,
                 "<<>>>>><"))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    backend = _backend(args)
    with _attached(backend, args.name) as pool:
        stats, kind, clients = pool.statistics(), backend.kind(pool), _other_clients(backend, pool)
        if args.json:
            _print_json({
                "name": pool.name, "kind": kind, "slot_size": pool.slot_size, **stats.to_dict(),
                "utilization_rate": stats.utilization_rate(), "hit_rate": stats.hit_rate(), "clients": clients,
            })
            return 0
        print(f"pool {pool.name!r}: {kind}, slots of {pool.slot_size:,} bytes")
        print(stats)
        if clients is not None:
            alive = [f"{c['pid']} ({c['state']})" for c in clients if c["alive"]]
            print(f"clients             {len(alive):>14,}  {' '.join(alive)}".rstrip())
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {"capacity": args.capacity, "slot_size": args.slot_size}
    if args.max_capacity is not None or args.kind == "growing":
        # Without a strategy a pool never grows; double when full, as the crate's examples do.
        config["growth_strategy"] = GrowthStrategy.exponential(2.0)
        config["max_capacity"] = args.max_capacity
    growth = ""
    if "growth_strategy" in config:
        growth = ", doubling when full" + (f" up to {args.max_capacity:,} slots" if args.max_capacity else "")
    backend = _backend(args)
    pool = backend.create(args.name, args.kind, **config)
    try:
        print(f"created {backend.kind(pool)} pool {pool.name!r}: {pool.capacity:,} slots of {pool.slot_size:,} bytes"
              + growth)
    finally:
        pool.close()  # the pool stays until `rm`; closing only unmaps it here
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    backend = _backend(args)
    if not backend.unlink(args.name):
        raise PoolNotFound(f"no pool named {args.name!r} in {backend.where}; `{PROG} ls` lists them")
    print(f"removed pool {args.name!r}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    with _attached(_backend(args), args.name) as pool:
        report = pool.recover(orphan_policy=args.orphan_policy)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report)
    return 0


# What `top` remembers between frames: (pool,) or (pool, channel, counter) -> (when, total), for the rates.
_Previous = dict[tuple[str, ...], tuple[float, int]]


def _rate(previous: _Previous, seen: _Previous, key: tuple[str, ...], now: float, total: int) -> str:
    """Events per second of counter `key` since the last frame ("-" on the first); records `total` in `seen`."""
    last = previous.get(key)
    seen[key] = (now, total)
    # max(0, ...): reset_statistics() between two frames lowers the total.
    return f"{max(0, total - last[1]) / (now - last[0]):,.0f}" if last and now > last[0] else "-"


def _frame(backend: _SharedMemory | _Redis, previous: _Previous) -> list[str]:
    """One screen of `top`: a header, a row per pool, then a row per channel; `previous` keeps
    totals for the rate columns (what went away since the last frame is forgotten)."""
    now = time.monotonic()
    probes = _probe_all(backend)
    header = f"{PROG} top  {time.strftime('%H:%M:%S')}  {len(probes)} pools in {backend.where}"
    if isinstance(backend, _SharedMemory):
        usage = shutil.disk_usage(_admin.SHM_DIR)
        header += f"  ({usage.used / 2**20:,.1f} of {usage.total / 2**20:,.1f} MiB used)"
    seen: _Previous = {}
    rows, channel_rows = [], []
    for p in probes:
        if "error" in p:
            rows.append([p["name"], "?"] + [""] * 9 + [p["error"]])
            continue
        s, pool = p["stats"], p["name"]
        rows.append([
            pool, p["kind"], f"{p['slot_size']:,}", f"{s.capacity:,}", f"{s.current_usage:,}",
            f"{s.utilization_rate():.1f}%", f"{s.peak_usage:,}", _rate(previous, seen, (pool,), now, s.total_allocations),
            f"{s.allocation_failures:,}", f"{s.hit_rate():.4f}", f"{s.lock_wait_ns / 1e6:,.1f}", _count(p["clients"]),
        ])
        for name, c in s.channels.items():
            channel_rows.append([
                pool, name, f"{c.length:,}", _rate(previous, seen, (pool, name, "puts"), now, c.puts),
                _rate(previous, seen, (pool, name, "gets"), now, c.gets), f"{c.requeued:,}", f"{c.waiting:,}",
            ])
    previous.clear()
    previous.update(seen)
    table = _table(["NAME", "KIND", "SLOT", "CAPACITY", "IN USE", "USE%", "PEAK", "ALLOC/S", "FAILS", "HIT RATE",
                    "WAIT ms", "CLIENTS"], rows, "<<>>>>>>>>>>")
    lines = [header, "", *table.splitlines()]
    if channel_rows:
        lines += ["", *_table(["POOL", "CHANNEL", "QUEUED", "PUT/S", "GET/S", "REQUEUED", "WAITING"], channel_rows,
                              "<<>>>>>").splitlines()]
    return lines


def _top_curses(backend: _SharedMemory | _Redis, interval: float) -> None:
    import curses

    def loop(screen: Any) -> None:
        try:
            curses.curs_set(0)
        except curses.error:  # some terminals cannot hide the cursor
            pass
        screen.timeout(int(interval * 1000))  # getch() waits at most one interval
        previous: _Previous = {}
        while True:
            lines = _frame(backend, previous)
            lines[0] += "  (q quits)"
            height, width = screen.getmaxyx()
            screen.erase()
            for y, line in enumerate(lines[:height]):
                screen.addnstr(y, 0, line, width - 1)
            screen.refresh()
            if screen.getch() in (ord("q"), ord("Q")):
                return

    curses.wrapper(loop)


def cmd_top(args: argparse.Namespace) -> int:
    backend = _backend(args)
    try:
        if sys.stdout.isatty() and not args.once:
            _top_curses(backend, args.interval)
            return 0
        # Not a terminal (a pipe, a log): print frames one after another.
        previous: _Previous = {}
        while True:
            print("\n".join(_frame(backend, previous)), end="\n\n", flush=True)
            if args.once:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:  # Ctrl-C is the ordinary way out
        return 0


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir() or not (root / "pyproject.toml").is_file():
        raise FastallocError(
            f"bench runs the benchmark suite of a source checkout, and there is no benchmarks/ next to {root}"
            " (this looks like an installed package); clone the repository and run `make bench` there"
        )
    command = [sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else [])]
    return subprocess.call(command, cwd=root)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect and manage fastalloc-shm pools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--url", help="act on RedisPools at this Redis URL (redis://host:port/db) instead of /dev/shm")
    where.add_argument("--cluster", action="store_true", help="the --url is a Redis Cluster node")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")

    def command(name: str, run: Any, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, parents=[where, *parents])
        sub.set_defaults(run=run)
        return sub

    command("ls", cmd_ls, "list pools: kind, capacity, slots in use", as_json)
    command("stats", cmd_stats, "print a pool's statistics", as_json).add_argument("name")

    create = command("create", cmd_create, "create a pool (it stays until `rm`)")
    create.add_argument("name")
    create.add_argument("--capacity", type=_positive_int, required=True, help="slots at creation")
    create.add_argument("--slot-size", type=_positive_int, required=True, help="bytes of payload per slot")
    create.add_argument("--kind", choices=KINDS, help=f"shared-memory pool kind (default {DEFAULT_KIND})")
    create.add_argument("--max-capacity", type=_positive_int,
                        help="let the pool double when full, up to this many slots (not for --kind fixed)")

    command("rm", cmd_rm, "remove a pool from the system").add_argument("name")

    recover = command("recover", cmd_recover, "repair a pool after a process died using it", as_json)
    recover.add_argument("name")
    recover.add_argument("--orphan-policy", choices=("keep", "reclaim"),
                         help="slots still allocated by dead processes: keep them or free them"
                              " (default: the pool's configured policy)")

    top = command("top", cmd_top, "live view of every pool (q or Ctrl-C quits)")
    top.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")

    bench = commands.add_parser("bench", help="run the benchmark suite (source checkout only)",
                                description="Run `python -m benchmarks` from the project root.")
    bench.add_argument("--quick", action="store_true", help="a short run")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "cluster", False) and not args.url:
        parser.error("--cluster needs --url")
    if getattr(args, "kind", None) and args.url:
        parser.error("--kind chooses a shared-memory pool kind; a pool on Redis has one kind")
    try:
        return args.run(args)
    except (FastallocError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

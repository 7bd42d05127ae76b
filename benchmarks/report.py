"""Turns the collected rows into benchmarks/results.md and results.json, with targets checked.

Ratios are ``ours / reference`` in time, so lower is better everywhere: ``1.15 × floor`` is
15 % slower than the floor, ``0.25 × best peer`` is 4 times faster than the fastest peer.
ThreadLocalPool is compared with ``floor-nolock`` (its fast path takes no lock), the other
kinds with ``floor``. The best peer excludes the plain dict, which shares nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from . import library
from .systems import BY_NAME, SYSTEMS
from .values import VALUES
from .workloads import OPS

KIND_TITLES = {"small": "~100-byte msgpack value", "4k": "4 KiB bytes value"}
BATCH_OPS = ("batch_allocate_100", "batch_release_100")
CREATE_OPS = ("create/10k/lazy", "create/10k/eager", "create/1M/lazy", "create/1M/eager")
OVERHEAD_SIZES = (64, 1024, 4096)


@dataclass
class Target:
    """One pass/fail line; ``status`` is PASS, FAIL or SKIP."""

    status: str
    text: str

    def line(self) -> str:
        return f"{self.status} {self.text}"


class Table:
    """Lookup of the median value of (system, op); None when not measured."""

    def __init__(self, rows: list[dict]):
        self.rows = {(r["system"], r["op"]): r for r in rows}

    def get(self, system: str, op: str) -> float | None:
        r = self.rows.get((system, op))
        return None if r is None else r.get("value")

    def floor_for(self, system: str) -> str:
        return "floor-nolock" if system == "ThreadLocalPool" else "floor"

    def best_peer(self, op: str) -> tuple[str | None, float | None]:
        """The fastest peer for a time-per-op measure (lowest value)."""
        found = [(v, s.name) for s in SYSTEMS if s.group == "peer" and (v := self.get(s.name, op)) is not None]
        if not found:
            return None, None
        value, name = min(found)
        return name, value

    def ratio(self, system: str, op: str, reference: str) -> float | None:
        ours, ref = self.get(system, op), self.get(reference, op)
        return None if ours is None or not ref else ours / ref


# -- targets ---------------------------------------------------------------------------------


def check_targets(t: Table, names: list[str]) -> list[Target]:
    """The issue's targets, as measured in this run (reported, never asserted)."""
    out: list[Target] = []
    kinds = [k for k in library.KINDS if k in names]

    def limit(system: str, op: str, reference: str, bound: float) -> None:
        r = t.ratio(system, op, reference)
        if r is None:
            out.append(Target("SKIP", f"{system} {op} ≤ {bound}× {reference}: not measured"))
        else:
            out.append(Target("PASS" if r <= bound else "FAIL", f"{system} {op} = {r:.3f}× {reference} (≤ {bound}×)"))

    for kind in kinds:
        if kind != "ThreadLocalPool":
            for value_kind in VALUES:
                limit(kind, f"cycle/{value_kind}", "floor", 1.3)
        for value_kind in VALUES:
            limit(kind, f"get/{value_kind}", t.floor_for(kind), 1.2)
    if "ThreadLocalPool" in kinds:
        for value_kind in VALUES:
            limit("ThreadLocalPool", f"cycle/{value_kind}", "floor-nolock", 1.1)
    for kind in kinds:
        out.append(_peer_target(t, kind))
    if "ThreadLocalPool" in kinds:
        one, two = t.get("ThreadLocalPool", "mp/1"), t.get("ThreadLocalPool", "mp/2")
        if one and two:
            out.append(Target("PASS" if two / one >= 1.6 else "FAIL",
                              f"ThreadLocalPool 2-process aggregate = {two / one:.2f}× one process (≥ 1.6×)"))
        else:
            out.append(Target("SKIP", "ThreadLocalPool 2-process scaling: not measured"))
    out.append(_absolute(t, "GrowingPool", "grow/1000", 100_000, "growth of 1,000 slots", 1e3, "µs"))
    for kind in kinds:
        if (kind, "create/1M/lazy") in t.rows:
            out.append(_absolute(t, kind, "create/1M/lazy", 50e6, "creating 1M slots (lazy)", 1e6, "ms"))
    for kind, bound in (("FixedPool", 2.0), ("GrowingPool", 5.0)):
        v = t.get(kind, "overhead/1024")
        if v is None:
            out.append(Target("SKIP", f"{kind} overhead at 1 KiB slots < {bound} %: not measured"))
        else:
            out.append(Target("PASS" if v < bound else "FAIL",
                              f"{kind} overhead at 1 KiB slots = {v:.2f} % (< {bound} %)"))
    return out


def _absolute(t: Table, system: str, op: str, bound_ns: float, label: str, scale: float, unit: str) -> Target:
    v = t.get(system, op)
    if v is None:
        return Target("SKIP", f"{system} {label} < {bound_ns / scale:g} {unit}: not measured")
    return Target("PASS" if v < bound_ns else "FAIL",
                  f"{system} {label} = {v / scale:.1f} {unit} (< {bound_ns / scale:g} {unit})")


def _peer_target(t: Table, kind: str) -> Target:
    """≥ 3× faster than every peer on every op: judged against the best peer, op by op."""
    ops = [f"{op}/{vk}" for vk in VALUES for op in OPS] + list(BATCH_OPS)
    speedups = []
    for op in ops:
        ours = t.get(kind, op)
        peer, best = t.best_peer(op)
        if ours and best:
            speedups.append((best / ours, op, peer))
    if not speedups:
        return Target("SKIP", f"{kind} ≥ 3× faster than every peer: not measured")
    worst = min(speedups)
    slow = [f"{op} ({s:.1f}× vs {p})" for s, op, p in sorted(speedups) if s < 3]
    if slow:
        return Target("FAIL", f"{kind} ≥ 3× faster than every peer on every op: below on {', '.join(slow)}")
    return Target("PASS", f"{kind} ≥ 3× faster than every peer on every op "
                          f"(closest: {worst[1]}, {worst[0]:.1f}× vs {worst[2]})")


# -- markdown --------------------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value / scale:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]], align_first: int = 1) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if i < align_first else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _label(name: str, unavailable: dict) -> str:
    return f"{name} ¹" if name in unavailable else name


def _ops_section(t: Table, names: list[str], ops: list[str], headers: list[str], unit_note: str,
                 unavailable: dict) -> list[str]:
    """One ns/op table over ``names``, then ratios of the library kinds to the floor and to the best peer."""
    lines = [unit_note, ""]
    lines += _table(["system", *headers], [[_label(n, unavailable), *(_fmt(t.get(n, op)) for op in ops)]
                                           for n in names])
    kinds = [k for k in library.KINDS if k in names]
    if not kinds:
        return lines
    ratio_rows = [[k, t.floor_for(k), *(_ratio(t.ratio(k, op, t.floor_for(k))) for op in ops)] for k in kinds]
    best = [t.best_peer(op) for op in ops]
    for k in kinds:
        cells = [_ratio(t.ratio(k, op, peer)) if peer else "—" for op, (peer, _) in zip(ops, best, strict=True)]
        ratio_rows.append([k, "best peer", *cells])
    ratio_rows.append(["", "*(best peer)*", *(p or "—" for p, _ in best)])
    lines += ["Ratios (time, lower is better; × floor ≥ 1 is the price over the minimal pool, "
              "× best peer < 0.33 meets the 3× target):", ""]
    lines += _table(["system", "× of", *headers], ratio_rows, align_first=2)
    return lines


def markdown(results, settings, meta: dict, targets: list[Target], names: list[str]) -> str:
    t = Table(results.rows)
    un = results.unavailable
    lines = ["# fastalloc-shm benchmark results", "",
             f"{'Quick run' if settings.quick else 'Full run'} of {meta['date']} on {meta['platform']}, "
             f"{meta['cpus']} CPUs, Python {meta['python']}. "
             f"Every time is the median of {settings.reps} repetitions after a warm-up "
             f"(loops of up to {settings.n_max} ops timed with `perf_counter_ns`). "
             "How the peers are mapped onto pool operations, and how to read the ratios: "
             "[README.md](README.md).", ""]
    lines += ["## Targets", "", "Reported, not asserted (timings on a shared machine are noisy).", ""]
    lines += [f"- {tg.line()}" for tg in targets] + [""]

    for kind in VALUES:
        lines += [f"## Single operations, {KIND_TITLES[kind]}", ""]
        lines += _ops_section(t, names, [f"{op}/{kind}" for op in OPS], list(OPS),
                              "ns/op; `cycle` = allocate → get → set → release of one value.", un)
    lines += ["## Batches of 100 (`allocate_many` / `release_many`)", ""]
    lines += _ops_section(t, names, list(BATCH_OPS), ["allocate 100", "release 100"],
                          "ns per batch of 100 small values (peers: their bulk call where they have one).", un)

    mp_names = [n for n in names if any((n, f"mp/{p}") in t.rows for p in settings.mp_procs) or n in un]
    lines += ["## Processes on one pool", "",
              f"Full cycles per second, all processes together ({settings.mp_seconds:g} s per run; "
              "each worker attaches by name, or inherits the peer's handle through fork).", ""]
    procs = settings.mp_procs
    mp_rows = []
    for n in mp_names:
        one = t.get(n, "mp/1")
        cells = [_fmt(t.get(n, f"mp/{p}")) for p in procs]
        scale = [_ratio(t.get(n, f"mp/{p}") / one) if one and t.get(n, f"mp/{p}") else "—" for p in procs[1:]]
        errs = sum(t.rows.get((n, f"mp/{p}"), {}).get("errors", 0) for p in procs)
        mp_rows.append([_label(n, un), *cells, *scale, str(errs)])
    lines += _table(["system", *(f"{p} proc" for p in procs), *(f"{p}p / 1p" for p in procs[1:]), "errors"], mp_rows)
    lines += ["![aggregate cycles per second vs processes](scaling.png)", ""]

    create_names = [n for n in names if any((n, op) in t.rows for op in CREATE_OPS)]
    if create_names:
        lines += ["## Pool creation", "", "ms, 64-byte slots; eager = every slot filled by the initializer.", ""]
        lines += _table(["system", *(op.removeprefix("create/").replace("/", " ") for op in CREATE_OPS)],
                        [[n, *(_fmt(t.get(n, op), 1e6, 2) for op in CREATE_OPS)] for n in create_names])
    grow_names = [n for n in names if (n, "grow/1000") in t.rows]
    if grow_names:
        lines += ["## Growth by 1,000 slots", "",
                  "µs: GrowingPool = the `allocate()` that triggers growth; floor = mapping a new "
                  "1,000-slot segment and listing its slots free.", ""]
        lines += _table(["system", "µs", "× floor"],
                        [[n, _fmt(t.get(n, "grow/1000"), 1e3, 1), _ratio(t.ratio(n, "grow/1000", "floor"))]
                         for n in grow_names])
    ov_names = [n for n in names if any((n, f"overhead/{s}") in t.rows for s in OVERHEAD_SIZES)]
    if ov_names:
        lines += ["## Memory overhead", "",
                  "% of shared memory above the payload: pools = `nbytes` / (capacity × slot size) − 1 "
                  f"at capacity {settings.overhead_capacity:,}; Redis = `used_memory` growth, LMDB = pages "
                  f"in use, for {settings.peer_overhead_values:,} values of exactly that size.", ""]
        lines += _table(["system", *(f"{s} B" for s in OVERHEAD_SIZES)],
                        [[n, *(_fmt(t.get(n, f"overhead/{s}"), 1, 2) for s in OVERHEAD_SIZES)] for n in ov_names])
    rss_names = [n for n in names if (n, "rss_worker") in t.rows]
    if rss_names:
        lines += ["## Memory of an attached worker", "",
                  f"A freshly spawned worker attaches and reads {settings.rss_values} small values once. "
                  "RSS counts the shared pages it touched, USS only its private memory; Δ is attach + reads "
                  "(imports excluded). Manager().dict and Redis keep the data in another process.", ""]
        lines += _table(["system", "RSS MiB", "USS MiB", "Δ RSS KiB"],
                        [[n, _fmt(t.get(n, "rss_worker"), 1024, 1), _fmt(t.get(n, "uss_worker"), 1024, 1),
                          _fmt(t.get(n, "rss_attach_delta"))] for n in rss_names])
    lock_names = [n for n in names if any((n, f"lock_trips_per_op/{k}") in t.rows for k in VALUES)]
    if lock_names:
        lines += ["## Lock round trips per allocate or release", "",
                  "From the pools' own counters (`lock_acquisitions` / (allocations + deallocations)): "
                  "ThreadLocalPool should be far below 1.", ""]
        lines += _table(["system", *VALUES], [[n, *(_ratio(t.get(n, f"lock_trips_per_op/{k}")) for k in VALUES)]
                                              for n in lock_names])
    lines += _redis_pool_section(results)
    lines += _status_section(results, names)
    return "\n".join(lines).rstrip() + "\n"


def _redis_pool_section(results) -> list[str]:
    lines = ["## RedisPool vs raw redis-py", ""]
    if not results.redis_pool:
        return lines + [f"Not measured: {results.redis_pool_status}.", ""]
    ops = list(dict.fromkeys(r["op"] for r in results.redis_pool))
    names = list(dict.fromkeys(r["system"] for r in results.redis_pool))
    values = {(r["system"], r["op"]): r.get("ns_per_op") for r in results.redis_pool}
    lines += ["ns/op, from `benchmarks/redis_pool_bench.py` against the same redis-server as the Redis row.", ""]
    rows = [[n, *(_fmt(values.get((n, op))) for op in ops)] for n in names]
    if "RedisPool" in names and len(names) == 2:
        # The price of the pool's guarantees (atomic scripts, generations, leases) over raw commands.
        raw = next(n for n in names if n != "RedisPool")
        ratios = [values.get(("RedisPool", op)) / values[(raw, op)] if values.get(("RedisPool", op)) and
                  values.get((raw, op)) else None for op in ops]
        rows.append([f"*RedisPool / {raw}*", *(_ratio(r) for r in ratios)])
    return lines + _table(["system", *ops], rows)


def _status_section(results, names: list[str]) -> list[str]:
    lines = ["## Systems", ""]
    for n in names:
        note = BY_NAME[n].note
        if n in results.unavailable:
            lines.append(f"- ¹ **{n}**: not measured: {results.unavailable[n]}")
        elif note:
            lines.append(f"- **{n}**: {note}")
    lines.append("")
    errors = [e for e in results.errors]
    errors += [{"system": r["system"], "step": r["op"], "error": r["error"]} for r in results.rows if r.get("error")]
    if errors:
        lines += ["## Errors", ""] + [f"- {e['system']} / {e['step']}: {e['error']}" for e in errors] + [""]
    mp_errors = [r for r in results.rows if r.get("first_error")]
    if mp_errors:
        lines += ["Operations that failed under concurrency (counted in *errors* above):", ""]
        lines += [f"- {r['system']} {r['op']}: {r['errors']} failed, first: {r['first_error']}" for r in mp_errors]
        lines.append("")
    if results.swept:
        lines += ["## Leftovers", "", "These objects of this run were still in /dev/shm at the end and were "
                  "removed by the final sweep (a cleanup bug to fix):", ""] + [f"- `{s}`" for s in results.swept]
        lines.append("")
    return lines


def as_json(results, settings, meta: dict, targets: list[Target]) -> str:
    doc = {
        "meta": meta,
        "settings": asdict(settings),
        "targets": [asdict(tg) for tg in targets],
        "rows": results.rows,
        "unavailable": results.unavailable,
        "errors": results.errors,
        "redis_pool": {"status": results.redis_pool_status, "rows": results.redis_pool},
        "swept": results.swept,
    }
    return json.dumps(doc, indent=1, default=str) + "\n"

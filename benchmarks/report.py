"""Turns the collected rows into benchmarks/results.md and results.json, with targets checked.

Ratios are ``ours / reference`` in time, so lower is better in the tables: ``1.15 × floor-c``
is 15 % slower than the compiled floor, ``0.25 × best peer`` is 4 times faster than the
fastest peer. The target lines say "N× faster than" where the issue does (``reference /
ours``). The cycle targets come from the head-to-head (headtohead.py), as the median of the
per-round ratios; the best peer excludes the plain dict, which shares nothing.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from . import headtohead, job, library
from .systems import BY_NAME, SYSTEMS
from .values import VALUES
from .workloads import OPS

KIND_TITLES = {"small": "~100-byte msgpack dict", "bytes100": "100-byte bytes value", "4k": "4 KiB bytes value",
               headtohead.TYPED: "the dict as a msgspec Struct, typed pool"}
# FixedPool's get of the ~100 B dict over floor-c's at c535a85 (benchmarks/results.json then: 1,124.7 /
# 1,786.7 ns), the last run on msgpack-python: issue 20's "get ≤ 0.45× today's", normalized by the floor.
GET_DICT_BEFORE_OVER_FLOOR = 1124.7345 / 1786.7395
BATCH_OPS = ("batch_allocate_100", "batch_release_100")
CREATE_OPS = ("create/10k/lazy", "create/10k/eager", "create/1M/lazy", "create/1M/eager")
OVERHEAD_SIZES = (64, 1024, 4096)
FLOOR = "floor-c"
TARGET_KINDS = ("FixedPool", "ThreadLocalPool")  # the kinds the cycle targets name
CURVE = ("FixedPool", FLOOR, "LMDB")  # contention curve reported beside the scaling target
README_MARKERS = ("<!-- bench-table:start -->", "<!-- bench-table:end -->")


@dataclass
class Target:
    """One target line; ``status`` is met, missed, info (a figure without a bound) or "not measured"."""

    status: str
    text: str
    value: float | None = None

    def line(self) -> str:
        return f"{self.status:<6} {self.text}"


class Table:
    """Lookup of the median value of (system, op); None when not measured."""

    def __init__(self, rows: list[dict]):
        self.rows = {(r["system"], r["op"]): r for r in rows}

    def get(self, system: str, op: str) -> float | None:
        r = self.rows.get((system, op))
        return None if r is None else r.get("value")

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

    def paired(self, system: str, op: str, reference: str, reference_op: str | None = None) -> float | None:
        """ours / reference, the median over the rounds both ran (the head-to-head's samples are in round order)."""
        a, b = self.rows.get((system, op)), self.rows.get((reference, reference_op or op))
        if not a or not b or a.get("value") is None or b.get("value") is None:
            return None
        pairs = [x / y for x, y in zip(a.get("samples", []), b.get("samples", []), strict=False) if y]
        return statistics.median(pairs) if pairs else (a["value"] / b["value"] if b["value"] else None)


# -- targets ---------------------------------------------------------------------------------


def check_targets(t: Table, names: list[str]) -> list[Target]:
    """The issue's targets, as measured in this run (reported, never asserted)."""
    out: list[Target] = []
    bytes_op, dict_op = headtohead.op_name("bytes100"), headtohead.op_name("small")
    for kind in TARGET_KINDS:
        # ThreadLocalPool: issue 18 asks for the floor itself, now that a magazine pop claims by CAS.
        out.append(_at_most(t, kind, bytes_op, FLOOR, 1.0 if kind == "ThreadLocalPool" else 1.5, "cycle of 100 B bytes"))
        out.append(_faster(t, kind, bytes_op, "LMDB", 20, "cycle of 100 B bytes"))
        out.append(_faster(t, kind, bytes_op, "iceoryx2", 8, "cycle of 100 B bytes"))
        # Issue 20 (values on msgspec): the dict cycle against the floor (msgpack-python, called from C) and LMDB.
        out.append(_at_most(t, kind, dict_op, FLOOR, 0.6, "cycle of a ~100 B dict"))
        out.append(_faster(t, kind, dict_op, "LMDB", 6, "cycle of a ~100 B dict"))
        typed = t.paired(kind, headtohead.op_name(headtohead.TYPED), kind, dict_op)
        out.append(Target("not measured" if typed is None else ("met" if typed <= 1.0 else "missed"),
                          f"{kind} cycle of the dict as a Struct in a typed pool: "
                          f"{'—' if typed is None else f'{typed:.2f}'}× the untyped dict cycle (target ≤ 1.0×)", typed))
    got = t.ratio("FixedPool", "get/small", FLOOR)
    got = None if got is None else got / GET_DICT_BEFORE_OVER_FLOOR
    out.append(Target("not measured" if got is None else ("met" if got <= 0.45 else "missed"),
                      "FixedPool get of a ~100 B dict: " + ("—" if got is None else f"{got:.2f}") +
                      "× the msgpack-python core's (c535a85), both over floor-c's get (target ≤ 0.45×)", got))
    one, two = t.get("ThreadLocalPool", "mp/1"), t.get("ThreadLocalPool", "mp/2")
    if one and two:
        out.append(Target("met" if two / one >= 1.8 else "missed",
                          f"ThreadLocalPool 2 processes: {two / one:.2f}× the throughput of one (target ≥ 1.8×)",
                          two / one))
    else:
        out.append(Target("not measured", "ThreadLocalPool 2 processes vs one (target ≥ 1.8×)"))
    out += _prodcons(t)
    job_rows = [r for r in t.rows.values() if r["op"].startswith("job/")]
    if job_rows:
        out += [Target(*target) for target in job.targets(job_rows)]
    out.append(_curve(t))
    for kind in library.KINDS:
        v = t.get(kind, "overhead/1024")
        if v is None:
            out.append(Target("not measured", f"{kind} memory overhead at 1 KiB slots (target < 2 %)"))
        else:
            out.append(Target("met" if v < 2.0 else "missed",
                              f"{kind} memory overhead at 1 KiB slots: {v:.2f} % of capacity × slot size in "
                              "/dev/shm (target < 2 %)", v))
    out.append(_absolute(t, "GrowingPool", "grow/1000", 100_000, "growth of 1,000 slots", 1e3, "µs"))
    for kind in library.KINDS:
        if (kind, "create/1M/lazy") in t.rows:
            out.append(_absolute(t, kind, "create/1M/lazy", 50e6, "creating 1M slots (lazy)", 1e6, "ms"))
    return out


def _prodcons(t: Table) -> list[Target]:
    """Issue 18: 1 producer allocating, 2 consumers releasing (capacity 64, at most 48 in flight)."""
    fixed, local = t.rows.get(("FixedPool", "prodcons")), t.rows.get(("ThreadLocalPool", "prodcons"))
    if not (fixed and local and fixed.get("value") and local.get("value")):
        return [Target("not measured", "ThreadLocalPool producer/consumer vs FixedPool (target ≥ 1.0×)")]
    ratio = local["value"] / fixed["value"]
    refused = local["refused_below_capacity"] + fixed["refused_below_capacity"]
    return [
        Target("met" if ratio >= 1.0 else "missed",
               f"ThreadLocalPool producer/consumer (1 allocating, 2 releasing): {ratio:.2f}× FixedPool's items/s "
               f"({local['value']:,.0f} vs {fixed['value']:,.0f}; {local['steals']:,} steals, "
               f"{local['lock_acquisitions_per_item']:.2f} lock acquisitions per item) (target ≥ 1.0×)", ratio),
        Target("met" if refused == 0 else "missed",
               f"producer/consumer: {refused} PoolExhausted with fewer than capacity slots allocated (target 0)",
               refused),
    ]


def _at_most(t: Table, system: str, op: str, reference: str, bound: float, label: str) -> Target:
    r = t.paired(system, op, reference)
    text = f"{system} {label}: " + ("—" if r is None else f"{r:.2f}× {reference}") + f" (target ≤ {bound}×)"
    if r is None:
        return Target("not measured", text)
    return Target("met" if r <= bound else "missed", text, r)


def _faster(t: Table, system: str, op: str, reference: str, bound: float, label: str) -> Target:
    r = t.paired(reference, op, system)
    text = f"{system} {label}: " + ("—" if r is None else f"{r:.1f}× faster than {reference}") + \
        f" (target ≥ {bound}×)"
    if r is None:
        return Target("not measured", text)
    return Target("met" if r >= bound else "missed", text, r)


def _curve(t: Table) -> Target:
    """FixedPool contended by 1, 2, 4 processes against LMDB and the floor: figures, no bound."""
    parts = []
    for system in CURVE:
        points = [t.get(system, f"mp/{p}") for p in (1, 2, 4)]
        if any(points):
            parts.append(f"{system} " + " / ".join("—" if v is None else f"{v / 1e3:,.0f}k" for v in points))
    if not parts:
        return Target("not measured", "FixedPool contended by 1, 2, 4 processes vs LMDB and floor-c")
    return Target("info", "cycles/s with 1 / 2 / 4 processes: " + "; ".join(parts) + " (scaling.png)")


def _absolute(t: Table, system: str, op: str, bound_ns: float, label: str, scale: float, unit: str) -> Target:
    v = t.get(system, op)
    if v is None:
        return Target("not measured", f"{system} {label} (target < {bound_ns / scale:g} {unit})")
    return Target("met" if v < bound_ns else "missed",
                  f"{system} {label}: {v / scale:.1f} {unit} (target < {bound_ns / scale:g} {unit})", v / scale)


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
    """One ns/op table over ``names``, then ratios of the library kinds to the compiled floor and to the best peer."""
    lines = [unit_note, ""]
    lines += _table(["system", *headers], [[_label(n, unavailable), *(_fmt(t.get(n, op)) for op in ops)]
                                           for n in names])
    kinds = [k for k in library.KINDS if k in names]
    if not kinds:
        return lines
    ratio_rows = [[k, FLOOR, *(_ratio(t.ratio(k, op, FLOOR)) for op in ops)] for k in kinds]
    best = [t.best_peer(op) for op in ops]
    for k in kinds:
        cells = [_ratio(t.ratio(k, op, peer)) if peer else "—" for op, (peer, _) in zip(ops, best, strict=True)]
        ratio_rows.append([k, "best peer", *cells])
    ratio_rows.append(["", "*(best peer)*", *(p or "—" for p, _ in best)])
    lines += ["Ratios (time, lower is better; × floor-c ≥ 1 is the price over the compiled minimal pool, "
              "× best peer < 1 is faster than every peer):", ""]
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
    lines += ["## Targets", "", "Reported, not asserted (timings on a shared machine are noisy). The cycle "
              "ratios come from the head-to-head below.", ""]
    lines += [f"- {tg.line()}" for tg in targets] + [""]
    lines += _h2h_section(t, names, settings)
    lines += _job_section(t, results)

    for kind in VALUES:
        lines += [f"## Single operations, {KIND_TITLES[kind]}", ""]
        lines += _ops_section(t, names, [f"{op}/{kind}" for op in OPS], list(OPS),
                              "ns/op; `cycle` = allocate → get → release of one value (iceoryx2: loan, write, "
                              "send, receive, drop); each system measured on its own, one after the other.", un)
    lines += ["## Batches of 100 (`allocate_many` / `release_many`)", ""]
    lines += _ops_section(t, names, list(BATCH_OPS), ["allocate 100", "release 100"],
                          "ns per batch of 100 small values (peers: their bulk call where they have one; "
                          "floor-c has none: a loop of single calls).", un)

    mp_names = [n for n in names if any((n, f"mp/{p}") in t.rows for p in settings.mp_procs) or n in un]
    lines += ["## Processes on one pool", "",
              f"Cycles (allocate → get → release of {KIND_TITLES['bytes100']}) per second, all processes together "
              f"({settings.mp_seconds:g} s per run; each worker attaches by name, or inherits the peer's handle "
              "through fork).", ""]
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
                  "µs: GrowingPool = the `allocate()` that triggers growth; floor-py = mapping a new "
                  "1,000-slot segment and listing its slots free.", ""]
        lines += _table(["system", "µs", "× floor-py"],
                        [[n, _fmt(t.get(n, "grow/1000"), 1e3, 1), _ratio(t.ratio(n, "grow/1000", "floor-py"))]
                         for n in grow_names])
    ov_names = [n for n in names if any((n, f"overhead/{s}") in t.rows for s in OVERHEAD_SIZES)]
    if ov_names:
        lines += ["## Memory overhead", "",
                  "% of shared memory above the payload: pools and floors = bytes of their entries in /dev/shm "
                  "(segments, extents, semaphores) / (capacity × slot size) − 1 "
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


def _job_section(t: Table, results) -> list[str]:
    job_rows = [r for r in t.rows.values() if r["op"].startswith("job/")]
    if not job_rows:
        return []
    first = job_rows[0]
    return ["## The users' job: 1 producer → 2 consumer processes", "",
            f"{first['items']:,} work items of ~50 msgpack bytes per repetition, then {first['paced_items']:,} "
            "paced (one per 100 µs) for the latency; the median of the rounds, which interleave the transports. "
            "CPU is the three processes' (not Redis's server). How each transport is driven: `job.py`.", "",
            *job.table(job_rows, getattr(results, "job_unavailable", {})), ""]


def _h2h_section(t: Table, names: list[str], settings) -> list[str]:
    members = headtohead.contenders(names)
    if not any((n, headtohead.op_name(k)) in t.rows for n in members for k in headtohead.KINDS):
        return []
    lines = ["## Head-to-head: the target cycles, interleaved", "",
             f"ns per cycle (allocate → get → release; iceoryx2: loan, write, send, receive, drop), the median of "
             f"{settings.h2h_rounds} rounds of {settings.n_max} cycles; in each round every contender runs one "
             "repetition, one at a time, in an order rotated every round. × floor-c is the median of the "
             "per-round ratios. The dict is msgpack-ed by every system, floor-c included.", ""]
    return lines + _table(["system", *(h for k in headtohead.KINDS for h in (KIND_TITLES[k], "× floor-c"))],
                          _h2h_rows(t, members))


def _h2h_rows(t: Table, members: list[str]) -> list[list[str]]:
    rows = []
    for n in members:
        cells = []
        for k in headtohead.KINDS:
            op = headtohead.op_name(k)
            # The typed cycle against the floor's dict cycle (the floor has no types).
            reference_op = headtohead.op_name("small") if k == headtohead.TYPED else op
            cells += [_fmt(t.get(n, op)), _ratio(t.paired(n, op, FLOOR, reference_op))]
        rows.append([n, *cells])
    return rows


def readme_table(t: Table, names: list[str]) -> list[str]:
    """The README's performance table: the head-to-head, scaling and memory in one glance."""
    members = headtohead.contenders(names)
    rows = _h2h_rows(t, members)
    for row_, n in zip(rows, members, strict=True):
        one, two = t.get(n, "mp/1"), t.get(n, "mp/2")
        row_ += [_ratio(two / one) if one and two else "—", _fmt(t.get(n, "overhead/1024"), 1, 2)]
    header = ["system", *(h for k in headtohead.KINDS for h in (f"cycle, {KIND_TITLES[k]}, ns", "× floor-c")),
              "2 procs / 1", "overhead at 1 KiB, %"]
    return _table(header, rows)


def update_readme(path: Path, table: list[str]) -> str:
    """Replace the table between README_MARKERS in ``path``; say what was done."""
    start, end = README_MARKERS
    text = path.read_text()
    if start not in text or end not in text:
        return f"{path.name} has no {start} … {end} block: the table is in results.md only"
    block = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    path.write_text(block.sub(lambda _: "\n".join([start, *table]).rstrip("\n") + "\n" + end, text, count=1))
    return f"updated the table in {path}"


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

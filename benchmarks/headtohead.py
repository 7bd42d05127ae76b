"""The head-to-head: the target cycles of every contender, interleaved repetition by repetition.

Each contender runs in its own spawned child, holds its stores open and waits; the parent asks
one child at a time for one repetition (``n`` cycles of allocate → get → release, or
iceoryx2's round trip), so only one measures at any moment, and a round visits every
contender before the next round starts, in an order rotated by one each round. A change of
load on the machine (2 cores shared with others) then lands on every contender alike instead
of on whichever happened to run during it, and the ratios of the targets are taken round by
round (the median of the per-round ratios).
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from functools import partial

from . import library
from .systems import POOL_CAPACITY, Session, Unavailable, check_available, create_store
from .timing import gc_paused, row
from .values import SLOT_SIZES, SMALL_TYPED, VALUES, SmallRecord
from .workloads import rep_cycle

CONTENDERS = ("floor-c", "FixedPool", "ThreadLocalPool", "LMDB", "iceoryx2")
TYPED = "small-typed"  # the dict as a msgspec Struct in a typed pool (value_type=SmallRecord)
KINDS = ("bytes100", "small", TYPED)
START_TIMEOUT = 120.0  # seconds a contender may take to import, build and create its stores
REP_TIMEOUT = 60.0  # seconds one repetition may take before its contender is dropped
INDEX_BASE = 100  # session indices of the contenders: apart from the per-system runs'


def kinds_of(system: str) -> tuple[str, ...]:
    """iceoryx2 races on bytes only: the dict targets compare with the floor and LMDB; only the
    library's kinds have typed values."""
    if system == "iceoryx2":
        return ("bytes100",)
    return KINDS if system in library.KINDS else ("bytes100", "small")


def value_of(kind: str):
    return SMALL_TYPED if kind == TYPED else VALUES[kind]


def _create(system: str, session, kind: str):
    if kind != TYPED:
        return create_store(system, session, kind)
    pool = library.create_pool(system, session.name(), POOL_CAPACITY, SLOT_SIZES["small"], value_type=SmallRecord)
    return library.PoolStore(system, pool, owner=True)


def op_name(kind: str) -> str:
    return f"h2h/cycle/{kind}"


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def contender(system: str, index: int, settings, conn) -> None:
    """(child) Create a store per kind, then answer ("rep", kind, n) with ns per cycle until ("stop",)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    session = Session(settings, INDEX_BASE + index)
    stores = {}
    try:
        try:
            check_available(system, settings)
        except Unavailable as exc:
            conn.send(("unavailable", str(exc)))
            return
        for kind in kinds_of(system):
            stores[kind] = _create(system, session, kind)
        conn.send(("ready",))
        while (msg := conn.recv())[0] == "rep":
            _, kind, n = msg
            conn.send(("ok", gc_paused(partial(rep_cycle, stores[kind], value_of(kind), n)) / n))
    except (EOFError, KeyboardInterrupt):
        pass  # the parent went away: clean up below
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6)))
    finally:
        for store in stores.values():
            store.close()
        session.close()
        conn.close()


def steps(settings, names: list[str]) -> int:
    """Progress steps of the head-to-head (start + warm-up round + rounds), 0 if it does not run."""
    return settings.h2h_rounds + 2 if len(contenders(names)) >= 2 else 0


def contenders(names: list[str]) -> list[str]:
    return [c for c in CONTENDERS if c in names]


def run(settings, names: list[str], results, progress) -> None:
    """Run the rounds; rows, errors and unavailable systems go into ``results`` (runner.Results)."""
    members = contenders(names)
    if len(members) < 2:
        return
    ctx = multiprocessing.get_context("spawn")
    procs, conns = {}, {}
    progress.show("starting", "head-to-head")
    try:
        for i, name in enumerate(members):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=contender, args=(name, i, settings, child), daemon=True)
            proc.start()
            child.close()
            procs[name], conns[name] = proc, parent
        alive = [name for name in members if _ready(name, conns[name], results)]
        progress.advance("warm-up", "head-to-head")
        samples = {(name, kind): [] for name in alive for kind in kinds_of(name)}
        n = settings.n_max
        for rnd in range(settings.h2h_rounds + 1):  # round 0 warms up and is not kept
            order = alive[rnd % len(alive):] + alive[:rnd % len(alive)] if alive else []
            for kind in KINDS:
                for name in order:
                    if name in alive and kind in kinds_of(name):
                        value = _rep(name, conns[name], kind, n, results)
                        if value is None:
                            alive.remove(name)
                        elif rnd:
                            samples[(name, kind)].append(value)
            label = f"round {rnd + 1}/{settings.h2h_rounds}" if rnd < settings.h2h_rounds else "done"
            progress.advance(label, "head-to-head")
        for (name, kind), got in samples.items():
            if got:
                results.rows.append(row(name, op_name(kind), got, "ns/op", n=n, rounds=len(got)))
    finally:
        for conn in conns.values():
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for name, proc in procs.items():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conns[name].close()


def _ready(name: str, conn, results) -> bool:
    msg = _receive(name, conn, START_TIMEOUT, "start", results)
    if msg is None:
        return False
    if msg[0] == "unavailable":
        results.unavailable.setdefault(name, msg[1])
        return False
    return msg[0] == "ready"


def _rep(name: str, conn, kind: str, n: int, results) -> float | None:
    try:
        conn.send(("rep", kind, n))
    except OSError as exc:
        results.errors.append({"system": name, "step": op_name(kind), "error": f"contender gone: {exc}",
                               "traceback": ""})
        return None
    msg = _receive(name, conn, REP_TIMEOUT, op_name(kind), results)
    return msg[1] if msg is not None and msg[0] == "ok" else None


def _receive(name: str, conn, timeout: float, step: str, results):
    """The contender's next message, or None after recording why there is none."""
    try:
        if not conn.poll(timeout):
            error = f"no answer within {timeout:.0f} s"
        else:
            msg = conn.recv()
            if msg[0] != "error":
                return msg
            results.errors.append({"system": name, "step": step, "error": msg[1], "traceback": msg[2]})
            return None
    except (EOFError, OSError):
        error = "contender died"
    results.errors.append({"system": name, "step": step, "error": error, "traceback": ""})
    return None

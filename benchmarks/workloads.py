"""The workloads, identical for every system, and the plan that says which system runs which.

A step is ``fn(system, session) -> list[row]``; it creates what it measures and removes it in
a ``finally``. Single-process loops call the store's callables directly (for this project's
pools those are the pool's own bound methods), so every system pays the same loop overhead,
and the floor pays it too.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import re
from collections.abc import Callable
from functools import partial

from . import library, systems
from .floor import FloorPool, grow_extent
from .systems import FloorCStore, attach_store, create_store, read_spec
from .timing import clock, error_row, repeat, row
from .values import INITIALIZER, MP_KIND, SLOT_SIZES, SMALL, VALUES

OPS = ("allocate", "get", "set", "release", "cycle")
BATCH = 100
MP_WARMUP_CYCLES = 200
WORKER_TIMEOUT = 60.0  # seconds a worker may take to attach, warm up or report
SHM_DIR = "/dev/shm"


# -- single-process ops ----------------------------------------------------------------------


def _rep_allocate(store, value, n: int) -> float:
    alloc, values = store.allocate, [value] * n
    t0 = clock()
    hs = [alloc(v) for v in values]
    elapsed = clock() - t0
    store.release_many(hs)
    return elapsed


def _rep_get(store, hs: list) -> float:
    get = store.get
    t0 = clock()
    for h in hs:
        get(h)
    return clock() - t0


def _rep_set(store, hs: list, value) -> float:
    set_ = store.set
    t0 = clock()
    for h in hs:
        set_(h, value)
    return clock() - t0


def _rep_release(store, value, n: int) -> float:
    alloc, rel = store.allocate, store.release
    hs = [alloc(value) for _ in range(n)]
    t0 = clock()
    for h in hs:
        rel(h)
    return clock() - t0


def rep_cycle(store, value, n: int) -> float:
    """``n`` cycles (allocate → get → release) of ``value``; iceoryx2 runs its own round trip."""
    if hasattr(store, "rep_cycle"):
        return store.rep_cycle(value, n)
    alloc, get, rel = store.allocate, store.get, store.release
    t0 = clock()
    for _ in range(n):
        h = alloc(value)
        get(h)
        rel(h)
    return clock() - t0


def choose_n(store, value, settings) -> int:
    """Ops per repetition: doubled from n_min while a repetition stays within the time budget.

    Fast systems reach n_max; slow ones stop early. Calibrating with allocate (which builds
    the live set) also catches peers whose cost grows with the live set. It doubles as the
    warm-up.
    """
    limit = min(settings.n_max, store.max_live or settings.n_max)
    n = min(settings.n_min, limit)
    while n < limit and 2 * _rep_allocate(store, value, n) <= settings.rep_budget_ns:
        n = min(limit, 2 * n)
    return n


def step_ops(system: str, session, kind: str) -> list[dict]:
    """allocate, get, set, release and the cycle (allocate → get → release) for one value kind.

    A system that is no store (iceoryx2) runs the cycle only, n_max round trips a repetition.
    """
    s, value = session.settings, VALUES[kind]
    rows: list[dict] = []

    def attempt(op: str, per_rep: Callable[[], float], n: int) -> None:
        try:
            samples = repeat(per_rep, s.reps)
            rows.append(row(system, f"{op}/{kind}", [t / n for t in samples], "ns/op", n=n))
        except Exception as exc:
            rows.append(error_row(system, f"{op}/{kind}", exc))

    store = create_store(system, session, kind)
    try:
        if not systems.BY_NAME[system].store:
            attempt("cycle", lambda: rep_cycle(store, value, s.n_max), s.n_max)
            return rows
        n = choose_n(store, value, s)
        attempt("allocate", lambda: _rep_allocate(store, value, n), n)
        live = [store.allocate(value) for _ in range(n)]
        attempt("get", lambda: _rep_get(store, live), n)
        attempt("set", lambda: _rep_set(store, live, value), n)
        store.release_many(live)
        attempt("release", lambda: _rep_release(store, value, n), n)
        attempt("cycle", lambda: rep_cycle(store, value, n), n)
        rows.extend(_lock_trips(system, store, kind))
    finally:
        store.close()
    return rows


def _lock_trips(system: str, store, kind: str) -> list[dict]:
    """Lock round trips per allocate/release, from the pool's own counters (library only)."""
    pool = getattr(store, "pool", None)
    if system not in library.KINDS or pool is None:
        return []
    try:
        st = pool.statistics()
        ops = st.total_allocations + st.total_deallocations
        return [row(system, f"lock_trips_per_op/{kind}", [st.lock_acquisitions / max(ops, 1)], "ratio")]
    except Exception as exc:
        return [error_row(system, f"lock_trips_per_op/{kind}", exc)]


def step_batch(system: str, session) -> list[dict]:
    """allocate_many / release_many of 100 small values; ns per batch."""
    s = session.settings
    store = create_store(system, session, "small")
    values = [SMALL] * BATCH
    try:
        am, rm = store.allocate_many, store.release_many

        def rep(m: int) -> tuple[float, float]:
            t0 = clock()
            batches = [am(values) for _ in range(m)]
            t1 = clock()
            for hs in batches:
                rm(hs)
            return (t1 - t0) / m, (clock() - t1) / m

        one = sum(rep(1))  # warm-up and calibration
        m = max(1, min(s.batches_max, int(s.rep_budget_ns // max(one, 1))))
        if store.max_live:
            m = max(1, min(m, store.max_live // BATCH))
        pairs = repeat_pairs(lambda: rep(m), s.reps)
        return [row(system, "batch_allocate_100", [a for a, _ in pairs], "ns/batch", n=m),
                row(system, "batch_release_100", [r for _, r in pairs], "ns/batch", n=m)]
    finally:
        store.close()


def repeat_pairs(rep: Callable[[], tuple[float, float]], reps: int) -> list[tuple[float, float]]:
    """Like timing.repeat for a repetition that measures two things."""
    out: list[tuple[float, float]] = []
    repeat(lambda: out.append(rep()) or 0.0, reps)
    return out[1:]


# -- several processes on one store ----------------------------------------------------------


def _mp_worker(system: str, spec, worker_id: int, barrier, seconds: float, conn) -> None:
    """Attach, warm up, wait for all, then run cycles (allocate → get → release) for ``seconds``; report counts."""
    store = None
    try:
        store = attach_store(system, spec, worker_id)
        alloc, get, rel = store.allocate, store.get, store.release
        value = VALUES[MP_KIND]
        done = errors = 0
        first_error = None
        for _ in range(MP_WARMUP_CYCLES):
            try:
                h = alloc(value)
                get(h)
                rel(h)
            except Exception as exc:  # counted below: the others are warming up concurrently
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
        gc.disable()
        barrier.wait(timeout=WORKER_TIMEOUT)
        budget = int(seconds * 1e9)
        t0 = t1 = clock()
        while t1 - t0 < budget:
            for _ in range(64):
                try:
                    h = alloc(value)
                    get(h)
                    rel(h)
                    done += 1
                except Exception as exc:  # a peer unsafe under concurrency: count it, keep going
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
            t1 = clock()
        conn.send(("ok", done, errors, t0, t1, first_error))
    except BaseException as exc:
        barrier.abort()
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if store is not None:
            store.close()
        conn.close()


def step_mp(system: str, session, nprocs: int) -> list[dict]:
    """``nprocs`` forked workers run cycles of the MP_KIND value on one store; aggregate cycles per second.

    fork, not spawn: the Manager proxy, UltraDict's lock and shared-memory-dict's lock are
    only shared with forked children. Pools and the floor still attach by name.
    """
    s = session.settings
    ctx = multiprocessing.get_context("fork")
    store = create_store(system, session, MP_KIND)
    procs, conns = [], []
    try:
        spec = store.worker_spec()
        if hasattr(store, "before_fork"):
            store.before_fork()
        barrier = ctx.Barrier(nprocs + 1)
        for i in range(nprocs):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_mp_worker, args=(system, spec, i + 1, barrier, s.mp_seconds, send),
                            daemon=True)
            p.start()
            send.close()
            procs.append(p)
            conns.append(recv)
        try:
            barrier.wait(timeout=WORKER_TIMEOUT)
        except Exception:
            pass  # a worker failed to start: its own report says why
        results = [c.recv() if c.poll(WORKER_TIMEOUT + s.mp_seconds) else ("error", "no report") for c in conns]
    finally:
        for p in procs:
            p.join(WORKER_TIMEOUT)
            if p.is_alive():
                p.kill()
                p.join()
        store.close()
    failed = [r[1] for r in results if r[0] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {nprocs} workers failed: {failed[0]}")
    done = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    span = max(r[4] for r in results) - min(r[3] for r in results)
    per_worker = [r[1] / (r[4] - r[3]) * 1e9 for r in results]
    first_error = next((r[5] for r in results if r[5]), None)
    return [row(system, f"mp/{nprocs}", [done / span * 1e9], "cycles/s", per_worker=per_worker, errors=errors,
                **({"first_error": first_error} if first_error else {}))]


# -- producer and consumers (issue 18) -------------------------------------------------------

PRODCONS_CAPACITY = 64
PRODCONS_IN_FLIGHT = 48  # handles out at once: below capacity, so any PoolExhausted is a wrong answer
PRODCONS_BATCH = 8  # handles per message, so the pipe costs less than the pool


def _prodcons_consumer(spec, handles, acks) -> None:
    """Release every handle it is sent; acknowledge each batch with its length."""
    pool = library.PoolStore.attach(spec)
    try:
        while (batch := handles.recv()) is not None:
            for h in batch:
                pool.release(h)
            acks.send(len(batch))
    finally:
        pool.close()


def step_prodcons(system: str, session) -> list[dict]:
    """1 producer allocating 100 B bytes, 2 consumer processes releasing: items per second, and the
    PoolExhausted answers with fewer than capacity slots allocated (at most PRODCONS_IN_FLIGHT are)."""
    import fastalloc_shm

    ctx = multiprocessing.get_context("fork")
    value = VALUES["bytes100"]
    store = library.PoolStore.create(system, session.name(), PRODCONS_CAPACITY, SLOT_SIZES["bytes100"])
    pipes = [ctx.Pipe() for _ in range(2)]
    consumers = [ctx.Process(target=_prodcons_consumer, args=(store.worker_spec(), theirs, theirs), daemon=True)
                 for _, theirs in pipes]
    try:
        for c in consumers:
            c.start()
        ends = [mine for mine, _ in pipes]
        alloc, refused, sent, acked = store.allocate, 0, 0, 0
        budget, batch, turn = int(session.settings.mp_seconds * 1e9), [], 0
        t0 = t1 = clock()
        while t1 - t0 < budget:
            for _ in range(64):
                while sent - acked >= PRODCONS_IN_FLIGHT:
                    acked += sum(end.recv() for end in ends if end.poll())
                try:
                    batch.append(alloc(value))
                except fastalloc_shm.PoolExhausted:
                    refused += 1  # fewer than capacity allocated: a magazine hid a free slot
                    continue
                sent += 1
                if len(batch) == PRODCONS_BATCH:
                    ends[turn].send(batch)
                    batch, turn = [], 1 - turn
            t1 = clock()
        if batch:
            ends[turn].send(batch)
        while acked < sent:
            ready = multiprocessing.connection.wait(ends, WORKER_TIMEOUT)
            if not ready:
                raise RuntimeError(f"consumers acknowledged {acked} of {sent} items")
            acked += sum(end.recv() for end in ready)
        t1 = clock()
        for end in ends:
            end.send(None)
        for c in consumers:
            c.join(WORKER_TIMEOUT)
        stats = store.pool.statistics()
    finally:
        for c in consumers:
            if c.is_alive():
                c.kill()
        store.close()
    return [row(system, "prodcons", [sent / (t1 - t0) * 1e9], "items/s", refused_below_capacity=refused,
                steals=stats.steals, lock_acquisitions_per_item=stats.lock_acquisitions / max(sent, 1))]


# -- memory of an attached worker ------------------------------------------------------------


def _rss_worker(system: str, spec, keys: list, conn) -> None:
    """(spawned) Attach, read every value once, report RSS and USS before and after."""
    import psutil

    store = None
    try:
        systems.check_available(system)  # imports first: the delta is attach + reads only
        proc = psutil.Process()
        before = proc.memory_full_info()
        store = attach_store(system, spec, 1)
        get = store.get
        for k in keys:
            get(k)
        after = proc.memory_full_info()
        conn.send(("ok", before.rss, before.uss, after.rss, after.uss))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if store is not None:
            store.close()
        conn.close()


def step_rss(system: str, session) -> list[dict]:
    """RSS/USS of a freshly spawned worker that attached and read ``rss_values`` small values."""
    s = session.settings
    ctx = multiprocessing.get_context("spawn")
    store = create_store(system, session, "small")
    try:
        count = min(s.rss_values, store.max_live or s.rss_values)
        keys = [store.allocate(SMALL) for _ in range(count)]
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_rss_worker, args=(system, read_spec(store), keys, send), daemon=True)
        p.start()
        send.close()
        try:
            result = recv.recv() if recv.poll(WORKER_TIMEOUT) else ("error", "no report")
        except EOFError:
            result = ("error", f"worker died (exit code {p.exitcode})")
        p.join(WORKER_TIMEOUT)
        if p.is_alive():
            p.kill()
            p.join()
    finally:
        store.close()
    if result[0] != "ok":
        raise RuntimeError(result[1])
    _, rss0, uss0, rss1, uss1 = result
    kib = 1024
    return [row(system, "rss_worker", [rss1 / kib], "KiB", values=count),
            row(system, "uss_worker", [uss1 / kib], "KiB", values=count),
            row(system, "rss_attach_delta", [(rss1 - rss0) / kib], "KiB", values=count)]


# -- creation, growth, overhead (pools and floor) --------------------------------------------


def _create(system: str, name: str, capacity: int, slot_size: int, eager: bool):
    """Create a pool (eager: every slot holds INITIALIZER's value) and return a destroy callable."""
    if system == "floor-py":
        pool = FloorPool.create(name, capacity, slot_size, initial=None if eager else ...)
        return lambda: (pool.unlink(), pool.close())
    extra = {"pre_initialize": True, "initializer": INITIALIZER} if eager else {}
    pool = library.create_pool(system, name, capacity, slot_size, **extra)
    return lambda: library.destroy_pool(pool)


def step_create(system: str, session, capacity: int, eager: bool) -> list[dict]:
    """Time ``create`` alone (destroy untimed); a small creation first warms the code path."""
    s = session.settings
    _create(system, session.name(), 1000, 64, eager)()
    samples = []
    for _ in range(s.create_reps):
        name = session.name()
        t0 = clock()
        destroy = _create(system, name, capacity, 64, eager)
        samples.append(clock() - t0)
        destroy()
    return [row(system, f"create/{size_label(capacity)}/{'eager' if eager else 'lazy'}", samples, "ns",
                slot_size=64)]


def size_label(capacity: int) -> str:
    return f"{capacity // 1_000_000}M" if capacity % 1_000_000 == 0 else f"{capacity // 1000}k"


def step_grow(system: str, session) -> list[dict]:
    """Growth by 1,000 slots: the allocate() that triggers it (GrowingPool), or floor-py's extent."""
    s, step = session.settings, library.GROWTH_STEP
    samples: list[float] = []
    if system == "floor-py":
        for _ in range(s.grow_reps + 1):
            t0 = clock()
            grow_extent(session.name(), step, SLOT_SIZES["small"])
            samples.append(clock() - t0)
        return [row(system, "grow/1000", samples[1:], "ns")]
    from fastalloc_shm import GrowthStrategy

    pool = library.create_pool(system, session.name(), step, SLOT_SIZES["small"],
                               max_capacity=step * (s.grow_reps + 3), growth_strategy=GrowthStrategy.linear(step))
    try:
        pool.allocate_many([SMALL] * step)
        growths = 0
        for _ in range(s.grow_reps + 1):  # the first growth is the warm-up
            before = pool.statistics().growth_count
            t0 = clock()
            pool.allocate(SMALL)
            samples.append(clock() - t0)
            growths += pool.statistics().growth_count - before
            pool.allocate_many([SMALL] * (step - 1))
    finally:
        library.destroy_pool(pool)
    return [row(system, "grow/1000", samples[1:], "ns", growths=growths)]


def step_overhead(system: str, session) -> list[dict]:
    """Shared bytes per payload byte, as a % above 1, at several slot (value) sizes."""
    s = session.settings
    rows = []
    for size in s.overhead_slot_sizes:
        op = f"overhead/{size}"
        try:
            rows.append(row(system, op, [_overhead(system, session, size) * 100], "%"))
        except Exception as exc:
            rows.append(error_row(system, op, exc))
    return rows


def shm_bytes(name: str) -> int:
    """Bytes of every /dev/shm entry of the object ``name`` (segments, extents, semaphores, lock files).

    Counted from the file system, not from what the pool says of itself. Session names end
    in a counter, so a name must not be followed by a digit ("…-1" is not "…-10").
    """
    own = re.compile(re.escape(name) + r"(?![0-9])")
    return sum(os.stat(os.path.join(SHM_DIR, e)).st_size for e in os.listdir(SHM_DIR) if own.search(e))



def _overhead(system: str, session, size: int) -> float:
    s = session.settings
    if system in ("floor-c", "floor-py") or system in library.KINDS:
        cap, name = s.overhead_capacity, session.name()
        if system == "floor-c":
            store = FloorCStore.create(name, cap, size, packed=False)
            destroy = store.close
        elif system == "floor-py":
            pool = FloorPool.create(name, cap, size)
            destroy = lambda: (pool.unlink(), pool.close())  # noqa: E731
        else:
            pool = library.create_pool(system, name, cap, size)
            destroy = lambda: library.destroy_pool(pool)  # noqa: E731
        try:
            nbytes = shm_bytes(name)
        finally:
            destroy()
        return nbytes / (cap * size) - 1
    # Peers: the memory their data takes, for N values of exactly `size` bytes.
    count, payload = s.peer_overhead_values, bytes(size)
    store = create_store(system, session, "small")
    try:
        if system == "Redis":
            before = store.used_memory()
            store.client.mset({f"{store.prefix}o{i}": payload for i in range(count)})
            used = store.used_memory() - before
        elif system == "LMDB":
            with store.env.begin(write=True) as txn:
                for i in range(count):
                    txn.put(i.to_bytes(8, "big"), payload)
            used = store.nbytes_used()
        else:
            raise ValueError(f"no overhead measure for {system}")
    finally:
        store.close()
    return used / (count * size) - 1


# -- the plan --------------------------------------------------------------------------------

OVERHEAD_PEERS = ("Redis", "LMDB")
PRODCONS_KINDS = ("FixedPool", "ThreadLocalPool")


def plan(system: systems.System, settings) -> list[tuple[str, Callable]]:
    """The steps ``system`` runs, in order, as (label, fn(system_name, session) -> rows)."""
    steps: list[tuple[str, Callable]] = [(f"ops/{kind}", partial(step_ops, kind=kind)) for kind in VALUES]
    if not system.store:
        return steps
    steps.append(("batch", step_batch))
    if system.multiprocess:
        steps += [(f"mp/{n}", partial(step_mp, nprocs=n)) for n in settings.mp_procs]
    if system.shared:
        steps.append(("rss", step_rss))
    if system.name in settings.create_kinds or system.name == "floor-py":
        for capacity in settings.create_sizes:
            for eager in (False, True):
                label = f"create/{size_label(capacity)}/{'eager' if eager else 'lazy'}"
                steps.append((label, partial(step_create, capacity=capacity, eager=eager)))
    if system.name in ("GrowingPool", "floor-py"):
        steps.append(("grow/1000", step_grow))
    if system.name in PRODCONS_KINDS:
        steps.append(("prodcons", step_prodcons))
    if system.group in ("library", "floor") or system.name in OVERHEAD_PEERS:
        steps.append(("overhead", step_overhead))
    return steps

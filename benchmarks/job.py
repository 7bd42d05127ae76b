"""The users' job (issue 19): 1 producer → 2 consumer processes, work items of ~50 msgpack bytes.

Every way a user could move the items races in one run: a `multiprocessing.Queue` of the
dicts, a pool plus a `multiprocessing.Queue` of handles (one per message, or lists of 64),
the pool's own channels (one item per call, or `put_many`/`get_many` of 64), faster-fifo,
iceoryx2 publish-subscribe with an event to wake the subscriber, and Redis lists over a
unix socket (LPUSH/BRPOP, and LPUSH×64/BLMPOP) against RedisPool's channel on the same
server (put/get, and put_many/get_many of 64). Each repetition starts three fresh spawned
processes per transport; rounds interleave the transports (one repetition of each, in an
order rotated every round) so a change of load lands on all of them alike.

A repetition has two phases:
- **throughput**: the producer sends N items as fast as the transport takes them; items/s is
  N over the time from the producer's start to the last consumer's end (`perf_counter_ns` is
  the system-wide monotonic clock on Linux, so the processes' readings compare); CPU µs/item
  is the three processes' CPU time (`process_time`, every thread) over N — Redis's server
  CPU is not in it.
- **paced** (single-item transports only): the producer sends one item every 100 µs (or as
  soon after as its sleep returns); each
  item carries its send time, and the consumer records the latency when it has the value.
Every item is checked: each id arrives exactly once, across the two consumers.

    python -m benchmarks.job [--quick] [--only NAME ...]

prints the table; `python -m benchmarks` runs it as part of the full run (results.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

import msgpack

CONSUMERS = 2
BATCH = 64
CAPACITY = 10_000  # the pool's slots: the producer waits for a free one beyond that (backpressure)
SLOT_SIZE = 128
PACE_NS = 100_000  # one item every 100 µs in the paced phase
START_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0


def item(i: int) -> dict:
    """A work item of ~50 msgpack bytes; `t` is its send time (perf_counter_ns)."""
    return {"id": i, "t": time.perf_counter_ns(), "op": "resize", "size": [640, 480], "user": "alice"}


def _channel_send(ch, batch: bool):
    """A producer's send on channel `ch`: one item, or a batch (a list; None alone is the stop mark)."""
    if not batch:
        return ch.put
    return lambda x: ch.put_many([None] if x is None else x)


def _channel_receive(ch, batch: bool):
    """A consumer's receive on channel `ch` (shared memory or Redis): one item, or a batch of up to
    BATCH in which only this consumer's stop mark stays (the others go back for their consumers)."""
    if not batch:
        return ch.get

    def receive():
        got = ch.get_many(BATCH)
        stops = got.count(None)
        if stops > 1:
            ch.put_many([None] * (stops - 1))
            return got[:len(got) - stops + 1]
        return got

    return receive


@dataclass(frozen=True)
class Sizes:
    items: int  # throughput phase
    paced: int  # paced phase
    rounds: int

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        return cls(10_000, 500, 1) if quick else cls(100_000, 5_000, 3)


# -- the transports ----------------------------------------------------------------------------
#
# Each is a class whose `setup(tag)` runs in the parent and returns what the children need
# (picklable: queues pass to spawned children as arguments); `producer(shared)` and
# `consumer(shared, index)` run in the children and return an object with `send(x)` / `receive()`
# and `close()`. A batch transport sends and receives lists of up to BATCH items. `None`
# is the stop mark: the producer sends one per consumer after the items.


class _Transport:
    name = ""
    batch = False
    needs = ()  # modules whose absence makes the transport "not measured"

    def setup(self, tag: str):
        return None

    def teardown(self, shared) -> None:
        pass


class MpQueueOfDicts(_Transport):
    name = "mp.Queue of dicts"

    def setup(self, tag):
        return multiprocessing.get_context("spawn").Queue()

    def producer(self, q):
        return _Ends(send=q.put, close=lambda: (q.close(), q.join_thread()))

    def consumer(self, q, index):
        return _Ends(receive=q.get)


class PoolAndMpQueue(_Transport):
    """A pool holds the values; a multiprocessing.Queue carries the handles (one, or a list of BATCH)."""

    def __init__(self, kind: str, batch: bool):
        self.kind, self.batch = kind, batch
        self.name = f"{kind} + mp.Queue of {'64-handle lists' if batch else 'handles'}"

    def setup(self, tag):
        import fastalloc_shm

        pool = getattr(fastalloc_shm, self.kind).create(tag, capacity=CAPACITY, slot_size=SLOT_SIZE)
        pool.close()
        return tag, multiprocessing.get_context("spawn").Queue()

    def teardown(self, shared):
        import fastalloc_shm

        fastalloc_shm.unlink(shared[0])

    def producer(self, shared):
        from fastalloc_shm import attach

        pool, q = attach(shared[0]), shared[1]
        if self.batch:
            def send(x):
                q.put(None if x is None else _allocate_many(pool, x))
        else:
            def send(x):
                q.put(None if x is None else pool.allocate(x, timeout=RUN_TIMEOUT))
        return _Ends(send=send, close=lambda: (q.close(), q.join_thread(), pool.close()))

    def consumer(self, shared, index):
        from fastalloc_shm import attach

        pool, q = attach(shared[0]), shared[1]
        if self.batch:
            def receive():
                hs = q.get()
                if hs is None:
                    return None
                values = [pool.get(h) for h in hs]
                pool.release_many(hs)
                return values
        else:
            def receive():
                h = q.get()
                if h is None:
                    return None
                value = pool.get(h)
                pool.release(h)
                return value
        return _Ends(receive=receive, close=pool.close)


def _allocate_many(pool, values: list, timeout: float = RUN_TIMEOUT) -> list[int]:
    """allocate_many is all or nothing and does not wait: wait for the slots as put_many does."""
    from fastalloc_shm import PoolExhausted

    deadline = time.monotonic() + timeout
    while True:
        try:
            return pool.allocate_many(values)
        except PoolExhausted:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.0001)


class PoolChannel(_Transport):
    """The pool's own channel: put/get, or put_many/get_many of BATCH."""

    def __init__(self, kind: str, batch: bool):
        self.kind, self.batch = kind, batch
        self.name = f"{kind} channel" + (", put_many/get_many 64" if batch else "")

    def setup(self, tag):
        import fastalloc_shm

        pool = getattr(fastalloc_shm, self.kind).create(tag, capacity=CAPACITY, slot_size=SLOT_SIZE)
        pool.channel("todo")
        pool.close()
        return tag

    def teardown(self, shared):
        import fastalloc_shm

        fastalloc_shm.unlink(shared)

    def producer(self, tag):
        from fastalloc_shm import attach

        pool = attach(tag)
        return _Ends(send=_channel_send(pool.channel("todo"), self.batch), close=pool.close)

    def consumer(self, tag, index):
        from fastalloc_shm import attach

        pool = attach(tag)
        return _Ends(receive=_channel_receive(pool.channel("todo"), self.batch), close=pool.close)


class FasterFifo(_Transport):
    name = "faster-fifo of dicts"
    needs = ("faster_fifo",)

    def setup(self, tag):
        import faster_fifo
        import faster_fifo_reduction  # noqa: F401 - lets the queue travel to spawned children

        return faster_fifo.Queue(max_size_bytes=10_000_000)

    def producer(self, q):
        return _Ends(send=lambda x: q.put(x, timeout=RUN_TIMEOUT))

    def consumer(self, q, index):
        import faster_fifo_reduction  # noqa: F401

        return _Ends(receive=lambda: q.get(timeout=RUN_TIMEOUT))


class RedisList(_Transport):
    """redis-py over the run's unix socket: LPUSH/BRPOP, or LPUSH of BATCH/BLMPOP COUNT BATCH."""

    needs = ("redis",)

    def __init__(self, url: str | None, batch: bool):
        self.url, self.batch = url, batch
        self.name = REDIS_BATCH if batch else "Redis LPUSH/BRPOP"

    def setup(self, tag):
        if not self.url:
            raise Unavailable("no redis server (redis-server not found, or --redis-url not given)")
        return self.url, f"{tag}:todo"

    def teardown(self, shared):
        import redis

        with redis.Redis.from_url(shared[0]) as r:
            r.delete(shared[1])

    def producer(self, shared):
        import redis

        r, key = redis.Redis.from_url(shared[0]), shared[1]
        packb = msgpack.packb
        if self.batch:
            def send(x):
                r.lpush(key, *([b""] * CONSUMERS if x is None else [packb(v) for v in x]))
        else:
            def send(x):
                r.lpush(key, b"" if x is None else packb(x))
        return _Ends(send=send, close=r.close)

    def consumer(self, shared, index):
        import redis

        r, key = redis.Redis.from_url(shared[0]), shared[1]
        unpackb = msgpack.unpackb
        if self.batch:
            def receive():
                _, got = r.blmpop(0, 1, key, direction="RIGHT", count=BATCH)
                values = [unpackb(b) for b in got if b]
                stops = len(got) - len(values)
                if stops > 1:  # one stop mark is this consumer's; the others go back for theirs
                    r.rpush(key, *([b""] * (stops - 1)))
                return values + [None] if stops else values
        else:
            def receive():
                data = r.brpop(key, 0)[1]
                return unpackb(data) if data else None
        return _Ends(receive=receive, close=r.close)


class RedisPoolChannel(_Transport):
    """RedisPool's channel over the run's unix socket: put/get, or put_many/get_many of BATCH."""

    needs = ("redis",)

    def __init__(self, url: str | None, batch: bool):
        self.url, self.batch = url, batch
        self.name = REDIS_CHANNEL_BATCH if batch else REDIS_CHANNEL

    def setup(self, tag):
        if not self.url:
            raise Unavailable("no redis server (redis-server not found, or --redis-url not given)")
        from fastalloc_shm import RedisPool

        pool = RedisPool.create(tag, url=self.url, capacity=CAPACITY, slot_size=SLOT_SIZE)
        pool.channel("todo")
        pool.close()  # the pool stays on the server until teardown
        return self.url, tag

    def teardown(self, shared):
        from fastalloc_shm.redis_pool import unlink_pool

        unlink_pool(shared[1], shared[0])

    def _open(self, shared):
        from fastalloc_shm import RedisPool

        pool = RedisPool.attach(shared[1], url=shared[0])
        return pool, pool.channel("todo")

    def producer(self, shared):
        pool, ch = self._open(shared)
        return _Ends(send=_channel_send(ch, self.batch), close=pool.close)

    def consumer(self, shared, index):
        pool, ch = self._open(shared)
        return _Ends(receive=_channel_receive(ch, self.batch), close=pool.close)


class Iceoryx2Events(_Transport):
    """iceoryx2 publish-subscribe, one service per consumer (the producer deals items round robin),
    with an event service per consumer that the producer notifies after each send; the
    subscriber's buffer is as deep as the pool's capacity and the publisher blocks when it is
    full (no safe overflow, RetryUntilDelivered), so no item is dropped."""

    name = "iceoryx2 pub/sub + event"
    needs = ("iceoryx2",)

    def setup(self, tag):
        return tag

    def producer(self, tag):
        import ctypes

        iox2 = _iceoryx2()
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        ports = []
        for c in range(CONSUMERS):
            service, event = _iceoryx2_services(iox2, node, f"{tag}-{c}")
            publisher = (service.publisher_builder().initial_max_slice_len(SLOT_SIZE)
                         .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
            ports.append((publisher, event.notifier_builder().create()))
        turn = [0]
        packb, memmove = msgpack.packb, ctypes.memmove

        def send(x):
            publisher, notifier = ports[turn[0]]  # the stop marks too: one to each consumer
            turn[0] = (turn[0] + 1) % CONSUMERS
            data = packb(x)
            sample = publisher.loan_slice_uninit(len(data))
            memmove(sample.payload_ptr, data, len(data))
            sample.assume_init().send()
            notifier.notify()

        def close():
            for publisher, notifier in ports:
                notifier.delete()
                publisher.delete()

        return _Ends(send=send, close=close, keep=(node,))

    def consumer(self, tag, index):
        import ctypes

        iox2 = _iceoryx2()
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        service, event = _iceoryx2_services(iox2, node, f"{tag}-{index}")
        subscriber = service.subscriber_builder().buffer_size(CAPACITY).create()
        listener = event.listener_builder().create()
        unpackb, string_at = msgpack.unpackb, ctypes.string_at

        def receive():
            while True:
                got = subscriber.receive()
                if got is not None:
                    try:
                        return unpackb(string_at(got.payload_ptr, got.header.number_of_elements))
                    finally:
                        got.delete()
                listener.blocking_wait()

        def close():
            listener.delete()
            subscriber.delete()

        return _Ends(receive=receive, close=close, keep=(node,))


def _iceoryx2():
    import iceoryx2 as iox2

    iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
    return iox2


def _iceoryx2_services(iox2, node, name: str):
    import ctypes

    service = (node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8])
               .subscriber_max_buffer_size(CAPACITY).enable_safe_overflow(False).open_or_create())
    event = node.service_builder(iox2.ServiceName.new(name + "-wake")).event().open_or_create()
    return service, event


class Unavailable(Exception):
    """A transport that cannot run here; reported as "not measured" with this reason."""


@dataclass
class _Ends:
    send: object = None
    receive: object = None
    close: object = None
    keep: tuple = ()  # objects that must outlive the ports (iceoryx2's node)


def transports(redis_url: str | None) -> list[_Transport]:
    return [
        MpQueueOfDicts(),
        PoolAndMpQueue("FixedPool", batch=False),
        PoolAndMpQueue("ThreadLocalPool", batch=False),
        PoolAndMpQueue("FixedPool", batch=True),
        PoolChannel("FixedPool", batch=False),
        PoolChannel("ThreadLocalPool", batch=False),
        PoolChannel("FixedPool", batch=True),
        FasterFifo(),
        Iceoryx2Events(),
        RedisList(redis_url, batch=False),
        RedisList(redis_url, batch=True),
        RedisPoolChannel(redis_url, batch=False),
        RedisPoolChannel(redis_url, batch=True),
    ]


# -- one repetition: three processes --------------------------------------------------------


def _producer_main(transport, shared, sizes: Sizes, ready, go, out) -> None:
    try:
        ends = transport.producer(shared)
        ready.put(("ready",))
        go.wait()
        send = ends.send
        cpu0, t0 = time.process_time(), time.perf_counter_ns()
        if transport.batch:
            for start in range(0, sizes.items, BATCH):
                send([item(i) for i in range(start, min(start + BATCH, sizes.items))])
        else:
            for i in range(sizes.items):
                send(item(i))
        for _ in range(CONSUMERS):
            send(None)
        cpu_throughput = time.process_time() - cpu0
        go.wait()  # the consumers finished the throughput phase
        if not transport.batch:
            pace_start = time.perf_counter_ns()
            for i in range(sizes.paced):
                # Sleep, not spin: a spinning main thread would hold the GIL from a queue's feeder thread.
                delay = pace_start + i * PACE_NS - time.perf_counter_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                send(item(sizes.items + i))
            for _ in range(CONSUMERS):
                send(None)
        if ends.close:
            ends.close()
        out.put(("producer", t0, cpu_throughput))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which reports the transport
        out.put(("error", f"producer: {type(exc).__name__}: {exc}", traceback.format_exc(limit=8)))


def _consumer_main(transport, shared, index: int, sizes: Sizes, ready, go, out) -> None:
    try:
        ends = transport.consumer(shared, index)
        ready.put(("ready",))
        go.wait()
        receive = ends.receive
        cpu0 = time.process_time()
        ids = _drain(receive, transport.batch, None)
        t_end, cpu_throughput = time.perf_counter_ns(), time.process_time() - cpu0
        go.wait()
        latencies: list[int] = []
        paced_ids = _drain(receive, transport.batch, latencies) if not transport.batch else []
        if ends.close:
            ends.close()
        out.put(("consumer", t_end, cpu_throughput, ids, paced_ids, latencies))
    except BaseException as exc:  # noqa: BLE001
        out.put(("error", f"consumer {index}: {type(exc).__name__}: {exc}", traceback.format_exc(limit=8)))


def _drain(receive, batch: bool, latencies: list[int] | None) -> list[int]:
    """Receive until this consumer's stop mark; the ids received (and each latency, if asked)."""
    ids = []
    clock = time.perf_counter_ns
    while True:
        got = receive()
        if got is None:
            return ids
        for value in (got if batch else (got,)):
            if value is None:  # a stop mark at the end of a batch
                return ids
            if latencies is not None:
                latencies.append(clock() - value["t"])
            ids.append(value["id"])


def repetition(transport: _Transport, sizes: Sizes, tag: str) -> dict:
    """One repetition: the figures of both phases, after checking every item arrived exactly once."""
    ctx = multiprocessing.get_context("spawn")
    shared = transport.setup(tag)
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Barrier(CONSUMERS + 2)
    procs = [ctx.Process(target=_producer_main, args=(transport, shared, sizes, ready, go, out), daemon=True)]
    procs += [ctx.Process(target=_consumer_main, args=(transport, shared, i, sizes, ready, go, out), daemon=True)
              for i in range(CONSUMERS)]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            msg = ready.get(timeout=START_TIMEOUT) if _alive(procs) else ("error", "a process died at start", "")
            if msg[0] != "ready":
                raise RuntimeError(msg[1])
        go.wait(timeout=START_TIMEOUT)  # throughput phase
        go.wait(timeout=RUN_TIMEOUT)  # ... paced phase
        results = [out.get(timeout=RUN_TIMEOUT) for _ in procs]
    except BaseException:
        _drain_errors(out)
        raise
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        transport.teardown(shared)
    errors = [r for r in results if r[0] == "error"]
    if errors:
        raise RuntimeError(errors[0][1] + "\n" + errors[0][2])
    producer = next(r for r in results if r[0] == "producer")
    consumers = [r for r in results if r[0] == "consumer"]
    _check_exactly_once([c[3] for c in consumers], range(sizes.items), "throughput")
    figures = {
        "items_per_s": sizes.items / ((max(c[1] for c in consumers) - producer[1]) / 1e9),
        "cpu_us_per_item": (producer[2] + sum(c[2] for c in consumers)) / sizes.items * 1e6,
        "per_consumer": [len(c[3]) for c in consumers],
    }
    if not transport.batch:
        _check_exactly_once([c[4] for c in consumers], range(sizes.items, sizes.items + sizes.paced), "paced")
        latencies = sorted(x for c in consumers for x in c[5])
        figures["p50_us"] = latencies[len(latencies) // 2] / 1e3
        figures["p99_us"] = latencies[int(len(latencies) * 0.99)] / 1e3
    return figures


def _alive(procs) -> bool:
    return all(p.is_alive() or p.exitcode == 0 for p in procs)


def _drain_errors(out) -> None:
    """A failed repetition: show what its processes said (a hang gives no other clue)."""
    try:
        while True:
            msg = out.get(timeout=0.5)
            if msg[0] == "error":
                print(msg[1], msg[2], sep="\n", file=sys.stderr)
    except Exception:  # noqa: BLE001 - empty
        pass


def _check_exactly_once(received: list[list[int]], expected: range, phase: str) -> None:
    got = sorted(i for ids in received for i in ids)
    if got != list(expected):
        missing = len(set(expected) - set(got))
        raise RuntimeError(f"{phase}: {len(got)} items received for {len(expected)} sent "
                           f"({missing} missing, {len(got) - len(set(got))} twice)")


# -- the run ----------------------------------------------------------------------------------


def steps(quick: bool, redis_url: str | None) -> int:
    """Progress steps of a run: one per repetition."""
    return Sizes.make(quick).rounds * len(transports(redis_url))


def run(quick: bool, redis_url: str | None, run_tag: str, only: list[str] | None = None, progress=None) -> dict:
    """Every transport, interleaved by round; {"rows": [...], "unavailable": {...}, "errors": [...]}."""
    import importlib.util

    sizes = Sizes.make(quick)
    members, unavailable, errors = [], {}, []
    for t in transports(redis_url):
        if only and t.name not in only:
            continue
        missing = [m for m in t.needs if importlib.util.find_spec(m) is None]
        if missing:
            unavailable[t.name] = f"{', '.join(missing)} not installed (the bench extra)"
        members.append(t)
    samples: dict[str, list[dict]] = {t.name: [] for t in members}
    for rnd in range(sizes.rounds):
        order = members[rnd % len(members):] + members[:rnd % len(members)] if members else []
        for n, t in enumerate(order):
            if progress:
                progress(f"round {rnd + 1}/{sizes.rounds}: {t.name}")
            if t.name in unavailable or any(e["system"] == t.name for e in errors):
                continue
            try:
                samples[t.name].append(repetition(t, sizes, f"{run_tag}-job{rnd}-{n}"))
            except Unavailable as exc:
                unavailable[t.name] = str(exc)
            except Exception as exc:  # noqa: BLE001 - reported; the run goes on
                errors.append({"system": t.name, "step": "job", "error": f"{type(exc).__name__}: {exc}",
                               "traceback": traceback.format_exc(limit=6)})
    rows = []
    for name, got in samples.items():
        if not got:
            continue
        for key, unit in (("items_per_s", "items/s"), ("cpu_us_per_item", "µs/item"), ("p50_us", "µs"),
                          ("p99_us", "µs")):
            if key in got[0]:
                rows.append({"system": name, "op": f"job/{key}", "unit": unit,
                             "value": statistics.median(g[key] for g in got),
                             "samples": [round(g[key], 3) for g in got], "items": sizes.items,
                             "paced_items": sizes.paced})
    return {"rows": rows, "unavailable": unavailable, "errors": errors, "sizes": sizes.__dict__}


REFERENCE = "mp.Queue of dicts"
CHANNEL = "FixedPool channel"
CHANNEL_BATCH = "FixedPool channel, put_many/get_many 64"
HANDLE_LISTS = "FixedPool + mp.Queue of 64-handle lists"
REDIS_CHANNEL = "RedisPool channel"
REDIS_CHANNEL_BATCH = "RedisPool channel, put_many/get_many 64"
REDIS_BATCH = "Redis LPUSH×64/BLMPOP"


def table(rows: list[dict], unavailable: dict[str, str]) -> list[str]:
    """The job's table in markdown: items/s, × mp.Queue, CPU µs/item, paced p50/p99."""
    by = {(r["system"], r["op"]): r["value"] for r in rows}
    ref = by.get((REFERENCE, "job/items_per_s"))
    lines = ["| how the items travel | items/s | × mp.Queue | CPU µs/item | paced p50 / p99 µs |",
             "|---|---:|---:|---:|---:|"]
    for t in transports("unused"):
        if t.name in unavailable:
            lines.append(f"| {t.name} | not measured: {unavailable[t.name]} | | | |")
            continue
        rate = by.get((t.name, "job/items_per_s"))
        if rate is None:
            continue
        p50, p99 = by.get((t.name, "job/p50_us")), by.get((t.name, "job/p99_us"))
        paced = f"{p50:.0f} / {p99:.0f}" if p50 is not None else "(batched)"
        lines.append(f"| {t.name} | {rate:,.0f} | {rate / ref:.2f} | {by[(t.name, 'job/cpu_us_per_item')]:.1f} "
                     f"| {paced} |" if ref else f"| {t.name} | {rate:,.0f} | — | | {paced} |")
    return lines


def targets(rows: list[dict]) -> list[tuple[str, str, float | None]]:
    """(status, text, value) per target of issue 19 (reported, never asserted)."""
    by = {(r["system"], r["op"]): r for r in rows}

    def rate(name):
        r = by.get((name, "job/items_per_s"))
        return r["value"] if r else None

    def paired(name, ref):
        a, b = by.get((name, "job/items_per_s")), by.get((ref, "job/items_per_s"))
        if not a or not b:
            return None
        return statistics.median(x / y for x, y in zip(a["samples"], b["samples"], strict=False))

    out = []
    for ref, bound in ((REFERENCE, 4.0), ("faster-fifo of dicts", 2.5), ("iceoryx2 pub/sub + event", 2.5),
                       ("FixedPool + mp.Queue of handles", None)):
        ratio = paired(CHANNEL, ref)
        text = f"channel, one item per put/get: {{}}× {ref}'s items/s" + (f" (target ≥ {bound}×)" if bound else "")
        out.append(_verdict(ratio, bound, text))
    ratio = paired(CHANNEL_BATCH, HANDLE_LISTS)
    out.append(_verdict(ratio, 1.5, f"channel put_many/get_many 64: {{}}× {HANDLE_LISTS}'s items/s (target ≥ 1.5×)"))
    ratio = paired(REDIS_CHANNEL_BATCH, REDIS_BATCH)
    out.append(_verdict(ratio, 1.0, f"RedisPool channel batched: {{}}× {REDIS_BATCH}'s items/s (target ≥ 1.0×)"))
    ratio = paired(REDIS_CHANNEL, "Redis LPUSH/BRPOP")
    out.append(_verdict(ratio, None, "RedisPool channel, one item per put/get: {}× Redis LPUSH/BRPOP's items/s"))
    for key, bound in (("p50_us", 15.0), ("p99_us", 60.0)):
        r = by.get((CHANNEL, f"job/{key}"))
        value = r["value"] if r else None
        status = "not measured" if value is None else ("met" if value <= bound else "missed")
        out.append((status, f"channel paced latency {key[:3]}: "
                            f"{'—' if value is None else f'{value:.1f}'} µs (target ≤ {bound:g} µs)", value))
    return out


def _verdict(ratio, bound, text):
    if ratio is None:
        return ("not measured", text.format("—"), None)
    return ("info" if bound is None else ("met" if ratio >= bound else "missed"), text.format(f"{ratio:.2f}"), ratio)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.job", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10,000 items, one round")
    p.add_argument("--only", action="append", default=[], help="a transport's name as in the table (repeatable)")
    p.add_argument("--redis-url", default=None, help="a Redis to use (default: start a private redis-server)")
    args = p.parse_args(argv)
    from contextlib import nullcontext

    from .redis_server import RedisServer

    with (RedisServer() if args.redis_url is None else nullcontext()) as server:
        url = args.redis_url or (server.url if server else None)
        result = run(args.quick, url, f"job-{os.getpid()}",
                     args.only or None,
                     progress=lambda label: print(label, file=sys.stderr, flush=True))
    print("\n".join(table(result["rows"], result["unavailable"])))
    for status, text, _ in targets(result["rows"]):
        print(f"{status:<6} {text}")
    for e in result["errors"]:
        print(f"error: {e['system']}: {e['error']}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

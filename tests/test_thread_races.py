"""close(), unlink() and fork() racing every operation from several threads; set() and buffer() racing them too.

Each case runs rounds: a pool object of its own (an attach), three worker threads doing a random
mix of allocate (some values packed by Python code: a tuple, a dict subclass whose items() sleeps
with the GIL released), get, set, release, allocate_many, release_many, recover, statistics, len,
buffer on handles of their own and on handles the round shares between every thread (set by all,
read by all, viewed by all), while the main thread sets and views the shared handles and then
closes (or unlinks, or forks) the pool under them. The contract checked:

- Only typed errors come out of any call: the FastallocError family, or BufferError (a view of
  the slot, or of the pool at close(), is exported in this process).
- close() waits up to lock_timeout for operations in other threads to leave, or raises
  FastallocError (then the pool stays usable and close() is tried again); after it returned,
  every operation raises FastallocError naming the pool closed.
- Nothing is lost, handed out twice or read back wrong: a worker's own handles read back what it
  last stored until the close, and afterwards a fresh attach audits the pool with the values
  every worker still holds (tests/invariants.assert_sound); a shared handle always reads back a
  whole value some thread stored.
- A child forked while workers are inside operations inherits no lock: it allocates, reads back
  and releases in the pool within a bound.

And the races are shown to happen: each case counts the rounds in which close() (unlink(),
fork()) was called while pool._core.operations > 0, the operations refused as closed afterwards,
and the close() calls that had to wait or retry; too few fails the case (a stress that never
overlaps proves nothing). A switch interval of 10 us makes the threads interleave inside calls.
`make test-asan` runs this file under AddressSanitizer and UBSan.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

from fastalloc_shm import FastallocError, FixedPool, GrowingPool, GrowthStrategy, ThreadLocalPool, attach

from .invariants import assert_sound, check_invariants

WORKERS = 3
MIN_ROUNDS, MAX_ROUNDS = 3, 12
WANTED_OVERLAPS = 2  # rounds whose close/unlink/fork met an operation in flight
OPS_PER_ROUND = 4000  # a bound per worker per round; a round normally ends at the close
HELD_MAX = 10  # per worker: 3 x 10 + 3 shared of 48 slots, so a forked child finds room
LOCK_TIMEOUT = 1.0
TYPED = (FastallocError, BufferError)
KINDS = {
    "fixed": lambda name: FixedPool.create(name, capacity=48, slot_size=256, lock_timeout=LOCK_TIMEOUT),
    "threadlocal": lambda name: ThreadLocalPool.create(name, capacity=48, slot_size=256, batch_size=4,
                                                       lock_timeout=LOCK_TIMEOUT),
    "growing": lambda name: GrowingPool.create(name, capacity=16, slot_size=256, max_capacity=48,
                                               growth_strategy=GrowthStrategy.linear(16), lock_timeout=LOCK_TIMEOUT),
}


class SlowDict(dict):
    """A dict subclass: the strict packer refuses it, so the fallback packer runs Python code,
    which sleeps with the GIL released, mid-operation."""

    def items(self):
        time.sleep(0.0005)
        return super().items()


def value(worker: int, n: int, rng: random.Random):
    body = {"worker": worker, "n": n, "check": [worker * 1_000_003 + n] * 4}
    roll = rng.random()
    if roll < 0.15:
        return SlowDict(body)
    if roll < 0.3:
        return {**body, "tuple": (worker, n, "x")}  # packed by the fallback packer (Python code)
    return body


def expect(v) -> dict:
    """What get() returns for `v`: a plain dict, tuples read back as lists (msgpack arrays)."""
    return {k: list(x) if isinstance(x, tuple) else x for k, x in v.items()}


def whole(v) -> bool:
    """A self-checking value, read back whole (never a mix of two writes)."""
    return isinstance(v, dict) and v.get("check") == [v.get("worker", -1) * 1_000_003 + v.get("n", -1)] * 4


@dataclass
class Tally:
    errors: list[str] = field(default_factory=list)  # contract violations, each described
    refused_closed: int = 0  # operations refused as closed after close() returned
    refused_closing: int = 0  # refused while close() waited for the operations in flight to leave
    typed: dict[str, int] = field(default_factory=dict)  # typed errors seen before the close, by type
    ops: int = 0
    lock = threading.Lock()

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def worker(pool, shared: list[int], held: dict, wid: int, seed: int, closed: threading.Event, tally: Tally) -> None:
    rng = random.Random(seed)
    n = 0
    after_close = 0
    for _ in range(OPS_PER_ROUND):
        if after_close >= 3:
            return
        was_closed = closed.is_set()
        n += 1
        op = rng.randrange(13)
        try:
            if not held or (op <= 2 and len(held) < HELD_MAX):
                v = value(wid, n, rng)
                h = pool.allocate(v, timeout=0.002 if rng.random() < 0.3 else None)
                held[h] = expect(v)
            elif op <= 3:
                h = rng.choice(list(held))
                got = pool.get(h)
                if got != held[h]:
                    tally.error(f"worker {wid}: handle {h:#x} read {got!r}, not {held[h]!r}")
            elif op == 4:
                h = rng.choice(list(held))
                v = value(wid, n, rng)
                pool.set(h, v)
                held[h] = expect(v)
            elif op == 5:
                h = rng.choice(list(held))
                pool.release(h)
                del held[h]
            elif op == 6:
                values = [value(wid, n * 10 + k, rng) for k in range(rng.randint(1, 3))]
                for h, v in zip(pool.allocate_many(values), values, strict=True):
                    held[h] = expect(v)
            elif op == 7 and len(held) >= 2:
                victims = rng.sample(list(held), 2)
                pool.release_many(victims)
                for h in victims:
                    del held[h]
            elif op == 8:
                got = pool.get(rng.choice(shared))
                if not whole(got):
                    tally.error(f"worker {wid}: a shared handle read {got!r}, not a whole value")
            elif op == 9:
                pool.set(rng.choice(shared), value(wid, n, rng))
            elif op == 10:
                with pool.buffer(rng.choice(shared) if rng.random() < 0.5 else rng.choice(list(held))) as view:
                    bytes(view[:32])
                    time.sleep(0)
            elif op == 11:
                h = rng.choice(list(held))
                with pool.buffer(h):
                    try:
                        pool.release(h)
                        tally.error(f"worker {wid}: release() of a slot with a view exported returned")
                        del held[h]
                    except BufferError:
                        pass
            else:
                [lambda: pool.recover(lock_wait=0.05), pool.statistics, lambda: len(pool)][rng.randrange(3)]()
            with tally.lock:
                tally.ops += 1
            if was_closed:
                tally.error(f"worker {wid}: op {op} succeeded after close() had returned")
        except TYPED as exc:
            refused = isinstance(exc, FastallocError) and "closed" in str(exc)
            if was_closed:
                after_close += 1
                if refused:
                    with tally.lock:
                        tally.refused_closed += 1
                else:
                    tally.error(f"worker {wid}: after close(), op {op} raised {exc!r}, not 'closed'")
            elif refused:
                with tally.lock:
                    tally.refused_closing += 1  # close() is waiting for operations to leave: none may start
                time.sleep(0.0002)
            else:
                with tally.lock:
                    tally.typed[type(exc).__name__] = tally.typed.get(type(exc).__name__, 0) + 1
        except Exception as exc:  # noqa: BLE001 - the finding is any untyped exception
            tally.error(f"worker {wid}: op {op} raised an untyped {exc!r}")
            return


def close_waiting(pool, how: str) -> dict:
    """close() (or unlink()) until it returns: FastallocError (operations outlasted lock_timeout)
    and BufferError (a view exported at that instant) are the contract's refusals; count them."""
    counts = {"close_refused": 0, "buffer_refused": 0}
    for _ in range(200):
        try:
            pool.unlink() if how == "unlink" else pool.close()
            return counts
        except FastallocError as exc:
            assert "closed" not in str(exc), exc
            counts["close_refused"] += 1
        except BufferError:
            counts["buffer_refused"] += 1
        time.sleep(0.001)
    raise AssertionError(f"close() never got through: {counts}")


def fork_child_uses(pool, report: int) -> int:
    """In a child forked with workers inside operations: the pool must be usable at once (no
    inherited lock). Its exit status: 0 sound, 1 wrong value, 2 untyped error, 3 typed error
    (what it was goes to the `report` pipe)."""
    h = None
    try:
        for i in range(5):
            h = pool.allocate({"child": i}, timeout=5)
            if pool.get(h) != {"child": i}:
                return 1
            pool.release(h)
        return 0
    except BufferError:
        # A view that a thread of the parent had exported at the fork is exported in the child
        # too (as mmap's are), so the child cannot release that slot index when it reuses it: the
        # slot stays the (dead) child's, holding its value, which the parent then counts as held.
        os.write(report, f"{h} {i}".encode())
        return 4
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        os.write(report, repr(exc).encode()[:500])
        return 3 if isinstance(exc, TYPED) else 2


def run_round(name: str, how: str, rng: random.Random, tally: Tally, figures: dict) -> dict:
    """One round on a pool object of its own; returns every handle the workers still hold -> value."""
    pool = attach(name)
    shared = [pool.allocate(value(9, k, rng)) for k in range(3)]
    helds = [{} for _ in range(WORKERS)]
    closed = threading.Event()
    threads = [threading.Thread(target=worker, args=(pool, shared, helds[w], w, rng.random(), closed, tally))
               for w in range(WORKERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + rng.uniform(0.03, 0.12)
    while time.monotonic() < deadline:  # the main thread's set() and buffer() race the workers too
        try:
            pool.set(rng.choice(shared), value(8, 0, rng))
            with pool.buffer(rng.choice(shared)) as view:
                bytes(view[:8])
        except TYPED as exc:
            tally.error(f"main: set/buffer before the close raised {exc!r}")
    in_flight = pool._core.operations
    child_held: dict[int, dict] = {}
    if how == "fork":
        figures["in_flight"] += in_flight > 0
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os._exit(fork_child_uses(pool, w))
        os.close(w)
        status = wait_child(pid)
        said = os.read(r, 1000).decode(errors="replace")
        os.close(r)
        figures["forks"] += 1
        if status == 4:
            figures["child_met_inherited_view"] += 1
            h, i = map(int, said.split())
            child_held[h] = {"child": i}
        elif status != 0:
            tally.error(f"a child forked with {in_flight} operations in flight exited {status}: {said}")
        deadline = time.monotonic() + 0.03
        while time.monotonic() < deadline:
            time.sleep(0.001)
    started = time.monotonic()
    counts = close_waiting(pool, "close" if how == "fork" else how)
    waited = time.monotonic() - started
    closed.set()
    if how != "fork":
        figures["in_flight"] += in_flight > 0
    figures["close_refused"] += counts["close_refused"]
    figures["buffer_refused"] += counts["buffer_refused"]
    figures["close_waited"] += waited > 0.0005 and in_flight > 0
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a worker is stuck after close()"
    try:
        pool.get(shared[0])
        tally.error("get() after close() returned")
    except FastallocError as exc:
        assert "closed" in str(exc), exc
    held = {h: v for d in [*helds, child_held] for h, v in d.items()}
    held.update({h: None for h in shared})  # shared: whole values, checked by the caller
    return held


def wait_child(pid: int, limit: float = 20.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -9  # stuck: an inherited lock


def audit_round(keeper, held: dict) -> None:
    shared = {h for h, v in held.items() if v is None}
    for h in shared:
        got = keeper.get(h)
        assert whole(got), f"shared handle {h:#x} reads {got!r}"
        held[h] = got
    check_invariants(keeper)
    assert_sound(keeper, held)
    keeper.release_many(list(held))


@pytest.fixture
def fast_switching():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["close", "unlink", "fork"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_close_unlink_and_fork_race_every_operation_and_lose_nothing(make_name, fast_switching, kind, how):
    rng = random.Random(f"{kind}-{how}")
    tally = Tally()
    figures = {"rounds": 0, "in_flight": 0, "close_refused": 0, "buffer_refused": 0, "close_waited": 0, "forks": 0,
               "child_met_inherited_view": 0}
    rounds = MIN_ROUNDS
    while figures["rounds"] < rounds:
        name = make_name()
        with KINDS[kind](name) as creator:
            keeper = attach(name)
            if kind == "growing":  # grown to its maximum first: after an unlink no extent could be mapped
                creator.release_many(creator.allocate_many([0] * 48))
            keeper._core.slot_states()  # every extent mapped by the keeper
            try:
                held = run_round(name, how, rng, tally, figures)
                figures["rounds"] += 1
                assert not tally.errors, f"{len(tally.errors)} violations, first: {tally.errors[:5]}; {figures}"
                audit_round(keeper, held)
            finally:
                keeper.close()
        if figures["in_flight"] < WANTED_OVERLAPS and rounds < MAX_ROUNDS:
            rounds += 1
    figures.update(ops=tally.ops, refused_closed=tally.refused_closed, refused_closing=tally.refused_closing,
                   **{f"typed {k}": v for k, v in tally.typed.items()})
    print(f"{kind}/{how}: {figures}")
    assert not tally.errors, f"{len(tally.errors)} violations, first: {tally.errors[:5]}; {figures}"
    assert figures["in_flight"] >= WANTED_OVERLAPS, f"the race did not happen often enough: {figures}"
    if how != "fork":
        assert tally.refused_closed > 0, f"no operation was refused as closed: {figures}"

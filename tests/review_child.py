"""Child processes for tests/test_review_findings.py (one scenario each).

    python -m tests.review_child SCENARIO NAME [ARG...]

Each scenario attaches (or creates) the pool NAME, drives one interleaving of
an outside review's finding, and prints one JSON object as its last line of
stdout. A scenario that crashes the interpreter (SIGSEGV) shows as the child's
exit status, so the test fails without pytest crashing with it.
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import random
import resource
import signal
import sys
import threading
import time

from fastalloc_shm import FastallocError, attach
from fastalloc_shm import _layout as L

WAIT = 30


def describe(exc: BaseException | None) -> str | None:
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


class HookDict(dict):
    """A dict subclass: the packer falls back to Python code and calls items(), our hook."""

    hook = None

    def items(self):
        if HookDict.hook is not None:
            HookDict.hook()
        return super().items()


# -- finding 1: close() while another thread is inside an operation ----------------------

def churn_close(name: str) -> dict:
    """The reviewer's repro: one thread churns allocate((1, 2, "x"))/release, the main thread closes."""
    pool = attach(name)
    outcome: dict = {}
    started = threading.Event()

    def churn():
        n = 0
        try:
            while True:
                h = pool.allocate((1, 2, "x"))
                pool.release(h)
                n += 1
                if n == 50:
                    started.set()
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which asserts on it
            outcome["thread_error"] = describe(exc)
            outcome["fastalloc_error"] = isinstance(exc, FastallocError)
        finally:
            started.set()

    t = threading.Thread(target=churn)
    t.start()
    started.wait(WAIT)
    time.sleep(random.uniform(0, 0.01))
    pool.close()
    t.join(WAIT)
    outcome["joined"] = not t.is_alive()
    return outcome


def close_during_hook(name: str, release_after: str, how: str) -> dict:
    """Thread A is inside allocate(), in a value's packing hook, until the main thread's
    close() (or unlink()) has waited `release_after` seconds."""
    pool = attach(name)
    entered, go = threading.Event(), threading.Event()
    result: dict = {}

    def hook():
        entered.set()
        go.wait(WAIT)

    def operation():
        try:
            result["handle"] = pool.allocate(HookDict(v="during close"))
        except BaseException as exc:  # noqa: BLE001 - reported
            result["a_error"] = describe(exc)

    HookDict.hook = hook
    a = threading.Thread(target=operation)
    a.start()
    entered.wait(WAIT)
    HookDict.hook = None
    timer = threading.Timer(float(release_after), go.set)
    timer.start()
    started = time.monotonic()
    try:
        pool.unlink() if how == "unlink" else pool.close()
        result["close_error"] = None
    except BaseException as exc:  # noqa: BLE001 - reported
        result["close_error"] = describe(exc)
        result["close_error_fastalloc"] = isinstance(exc, FastallocError)
    result["close_seconds"] = time.monotonic() - started
    a.join(WAIT)
    timer.join()
    if result["close_error"] is None:
        try:
            pool.get(result.get("handle", 1 << 32))
            result["after_close"] = "get worked"
        except FastallocError as exc:
            result["after_close"] = describe(exc)
    else:
        # The pool stayed open: it must still work.
        result["still_open_get"] = pool.get(result["handle"])
        pool.release(result["handle"])
        pool.close()
    return result


def wait_close(name: str) -> dict:
    """Thread A waits in allocate(v, timeout=1) on a full pool; the main thread closes meanwhile."""
    pool = attach(name)
    result: dict = {}

    def operation():
        try:
            result["handle"] = pool.allocate("waiting", timeout=1.0)
        except BaseException as exc:  # noqa: BLE001 - reported
            result["a_error"] = describe(exc)
        try:
            pool.get(1 << 32)
        except BaseException as exc:  # noqa: BLE001 - reported
            result["a_after"] = describe(exc)

    a = threading.Thread(target=operation)
    a.start()
    time.sleep(0.2)
    started = time.monotonic()
    try:
        pool.close()
        result["close_error"] = None
    except BaseException as exc:  # noqa: BLE001 - reported
        result["close_error"] = describe(exc)
    result["close_seconds"] = time.monotonic() - started
    a.join(WAIT)
    if result["close_error"] is not None:
        pool.close()
    return result


def signal_close(name: str) -> dict:
    """A SIGALRM handler calls close() while this thread waits in allocate(v, timeout=2) on a full pool."""
    pool = attach(name)
    result: dict = {}

    def handler(signum, frame):
        try:
            pool.close()
            result["handler"] = "closed"
        except BaseException as exc:  # noqa: BLE001 - reported
            result["handler"] = describe(exc)
            result["handler_fastalloc"] = isinstance(exc, FastallocError)
            result["handler_at"] = time.monotonic() - started

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    started = time.monotonic()
    try:
        pool.allocate("wait", timeout=2.0)
        result["allocate"] = "returned"
    except BaseException as exc:  # noqa: BLE001 - reported
        result["allocate"] = describe(exc)
    result["statistics_after"] = pool.statistics().capacity
    pool.close()
    return result


def hook_close(name: str) -> dict:
    """A value's packing hook calls close() on the pool it is being allocated in (same thread)."""
    pool = attach(name)
    result: dict = {}

    def hook():
        HookDict.hook = None
        try:
            pool.close()
            result["hook"] = "closed"
        except BaseException as exc:  # noqa: BLE001 - reported
            result["hook"] = describe(exc)
            result["hook_fastalloc"] = isinstance(exc, FastallocError)

    HookDict.hook = hook
    try:
        h = pool.allocate(HookDict(v=1))
        result["allocate"] = "returned"
        result["value"] = pool.get(h)
        pool.release(h)
    except BaseException as exc:  # noqa: BLE001 - reported
        result["allocate"] = describe(exc)
    result["in_use_after"] = len(pool)
    pool.close()
    return result


# -- finding 2: allocate_many and a list mutated while it packs -----------------------------

def allocate_many_mutation(name: str) -> dict:
    pool = attach(name)
    junk = []

    class Clearing(dict):
        def items(self):
            values.clear()
            junk.extend(bytes([0x4A]) * 200 for _ in range(200))  # b'JJJJ...' into the freed memory
            return super().items()

    values = [bytes(200 * [0x78]), bytes(200 * [0x79]), Clearing(k="z")]
    expected = [b"x" * 200, b"y" * 200, {"k": "z"}]
    try:
        handles = pool.allocate_many(values)
        got = [pool.get(h) for h in handles]
        result = {"same": got == expected, "slot0": repr(got[0][:8]) if isinstance(got[0], bytes) else repr(got[0])}
        pool.release_many(handles)
    except FastallocError as exc:
        result = {"error": describe(exc)}
    pool.close()
    return result


# -- finding 3: a forged header ------------------------------------------------------------

def guard_below_next_mapping(size: int) -> None:
    """Make the next mapping of `size` bytes land just below an inaccessible page.

    The kernel places a mapping in the highest free gap that fits; map `size`-byte
    PROT_NONE chunks until eight in a row land one below the other (every gap above
    is filled), so the next mapping of that size goes just below the last chunk."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    previous, in_a_row = None, 0
    for _ in range(100_000):
        addr = libc.mmap(None, size, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        in_a_row = in_a_row + 1 if previous is not None and addr == previous - size else 0
        previous = addr
        if in_a_row == 8:
            return
    raise AssertionError("could not fill the address space's gaps")


def attach_only(name: str, guard: str = "") -> dict:
    """Attach and use the pool. With `guard`, first map a PROT_NONE region: the kernel places the next
    mapping (the segment's) just below it, so a read past the segment's end faults instead of reading
    whatever happened to be mapped there."""
    if guard:
        guard_below_next_mapping(int(guard))
    try:
        pool = attach(name)
    except FastallocError as exc:
        return {"error": describe(exc), "type": type(exc).__name__}
    try:
        h = pool.allocate(b"x")
        return {"error": None, "value": repr(pool.get(h))}
    except FastallocError as exc:
        return {"error": f"after attach: {describe(exc)}", "type": type(exc).__name__}
    finally:
        pool.close()


def use_extent_one(name: str, handle: str) -> dict:
    """Attach, then read a handle in growth extent 1 (whose table entry the test forged)."""
    try:
        pool = attach(name)
    except FastallocError as exc:
        return {"error": describe(exc), "type": type(exc).__name__}
    try:
        return {"error": None, "value": repr(pool.get(int(handle)))}
    except FastallocError as exc:
        return {"error": describe(exc), "type": type(exc).__name__}
    finally:
        pool.close()


# -- finding 4: another process flips the slot-size word --------------------------------------

def flip(name: str, true_value: str, seconds: str) -> dict:
    """Flip HDR_SLOT_SIZE between its true value and 1 MiB until `seconds` pass; count the flips."""
    fd = os.open(f"/dev/shm/fastalloc.{name}", os.O_RDWR)
    mm = mmap.mmap(fd, L.HEADER_SIZE)
    os.close(fd)
    q = memoryview(mm).cast("Q")
    true = int(true_value)
    flips = 0
    print("flipping", flush=True)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        for _ in range(1000):
            q[L.HDR_SLOT_SIZE] = 1 << 20
            q[L.HDR_SLOT_SIZE] = true
        flips += 1000
    q[L.HDR_SLOT_SIZE] = true
    q.release()
    mm.close()
    return {"flips": flips}


# -- finding 5: pools dropped without close() ---------------------------------------------------

def drop_pools(name: str, count: str) -> dict:
    fds = []
    for i in range(int(count)):
        p = attach(name)
        del p
        gc.collect()
        if i in (9, int(count) - 1):
            fds.append(len(os.listdir("/proc/self/fd")))
    try:
        last = attach(name)
        h = last.allocate("after drops")
        value = last.get(h)
        last.release(h)
        last.close()
        attach_error = None
    except FastallocError as exc:
        value, attach_error = None, describe(exc)
    return {"fds_after_10": fds[0], "fds_at_end": fds[1], "attach_error": attach_error, "value": value}


# -- finding 6: the next locker cannot map every extent ------------------------------------------

def without_fds(name: str) -> dict:
    """Attach, then leave no free file descriptor; on a line "go <handle>" from stdin, release that
    handle (the pool grew and the lock's holder died meanwhile, so this release repairs the lock
    and needs the extent it has not mapped)."""
    pool = attach(name)
    used = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used[-1] + 1, hard))
    fillers = []
    while True:
        try:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    print("ready", flush=True)
    handle = int(sys.stdin.readline().split()[1])
    result: dict = {}
    try:
        pool.release(handle)  # takes the lock at once: no mapping before it
        result["release"] = "returned"
    except BaseException as exc:  # noqa: BLE001 - reported
        result["release"] = describe(exc)
        result["fastalloc"] = isinstance(exc, FastallocError)
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pool.close()
    return result


# -- finding 9: fork() while another thread grows the pool ----------------------------------------

GROWTH_GATE: dict = {}


def gated_growth(capacity: int) -> int:
    """A custom growth amount that, in the fork_grow child, waits until the main thread has forked."""
    gate = GROWTH_GATE.get("gate")
    if gate is not None:
        entered, go = gate
        entered.set()
        go.wait(WAIT)
    return 4


def fork_grow(name: str) -> dict:
    """Create a GrowingPool; a thread grows it, held inside the growth callback while the main
    thread forks; the forked child lives on (sleeps) while the test grows the pool again."""
    from fastalloc_shm import GrowingPool, GrowthStrategy
    from tests import review_child as me

    pool = GrowingPool.create(name, capacity=2, max_capacity=64, lock_timeout=1.0,
                              growth_strategy=GrowthStrategy.custom(me.gated_growth))
    held = [pool.allocate(i) for i in range(2)]
    entered, go = threading.Event(), threading.Event()
    me.GROWTH_GATE["gate"] = (entered, go)
    grown: dict = {}

    def grow():
        try:
            grown["handle"] = pool.allocate("grows")
        except BaseException as exc:  # noqa: BLE001 - reported
            grown["error"] = describe(exc)

    t = threading.Thread(target=grow)
    t.start()
    assert entered.wait(WAIT), "the growth never reached the callback"
    pid = os.fork()
    if pid == 0:
        time.sleep(WAIT)
        os._exit(0)
    go.set()
    t.join(WAIT)
    me.GROWTH_GATE.clear()
    print(json.dumps({"forked": pid, "grown": grown, "capacity": pool.capacity}), flush=True)
    sys.stdin.readline()  # the test grew the pool meanwhile (or failed to)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pool.release_many(held + ([grown["handle"]] if "handle" in grown else []))
    pool.close()
    return {"done": True}


# -- findings 6, 11, 12, 13b, 14b: a process that allocates (and is stopped or killed in it) --

def allocate_n(name: str, count: str, hold: str = "") -> dict:
    """Allocate `count` values (one at a time), print their handles, then sleep if `hold`."""
    pool = attach(name)
    handles = [pool.allocate({"by": os.getpid(), "n": n}) for n in range(int(count))]
    if hold:
        print(json.dumps({"handles": handles}), flush=True)
        time.sleep(3600)
    pool.close()
    return {"handles": handles}


def set_handle(name: str, handle: str) -> dict:
    pool = attach(name)
    pool.set(int(handle), {"by": os.getpid(), "pad": "s" * 100})
    pool.close()
    return {"set": True}


# -- finding 13d: MemoryError while the core makes a handle -----------------------------------------

def nomemory(name: str) -> dict:
    import _testcapi

    pool = attach(name)
    ok, failed, other = 0, 0, []
    for start in range(1, 60):
        gc.collect()
        _testcapi.set_nomemory(start, 0)
        try:
            h = pool.allocate(123456789)
        except MemoryError:
            h = None
        except BaseException as exc:  # noqa: BLE001 - reported
            h = None
            other.append(type(exc).__name__)
        finally:
            _testcapi.remove_mem_hooks()
        if h is None:
            failed += 1
        else:
            ok += 1
            pool.release(h)
    result = {"ok": ok, "failed": failed, "other": other, "in_use": len(pool)}
    pool.close()
    return result


# -- finding 14b: SIGSTOP of a holder anywhere in its lock/unlock -------------------------------------

def lock_churn(name: str) -> dict:
    pool = attach(name)
    print("churning", flush=True)
    while True:
        pool.release(pool.allocate(1))


SCENARIOS = {f.__name__: f for f in (churn_close, close_during_hook, wait_close, signal_close, hook_close,
                                       allocate_many_mutation, attach_only, use_extent_one, flip, drop_pools,
                                       without_fds, fork_grow, allocate_n, set_handle, nomemory, lock_churn)}


def main() -> None:
    scenario, *args = sys.argv[1:]
    emit(SCENARIOS[scenario](*args))


if __name__ == "__main__":
    main()

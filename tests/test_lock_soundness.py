"""The pool lock is sound: a live holder is never robbed, whatever PID namespace it is in;
exceptions from signal handlers never wedge a pool; a handle is released once however
many processes race to release it; every thread's wait is bounded; and a dead holder's
lock is repaired by the next locker at once, not after a timer.

Real processes throughout. A holder is a tests.lock_child churner that stops
itself (FASTALLOC_FAULT=<point>:stop:<n>) with the lock held, part-way through
its churn; `unshare --pid --fork --mount-proc` puts it, or its waiters, in a PID
namespace of their own, as containers sharing /dev/shm are.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from fastalloc_shm import (
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    LockTimeout,
    ThreadLocalPool,
    ThreadSafePool,
    unlink,
)

from . import requirements
from .invariants import assert_sound
from .lock_child import OTHER_ERROR, RELEASED, race_releases
from .workers import self_checking

ROOT = Path(__file__).resolve().parent.parent
SHORT_TIMEOUT = 0.3
KINDS = ("fixed", "growing", "threadlocal", "threadsafe")
needs_root = requirements.needs_root("for unshare --pid")


def make_pool(kind: str, name: str, capacity: int = 64, lock_timeout: float = SHORT_TIMEOUT):
    if kind == "growing":
        return GrowingPool.create(name, capacity=capacity // 4, max_capacity=capacity,
                                  growth_strategy=GrowthStrategy.linear(capacity // 4), lock_timeout=lock_timeout)
    if kind == "threadlocal":
        return ThreadLocalPool.create(name, capacity=capacity, batch_size=4, lock_timeout=lock_timeout)
    cls = ThreadSafePool if kind == "threadsafe" else FixedPool
    return cls.create(name, capacity=capacity, lock_timeout=lock_timeout)


def child_command(args: list[str], in_namespace: bool) -> list[str]:
    command = [sys.executable, "-m", "tests.lock_child", *args]
    if not in_namespace:
        return command
    # sh stays the namespace's init (pid 1), since the kernel ignores a SIGSTOP that init sends itself.
    # --kill-child: if unshare is killed (a timeout), its namespace goes with it.
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", shlex.join(command) + "; exit $?"]


class Holder:
    """A churner stopped at `point` with the pool lock held, in this PID namespace or a new one."""

    def __init__(self, tmp_path: Path, name: str, point: str, in_namespace: bool, nth: int = 50) -> None:
        marker = tmp_path / f"holder-{point}"
        env = dict(os.environ, FASTALLOC_FAULT=f"{point}:stop:{nth}", FASTALLOC_FAULT_FILE=str(marker))
        self.proc = subprocess.Popen(child_command(["churn", name, "400", "3"], in_namespace), cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        try:
            self._wait_stopped(marker, point, in_namespace)
        except BaseException:
            self.kill()
            raise

    def _wait_stopped(self, marker: Path, point: str, in_namespace: bool) -> None:
        deadline = time.monotonic() + 30
        while not (marker.exists() and point in marker.read_text()):
            assert self.proc.poll() is None, f"the holder exited before {point}: {self.proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"the holder never reached {point}"
            time.sleep(0.01)
        python = self._python_process()
        while python.status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline, "the holder never stopped"
            time.sleep(0.001)
        self.pid = python.pid
        own_pid = int(marker.read_text().split()[0])
        assert (own_pid != self.pid) == in_namespace, "the holder is not in the PID namespace meant for it"

    def _python_process(self) -> psutil.Process:
        top = psutil.Process(self.proc.pid)
        for process in [top, *top.children(recursive=True)]:
            if process.cmdline()[1:3] == ["-m", "tests.lock_child"]:
                return process
        raise AssertionError("no tests.lock_child process under the holder")

    def resume(self) -> dict[int, dict]:
        """SIGCONT it; it finishes its churn; return the values it kept allocated."""
        os.killpg(self.proc.pid, signal.SIGCONT)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, f"the holder failed after SIGCONT: {err[-3000:]}"
        return {int(h): v for h, v in json.loads(out.strip().splitlines()[-1]).items()}

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=30)


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["alloc.popped", "lock.acquired"])
@pytest.mark.parametrize("holder_in_namespace", [True, False], ids=["holder-in-pid-namespace", "waiters-in-pid-namespace"])
def test_a_stopped_holder_in_another_pid_namespace_is_never_robbed(tmp_path, pool_name, holder_in_namespace, point):
    with make_pool("fixed", pool_name) as pool:
        holder = Holder(tmp_path, pool_name, point, in_namespace=holder_in_namespace)
        try:
            waiting = subprocess.run(child_command(["waiters", pool_name, "4", "3"], not holder_in_namespace),
                                     cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert waiting.returncode == 0, waiting.stderr[-3000:]
            outcomes = [o for per_process in json.loads(waiting.stdout.strip().splitlines()[-1]) for o in per_process]
            print(f"\nwaiters' attempts (outcome, seconds): {outcomes}")
            assert [got for got, _ in outcomes] == ["LockTimeout"] * 12, "a waiter took the lock of a live holder"
            assert all(SHORT_TIMEOUT * 0.8 <= waited < SHORT_TIMEOUT + 1.0 for _, waited in outcomes), outcomes
            assert psutil.Process(holder.pid).status() == psutil.STATUS_STOPPED
            held = holder.resume()
        finally:
            holder.kill()
        assert_sound(pool, held)


@pytest.mark.timeout(120)
def test_exceptions_raised_by_a_signal_handler_mid_operation_never_wedge_a_pool(make_name):
    # Roomy pools: an exception landing just after allocate() returned, before the churner
    # recorded the handle, leaves a slot it lost track of (allocated, reclaimed at the end).
    pools = [make_pool(kind, make_name(), capacity=4096) for kind in KINDS]
    try:
        try:
            churner = subprocess.run([sys.executable, "-m", "tests.alarm_child", "2.0", *(p.name for p in pools)],
                                     cwd=ROOT, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the churner hung (a pool wedged by an exception from its signal handler): {exc.stderr!r:.2000}")
        assert churner.returncode == 0, churner.stderr[-3000:]
        report = json.loads(churner.stdout.strip().splitlines()[-1])
        # Another process goes on at once: nothing of the churner's is left holding the lock.
        took = {}
        for pool in pools:
            started = time.monotonic()
            pool.release(pool.allocate("right after"))
            took[pool.name] = time.monotonic() - started
        print(f"\nchurner: {report['steps']} steps, {report['ticks']} exceptions caught; first allocate+release "
              f"afterwards (ms): {[round(t * 1000, 2) for t in took.values()]}")
        assert report["ticks"] >= 100, "the handler hardly ever raised inside the churn"
        for pool in pools:
            figures = report["pools"][pool.name]
            assert figures["errors"] == {}, f"{type(pool).__name__}: {figures['errors']}"
            assert figures["next_call"]["ok"], f"{type(pool).__name__}: after the churn {figures['next_call']}"
            assert "close_error" not in figures, figures["close_error"]
            assert figures["wrong"] == 0, f"{type(pool).__name__}: values read back wrong in the churner"
            assert took[pool.name] < 0.1, f"{type(pool).__name__}: {took[pool.name]:.3f} s for the next allocate"
            for handle, value in figures["held"].items():
                assert pool.get(int(handle)) == value, "a slot the churner held lost its value"
            print(f"{type(pool).__name__}: the churner kept {len(figures['held'])} slots and lost track of "
                  f"{len(pool) - len(figures['held'])} between a call and its bookkeeping")
            # What the churner held (or lost track of between a call and its bookkeeping) is
            # allocated by a dead process now: reclaimed, every slot must be free again.
            pool.recover(orphan_policy="reclaim")
            assert_sound(pool, {})
    finally:
        for pool in pools:
            pool.close()
            unlink(pool.name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_releasing_one_handle_at_the_same_instant_free_it_once(pool_name, kind):
    rounds = 1000
    ctx = mp.get_context("spawn")
    with make_pool(kind, pool_name, lock_timeout=5.0) as pool:
        barrier = ctx.Barrier(2)
        handles, starts = ctx.Array("Q", rounds, lock=False), ctx.Array("q", rounds, lock=False)
        outcomes, wrong = ctx.Array("b", 2 * rounds, lock=False), ctx.Array("q", 2, lock=False)
        racers = [ctx.Process(target=race_releases, args=(pool_name, me, rounds, barrier, handles, starts, outcomes, wrong))
                  for me in (0, 1)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(90)
        assert [racer.exitcode for racer in racers] == [0, 0]
        pairs = [(outcomes[2 * r], outcomes[2 * r + 1]) for r in range(rounds)]
        both = sum(pair == (RELEASED, RELEASED) for pair in pairs)
        neither = sum(RELEASED not in pair for pair in pairs)
        errors = sum(OTHER_ERROR in pair for pair in pairs)
        print(f"\n{kind}: {rounds} rounds; both released {both}, neither {neither}, other errors {errors}, "
              f"values wrong {sum(wrong)}")
        assert (both, neither, errors, sum(wrong)) == (0, 0, 0, 0)
        assert_sound(pool, {})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["threadsafe", "fixed"])
def test_every_thread_waiting_on_a_stopped_holder_gets_lock_timeout_in_time(tmp_path, pool_name, kind):
    threads = 4
    with make_pool(kind, pool_name) as pool:
        holder = Holder(tmp_path, pool_name, "alloc.popped", in_namespace=False)
        try:
            epoch = time.monotonic() + 0.05
            results: list[tuple[str, float]] = [("did not finish", 0.0)] * threads

            def wait_for_the_lock(i: int) -> None:
                # Measured from when the thread meant to start: a wait that cannot even begin
                # while another thread waits is part of its wait.
                start = epoch + 0.05 * i
                time.sleep(max(0.0, start - time.monotonic()))
                try:
                    got = f"entered, got {pool.allocate(i):#x}"
                except LockTimeout:
                    got = "LockTimeout"
                except Exception as exc:  # noqa: BLE001 - reported as the outcome
                    got = repr(exc)
                results[i] = (got, time.monotonic() - start)

            workers = [threading.Thread(target=wait_for_the_lock, args=(i,)) for i in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(10)
            print(f"\nthreads' waits (outcome, seconds from their start): {results}")
            assert [got for got, _ in results] == ["LockTimeout"] * threads
            assert all(waited < SHORT_TIMEOUT + 0.25 for _, waited in results), results
            held = holder.resume()
        finally:
            holder.kill()
        assert_sound(pool, held)


def test_the_next_locker_repairs_a_dead_holder_s_lock_at_once(pool_name):
    waits, held = [], {}
    with FixedPool.create(pool_name, capacity=16, lock_timeout=5.0) as pool:
        for n in range(5):
            env = dict(os.environ, FASTALLOC_FAULT="alloc.popped:kill")
            child = subprocess.run([sys.executable, "-m", "tests.matrix_child", pool_name, "allocate"], cwd=ROOT,
                                   env=env, capture_output=True, text=True, timeout=30)
            assert child.returncode == -signal.SIGKILL, f"the child did not die holding the lock: {child.stderr}"
            started = time.monotonic()
            value = self_checking(0, n)
            held[pool.allocate(value)] = value
            waits.append(time.monotonic() - started)
        print(f"\nfirst allocate after a holder's death (ms): {[round(w * 1000, 3) for w in waits]}")
        assert max(waits) < 0.5
        # A takeover that waits for a timer to guess that the holder is dead can never be this fast.
        assert min(waits) < 0.05
        pool.recover()
        assert_sound(pool, held)

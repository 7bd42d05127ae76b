"""Regression tests for the outside review of the compiled core (issue 17): one or more per finding.

Each test reproduces its finding and asserts the fixed behaviour (DESIGN.md,
"Threads and misuse"). Scenarios that crashed the interpreter run in a child
(tests/review_child.py), whose exit status and JSON report the test reads.
"""

from __future__ import annotations

import gc
import inspect
import json
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

import fastalloc_shm
from fastalloc_shm import (
    FastallocError,
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    LockTimeout,
    StaleHandle,
    ThreadLocalPool,
    ValueTooLarge,
    _core,
    attach,
)
from fastalloc_shm import _layout as L
from fastalloc_shm._header import encode_config

from .requirements import unless

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60


# -- driving children ------------------------------------------------------------------------------

def run_child(scenario: str, *args: object, timeout: float = WAIT, env: dict | None = None) -> dict:
    """Run one scenario of tests/review_child.py to its end; it must exit 0 (never a signal) with a JSON report."""
    proc = subprocess.run([sys.executable, "-m", "tests.review_child", scenario, *map(str, args)], cwd=ROOT,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{scenario} child exited with {proc.returncode}"
                                  f"{' (' + signal.Signals(-proc.returncode).name + ')' if proc.returncode < 0 else ''}"
                                  f"\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Faulted:
    """A review_child scenario started with FASTALLOC_FAULT=<point>:<action>[:<n>], waited for at its point."""

    def __init__(self, tmp_path: Path, scenario: str, *args: object, fault: str, stdin: bool = False):
        point = fault.split(":")[0]
        self.marker = tmp_path / f"fault-{scenario}-{fault.replace(':', '-')}-{time.monotonic_ns()}"
        env = dict(os.environ, FASTALLOC_FAULT=fault, FASTALLOC_FAULT_FILE=str(self.marker))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.review_child", scenario, *map(str, args)],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + WAIT
        while not (self.marker.exists() and point in self.marker.read_text()):
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited ({self.proc.returncode}) before reaching {fault}: "
                                     f"{self.proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, f"child never reached {fault}"
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def words_of(name: str, size: int | None = None):
    """A writable u64 view of the first `size` bytes of a pool's main segment (and its mmap to close)."""
    fd = os.open(f"/dev/shm/fastalloc.{name}", os.O_RDWR)
    try:
        mm = mmap.mmap(fd, size or os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return mm, memoryview(mm).cast("Q")


def u32_of(mm: mmap.mmap):
    return memoryview(mm).cast("I")


# -- 1. close()/unlink() while another thread is inside an operation ----------------------------------

def test_close_while_another_thread_churns_tuples_never_segfaults_and_the_thread_then_sees_closed(pool_name):
    """The reviewer's repro (15 of 20 runs died with SIGSEGV): every run exits cleanly, the churning thread
    gets FastallocError("closed") once close() has returned."""
    with FixedPool.create(pool_name, capacity=64, slot_size=64):
        for run in range(20):
            result = run_child("churn_close", pool_name)
            assert result["joined"], result
            assert result["fastalloc_error"] and "closed" in result["thread_error"], (run, result)


def test_close_waits_for_an_operation_in_another_thread_to_leave_its_packing_hook(pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=5.0) as pool:
        result = run_child("close_during_hook", pool_name, 0.5, "close")
        assert result["close_error"] is None, result
        assert result["close_seconds"] >= 0.4, result  # it waited for thread A to leave
        assert "a_error" not in result and result["handle"], result  # A's allocate completed
        assert "closed" in result["after_close"], result
        assert len(pool) == 1  # the child's allocation stands (held by a process now gone)


def test_unlink_waits_for_an_operation_in_another_thread_to_leave_its_packing_hook(pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=5.0):
        result = run_child("close_during_hook", pool_name, 0.5, "unlink")
        assert result["close_error"] is None, result
        assert result["close_seconds"] >= 0.4, result
        assert "closed" in result["after_close"], result


def test_close_raises_and_the_pool_stays_usable_when_an_operation_outlasts_lock_timeout(pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=0.5):
        result = run_child("close_during_hook", pool_name, 2.0, "close")
        assert result["close_error"] is not None and result["close_error_fastalloc"], result
        assert 0.4 <= result["close_seconds"] < 2.0, result
        assert result["still_open_get"] == {"v": "during close"}, result


def test_close_waits_for_a_thread_waiting_in_allocate_with_a_timeout(pool_name):
    with FixedPool.create(pool_name, capacity=1, lock_timeout=5.0) as pool:
        pool.allocate("fills it")
        result = run_child("wait_close", pool_name)
        assert result["close_error"] is None, result  # today: "another thread ... is waiting"
        assert result["close_seconds"] >= 0.5, result
        assert result["a_error"].startswith("PoolExhausted"), result
        assert "closed" in result["a_after"], result


def test_close_from_a_signal_handler_during_a_wait_raises_at_once_and_the_pool_stays_open(pool_name):
    with FixedPool.create(pool_name, capacity=1, lock_timeout=5.0) as pool:
        pool.allocate("fills it")
        result = run_child("signal_close", pool_name)
        assert result["handler_fastalloc"], result
        assert result["handler_at"] < 1.0, result
        assert result["statistics_after"] == 1, result


def test_close_from_a_values_packing_hook_in_the_same_thread_raises_at_once(pool_name):
    with FixedPool.create(pool_name, capacity=4):
        result = run_child("hook_close", pool_name)
        assert result.get("hook_fastalloc"), result
        assert result["in_use_after"] == 0 or result["value"] == {"v": 1}, result


# -- 2. allocate_many and a list edited by the packer's Python code ------------------------------------

def test_allocate_many_stores_the_values_passed_at_call_time_when_packing_edits_the_list(pool_name):
    with FixedPool.create(pool_name, capacity=8, slot_size=256):
        result = run_child("allocate_many_mutation", pool_name)
        assert result.get("same"), result  # the reviewer saw b'JJJJ...' in slot 0


# -- 3. a forged header whose geometry overflows ----------------------------------------------------

def test_attach_refuses_a_forged_header_whose_extent_size_overflows(pool_name):
    huge = 2**32 - 8
    with FixedPool.create(pool_name, capacity=1, slot_size=8, alignment=8) as pool:
        cfg = pool.config.with_overrides(capacity=huge, slot_size=huge, alignment=8)
        record = encode_config(cfg)
        pool.close()
        fd = os.open(f"/dev/shm/fastalloc.{pool_name}", os.O_RDWR)
        os.ftruncate(fd, L.HEADER_SIZE)  # 24 KiB: the header alone
        os.close(fd)
        mm, q = words_of(pool_name)
        q[L.HDR_SLOT_SIZE] = q[L.HDR_STRIDE] = huge
        q[L.HDR_ALIGNMENT] = 8
        q[L.HDR_CAPACITY] = huge
        q[L.extent_table_words(0)[1]] = huge
        q[L.HDR_CONFIG_LEN] = len(record)
        mm[L.CONFIG_OFFSET:L.CONFIG_OFFSET + len(record)] = record
        q.release()
        mm.close()
        result = run_child("attach_only", pool_name, L.HEADER_SIZE)
        assert result["type"] in ("IncompatiblePool", "FastallocError"), result
        assert result["error"] and not result["error"].startswith("after attach"), result


def test_a_growth_extent_entry_whose_size_overflows_is_a_typed_error(pool_name):
    """Extent 1's entry says 2**32-8 slots of stride 2**32-8: its size wraps to 0 in 64 bits."""
    huge = 2**32 - 8
    with GrowingPool.create(pool_name, capacity=1, slot_size=8, alignment=8, max_capacity=4,
                            growth_strategy=GrowthStrategy.linear(1)) as pool:
        pool.allocate(0)
        in_extent_one = pool.allocate(1)
        cfg = pool.config.with_overrides(slot_size=huge)
        record = encode_config(cfg)
        pool.close()
        size = L.main_segment_size(1, huge, 8)
        fd = os.open(f"/dev/shm/fastalloc.{pool_name}", os.O_RDWR)
        os.ftruncate(fd, size)  # sparse: tmpfs gives no pages until touched
        os.close(fd)
        mm, q = words_of(pool_name, L.HEADER_SIZE)
        q[L.HDR_SLOT_SIZE] = q[L.HDR_STRIDE] = huge
        q[L.HDR_CONFIG_LEN] = len(record)
        mm[L.CONFIG_OFFSET:L.CONFIG_OFFSET + len(record)] = record
        q[L.extent_table_words(1)[1]] = huge
        q[L.HDR_CAPACITY] = 1 + huge
        q.release()
        mm.close()
        ext_fd = os.open(f"/dev/shm/fastalloc.{pool_name}.x1", os.O_RDWR)
        ext = mmap.mmap(ext_fd, os.fstat(ext_fd).st_size)
        os.close(ext_fd)
        w = u32_of(ext)
        w[L.EXT_CAPACITY] = huge
        w.release()
        ext.close()
        result = run_child("use_extent_one", pool_name, in_extent_one)
        assert result["error"] and result["type"] in ("IncompatiblePool", "FastallocError"), result


# -- 4. the slot-size word read twice at attach --------------------------------------------------------

def test_attach_while_another_process_flips_the_slot_size_word_never_takes_the_forged_size(pool_name):
    with FixedPool.create(pool_name, capacity=64, slot_size=64, lock_timeout=2.0):
        flipper = subprocess.Popen([sys.executable, "-m", "tests.review_child", "flip", pool_name, "64", "6"],
                                   cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert flipper.stdout.readline().strip() == "flipping"
            refused = accepted = wrong = 0
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                try:
                    other = attach(pool_name)
                except FastallocError:
                    refused += 1
                    continue
                try:
                    accepted += 1
                    h = other.allocate(b"ok")
                    try:
                        other.set(h, b"x" * 3000)
                        wrong += 1  # a 3,000-byte value went into a 64-byte slot
                    except ValueTooLarge:
                        pass
                    wrong += len(other.get(h)) > 64
                    other.release(h)
                finally:
                    other.close()
            flips = json.loads(flipper.communicate(timeout=WAIT)[0].strip().splitlines()[-1])["flips"]
        finally:
            if flipper.poll() is None:
                flipper.kill()
                flipper.communicate()
        assert flipper.returncode == 0
        assert flips > 100_000 and refused > 0 and accepted > 0, (flips, refused, accepted)  # the race ran
        assert wrong == 0, f"{wrong} of {accepted} attaches took the forged slot size ({refused} refused, {flips} flips)"


# -- 5. pools dropped without close() ----------------------------------------------------------------------

def test_pools_dropped_without_close_are_collected_with_their_client_entry_and_fds(pool_name):
    with FixedPool.create(pool_name, capacity=4):
        result = run_child("drop_pools", pool_name, 300)
        assert result["attach_error"] is None, result  # the client table has 256 entries
        assert result["value"] == "after drops"
        assert result["fds_at_end"] <= result["fds_after_10"], result


# -- 6. a lock repair that cannot see every extent -------------------------------------------------------------

def test_a_lock_repair_that_cannot_map_every_extent_raises_and_leaves_the_totals_alone(tmp_path, pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=12, growth_strategy=GrowthStrategy.linear(4),
                            lock_timeout=2.0) as pool:
        values = {pool.allocate({"v": i}): {"v": i} for i in range(4)}  # extent 0, full
        blind = subprocess.Popen([sys.executable, "-m", "tests.review_child", "without_fds", pool_name], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert blind.stdout.readline().strip() == "ready", blind.stderr.read()  # it mapped extent 0 only
            values.update({pool.allocate({"v": i}): {"v": i} for i in range(4, 6)})  # extent 1, which it has not
            assert pool.capacity == 8 and pool._q[L.HDR_EXTENTS] == 2
            Faulted(tmp_path, "allocate_n", pool_name, 1, fault="lock.acquired:kill").kill()
            out, err = blind.communicate(f"go {next(iter(values))}\n", timeout=WAIT)
        finally:
            if blind.poll() is None:
                blind.kill()
                blind.communicate()
        assert blind.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result.get("fastalloc"), result  # a typed error: it could not map extent 1
        assert pool._q[L.HDR_CAPACITY] == 8, "the header's capacity was rewritten from a partial view"
        h = pool.allocate("after the repair")  # this process sees every extent: it repairs
        assert pool.capacity == 8
        for handle, value in values.items():
            assert pool.get(handle) == value
        pool.release(h)


# -- 7. a torn value while set() repairs it -------------------------------------------------------------------

def test_a_torn_value_is_not_readable_while_set_repairs_it(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=4, lock_timeout=2.0) as pool:
        h = pool.allocate({"v": "before"})
        Faulted(tmp_path, "set_handle", pool_name, h, fault="set.writing:kill").kill()
        pool.recover()
        with pytest.raises(FastallocError, match="torn"):
            pool.get(h)
        repairing = Faulted(tmp_path, "set_handle", pool_name, h, fault="set.claimed:pause")
        try:
            with pytest.raises(FastallocError):
                pool.get(h)  # between the claim and the odd sequence: never bytes that were not stored
        finally:
            repairing.kill()


# -- 8. an unlinked pool's attacher and the pool re-created under its name ----------------------------------------

def test_an_attacher_of_an_unlinked_pool_never_reads_or_writes_the_recreated_pools_extents(pool_name):
    grow = dict(capacity=2, max_capacity=8, growth_strategy=GrowthStrategy.linear(2))
    first = GrowingPool.create(pool_name, **grow)
    old = attach(pool_name)
    try:
        first.allocate("OLD-0"), first.allocate("OLD-1")
        old_handle = first.allocate("OLD-2")  # in extent 1, which `old` has not mapped yet
        first.unlink()
        with GrowingPool.create(pool_name, **grow) as second:
            second.allocate("NEW-0"), second.allocate("NEW-1")
            new_handle = second.allocate("NEW-2")
            assert new_handle == old_handle  # same index and generation: only the pool tells them apart
            with pytest.raises(FastallocError):
                got = old.get(old_handle)
                pytest.fail(f"the old attacher read {got!r} from the re-created pool")
            with pytest.raises(FastallocError):
                old.set(old_handle, "OVERWRITTEN")
            assert second.get(new_handle) == "NEW-2"
    finally:
        old.close()


# -- 9. fork() while another thread grows --------------------------------------------------------------------------

def test_a_fork_during_growth_does_not_keep_the_growth_lock_in_the_child(pool_name):
    parent = subprocess.Popen([sys.executable, "-m", "tests.review_child", "fork_grow", pool_name], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pool = None
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        report = json.loads(line)
        assert "handle" in report["grown"], report  # the parent's growth finished
        pool = attach(pool_name)
        while pool.try_allocate(1) is not None and pool.capacity == report["capacity"]:
            pass
        # The forked child still lives (it sleeps): our growth must not wait for it.
        os.kill(report["forked"], 0)
        grown_by_us = pool.capacity > report["capacity"]
        out, err = parent.communicate("done\n", timeout=WAIT)
        assert parent.returncode == 0, err
        assert grown_by_us
    except LockTimeout as exc:
        pytest.fail(f"growth waited for the forked child: {exc}")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
        if pool is not None:
            pool.close()
        fastalloc_shm.unlink(pool_name)


# -- 10. buffer() views and release()/close() ---------------------------------------------------------------------

def test_release_and_close_raise_buffererror_while_a_buffer_view_is_exported(pool_name):
    with FixedPool.create(pool_name, capacity=2, slot_size=32) as pool:
        h = pool.allocate(b"mine")
        view = pool.buffer(h)
        try:
            with pytest.raises(BufferError):
                pool.release(h)
            with pytest.raises(BufferError):
                pool.close()
            assert pool.get(h) == b"mine"  # still open, still ours
        finally:
            view.release()
        pool.release(h)
        pool.close()


def test_a_stale_buffer_view_never_reads_or_writes_the_next_owners_value(pool_name):
    with FixedPool.create(pool_name, capacity=1, slot_size=32) as pool:
        h = pool.allocate(b"first")
        view = pool.buffer(h)
        try:
            try:
                pool.release(h)
            except BufferError:
                return  # refused while exported: no stale view can exist
            nxt = pool.allocate(b"second owner")
            before = bytes(view)
            view[:4] = b"\xc4\x02ZZ"
            assert pool.get(nxt) == b"second owner", "a stale view wrote into the next owner's value"
            assert b"second owner" not in before, "a stale view read the next owner's value"
        finally:
            view.release()


# -- 11. ThreadLocalPool.release() when the drain after it cannot take the lock -------------------------------------

def test_threadlocal_release_returns_when_its_drain_cannot_take_the_lock_and_a_retry_is_stale(tmp_path, pool_name):
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=4, lock_timeout=0.5) as pool:
        handles = [pool.allocate(i) for i in range(24)]
        while pool.cached() < 2 * 4:
            pool.release(handles.pop())
        holder = Faulted(tmp_path, "allocate_n", pool_name, 1, fault="lock.acquired:pause")
        try:
            victim = handles.pop()
            assert pool.release(victim) is None  # the drain's LockTimeout is not the caller's
            with pytest.raises(StaleHandle):
                pool.get(victim)
            with pytest.raises(StaleHandle):
                pool.release(victim)
        finally:
            holder.kill()
        pool.release_many(handles)
        pool.recover()
        assert len(pool) == 0


# -- 12. recover() when the lock's holder died -----------------------------------------------------------------

def test_recover_reports_what_its_lock_takeover_repaired_with_the_policy_passed(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, orphan_policy="keep", lock_timeout=2.0) as pool:
        mine = pool.allocate("mine")
        # The child allocates one slot, then dies holding the lock with a second slot popped (half-written).
        Faulted(tmp_path, "allocate_n", pool_name, 2, fault="alloc.popped:kill:2").kill()
        report = pool.recover(orphan_policy="reclaim")
        assert report.lock_taken_over, report
        assert report.half_written_freed == 1 and report.orphans_reclaimed == 1, report
        assert report.orphans_kept == 0, report
        assert len(pool) == 1 and pool.get(mine) == "mine"


# -- 13. smaller ----------------------------------------------------------------------------------------------------

def test_no_python_code_runs_under_the_mutex_on_the_damaged_free_list_path(pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=1.0) as pool:
        ext = u32_of(pool._segment.mm)
        ext[L.HEADER_SIZE // 4 + L.EXT_FRESH] = 8
        ext[L.HEADER_SIZE // 4 + L.EXT_HEAD] = 9  # the head points past the extent: damaged
        ext.release()
        reentries: list = []
        armed = [False]

        def profile(frame, event, arg):
            if event == "call" and armed[0]:
                armed[0] = False
                try:
                    pool.reset_statistics()  # takes the mutex: deadlocks if the core holds it now
                    reentries.append("ok")
                except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
                    reentries.append(f"{type(exc).__name__}: {exc}")

        caught = None
        started = time.monotonic()
        sys.setprofile(profile)
        try:
            armed[0] = True
            pool.allocate("x")
        except FastallocError as exc:
            caught = exc
        finally:
            sys.setprofile(None)
        elapsed = time.monotonic() - started
        assert caught is not None and "damaged" in str(caught), caught
        assert not isinstance(caught, LockTimeout), caught
        assert reentries == ["ok"], reentries
        assert elapsed < 0.9, f"the re-entry waited {elapsed:.2f} s for a mutex its own thread held"


def test_a_dead_owners_slot_is_reclaimed_after_its_client_entry_incarnation_wraps(pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=2.0) as pool:
        child = subprocess.Popen([sys.executable, "-m", "tests.review_child", "allocate_n", pool_name, "1", "hold"],
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            handle = json.loads(child.stdout.readline())["handles"][0]
        finally:
            child.kill()
            child.wait(10)
            child.stdout.close()
        words = u32_of(pool._segment.mm)
        base = L.CLIENT_TABLE_OFFSET // 4
        entry = next(i for i in range(L.MAX_CLIENTS) if words[base + i * L.CLIENT_BYTES // 4] == child.pid)
        incarnation = words[base + entry * L.CLIENT_BYTES // 4 + 1]
        mask = (1 << L.INCARNATION_BITS) - 1
        words[base + entry * L.CLIENT_BYTES // 4 + 1] = (incarnation - 3) & mask  # 3 claims from wrapping back
        words.release()
        for _ in range(2):
            attach(pool_name).close()
        live = attach(pool_name)  # claims the dead child's entry with the dead child's incarnation
        try:
            assert live._core.entry == entry
            report = pool.recover(orphan_policy="reclaim")
            assert report.orphans_reclaimed == 1, report
            with pytest.raises(StaleHandle):
                pool.get(handle)
        finally:
            live.close()


def test_core_init_called_twice_raises_and_leaks_no_reference(pool_name):
    with FixedPool.create(pool_name, capacity=2) as pool:
        def errors(code, *args):
            return FastallocError(f"code {code}: {args}")

        def pack(value):
            return msgpack.packb(value)

        def unpack(data):
            return msgpack.unpackb(data)

        callables = (errors, pack, unpack)
        args = (pool._segment.mm, pool._sem_name, f"/dev/shm/fastalloc.{pool_name}",
                f"/fastalloc.{pool_name}.x")
        kw = dict(main_uid=os.getuid(), kind=L.KIND_FIXED, lock_timeout=1.0, batch=1, errors=errors, pack=pack,
                  unpack=unpack, grow=None, start_ticks=0, creating=False, trusted=())
        before = [sys.getrefcount(f) for f in callables]  # kw holds one each, before and after
        with pytest.raises(RuntimeError, match="initialized once"):
            pool._core.__init__(*args, **kw)  # an open pool's core
        for bad_buffer, error in ((bytearray(L.HEADER_SIZE + 4096), FastallocError), (bytes(L.HEADER_SIZE + 4096), BufferError)):
            # No header, or not writable: the first __init__ fails half-way, the second is refused.
            bad = (bad_buffer,) + args[1:]
            core = _core.Core.__new__(_core.Core)
            with pytest.raises(error):
                core.__init__(*bad, **kw)
            with pytest.raises(RuntimeError, match="initialized once"):
                core.__init__(*bad, **kw)
            del core
            gc.collect()
            assert [sys.getrefcount(f) for f in callables] == before


def _can_fail_allocations() -> bool:
    try:
        import _testcapi
    except ImportError:
        return False
    return hasattr(_testcapi, "set_nomemory")


@unless(_can_fail_allocations(), "this Python has no _testcapi.set_nomemory to fail an allocation on purpose")
def test_a_memoryerror_while_making_a_handle_leaks_no_slot(pool_name):
    with FixedPool.create(pool_name, capacity=64):
        result = run_child("nomemory", pool_name)
        assert result["failed"] > 0 and result["ok"] > 0, result  # the failures hit inside allocate
        assert result["in_use"] == 0, f"{result['in_use']} slots leaked by MemoryError ({result})"


# -- 14. also seen ----------------------------------------------------------------------------------------------------

def test_unlink_of_a_pool_with_a_garbage_header_removes_its_semaphore(pool_name):
    pool = FixedPool.create(pool_name, capacity=2)
    pool.close()
    mm, q = words_of(pool_name)
    for i in range(L.HDR_WORDS):
        q[i] = 0x5A5A5A5A5A5A5A5A
    q.release()
    mm.close()
    fastalloc_shm.unlink(pool_name)
    left = [e for e in os.listdir("/dev/shm") if e.startswith(f"sem.fastalloc.{pool_name}.")]
    for entry in left:
        os.unlink(f"/dev/shm/{entry}")
    assert not left, f"unlink left {left}"


def test_lock_timeout_names_a_holder_stopped_at_lock_acquired(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=4, lock_timeout=0.3) as pool:
        holder = Faulted(tmp_path, "allocate_n", pool_name, 1, fault="lock.acquired:stop")
        try:
            with pytest.raises(LockTimeout) as caught:
                pool.allocate(1)
            assert str(holder.proc.pid) in str(caught.value) and "not recorded" not in str(caught.value)
        finally:
            holder.kill()


def test_lock_timeout_names_a_holder_stopped_anywhere_inside_its_lock_and_unlock(pool_name):
    with FixedPool.create(pool_name, capacity=4, lock_timeout=0.2) as pool:
        churn = subprocess.Popen([sys.executable, "-m", "tests.review_child", "lock_churn", pool_name], cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
        messages: list[str] = []
        try:
            assert churn.stdout.readline().strip() == "churning"
            for _ in range(200):
                if len(messages) == 5:
                    break
                time.sleep(0.003)
                churn.send_signal(signal.SIGSTOP)
                try:
                    pool.reset_statistics()
                except LockTimeout as exc:
                    messages.append(str(exc))
                finally:
                    churn.send_signal(signal.SIGCONT)
        finally:
            churn.kill()
            churn.wait(10)
            churn.stdout.close()
        assert len(messages) == 5, f"the stopped churner held the lock only {len(messages)} times"
        unnamed = [m for m in messages if str(churn.pid) not in m]
        assert not unnamed, unnamed


@pytest.mark.parametrize("kind", [FixedPool, ThreadLocalPool])
def test_the_hot_methods_have_signatures_and_docstrings(pool_name, kind):
    with kind.create(pool_name, capacity=2) as pool:
        for method in ("allocate", "get", "set", "release", "allocate_many", "release_many"):
            bound = getattr(pool, method)
            params = list(inspect.signature(bound).parameters)
            assert params and params[0] != "self", (method, params)
            assert len((bound.__doc__ or "").strip().splitlines()) > 1, (method, bound.__doc__)
        assert "timeout" in inspect.signature(pool.allocate).parameters

"""Pool kinds and their policies (issue 4), on real shared memory and real processes.

GrowingPool: growth amounts, caps, cross-process and concurrent growth, extents
on disk. ThreadLocalPool: magazines. ThreadSafePool: threads x processes and
LockTimeout. Every kind: initialization (lazy, eager, reset), alignment, huge
pages, batches.
"""

import ctypes
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fastalloc_shm import (
    ConfigError,
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    LockTimeout,
    PoolConfig,
    PoolExhausted,
    StaleHandle,
    ThreadLocalPool,
    ThreadSafePool,
    ValueTooLarge,
    attach,
)

from . import kind_workers
from .invariants import check_invariants

ROOT = Path(__file__).resolve().parent.parent
SPAWN = mp.get_context("spawn")
WAIT = 60  # the longest the test waits for any child (seconds)
MB = 1024 * 1024
INDEX = 0xFFFFFFFF


class Children:
    """Spawned processes, each running one kind_workers function; results come back on one queue."""

    def __init__(self) -> None:
        self.results = SPAWN.Queue()
        self.procs: list[mp.Process] = []
        self.received: dict[int, object] = {}

    def start(self, fn, *args) -> int:
        key = len(self.procs)
        proc = SPAWN.Process(target=kind_workers.run, args=(self.results, key, fn, *args))
        proc.start()
        self.procs.append(proc)
        return key

    def result(self, key: int):
        deadline = time.monotonic() + WAIT
        while key not in self.received:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"child {key} sent no result within {WAIT} s"
            got, status, payload = self.results.get(timeout=remaining)
            assert status == "ok", f"child {got} failed:\n{payload}"
            self.received[got] = payload
        return self.received[key]

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.join(WAIT)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
        self.results.close()
        self.results.join_thread()
        if exc[0] is None:
            assert [p.exitcode for p in self.procs] == [0] * len(self.procs)


def run_child(fn, *args):
    """Run one kind_workers function in a spawned process and return its result."""
    with Children() as children:
        return children.result(children.start(fn, *args))


def fill_to_exhaustion(pool) -> tuple[list[int], list[int]]:
    """Allocate until PoolExhausted; return the capacities seen (after each growth) and the handles."""
    capacities, handles = [pool.capacity], []
    while True:
        try:
            handles.append(pool.allocate({"n": len(handles)}))
        except PoolExhausted:
            return capacities, handles
        if pool.capacity != capacities[-1]:
            capacities.append(pool.capacity)


def shm_entries_of(name: str) -> list[str]:
    """Every /dev/shm entry of pool `name`: main segment, extents, semaphore."""
    semaphore = re.compile(rf"sem\.fastalloc\.{re.escape(name)}\.[0-9a-f]{{16}}\.lock")
    return sorted("sem" if semaphore.fullmatch(e) else e for e in os.listdir("/dev/shm")
                  if e == f"fastalloc.{name}" or semaphore.fullmatch(e) or e.startswith(f"fastalloc.{name}.x"))


def rss() -> int:
    return psutil.Process().memory_info().rss


def mapped_rss(pool_name: str) -> int:
    """Bytes of the pool's segments resident in this process (/proc/self/smaps): what its pages
    cost, unmoved by whatever else the process allocates or frees meanwhile (an ASan heap, say)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: its range, ..., its path
                ours = f"/fastalloc.{pool_name}" in line
            elif ours and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


# -- GrowingPool: amounts and caps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, capacity, max_capacity, expected",
    [
        (GrowthStrategy.linear(5), 10, 27, [10, 15, 20, 25, 27]),
        (GrowthStrategy.exponential(1.5), 3, 12, [3, 4, 6, 9, 12]),  # floor(4.5)-3 = 1, floor(6)-4 = 2, ...
        (GrowthStrategy.exponential(1.01), 10, 13, [10, 11, 12, 13]),  # max(1, floor(10.1)-10): at least one slot
        (GrowthStrategy.exponential(2.0), 4, 40, [4, 8, 16, 32, 40]),
        (GrowthStrategy.custom(kind_workers.add_half_plus_one), 4, 30, [4, 7, 11, 17, 26, 30]),
        (GrowthStrategy.custom("tests.kind_workers:add_half_plus_one"), 4, 30, [4, 7, 11, 17, 26, 30]),
    ],
    ids=["linear", "exponential-1.5", "exponential-at-least-one", "exponential-2", "custom-function", "custom-string"],
)
def test_growing_pool_grows_by_its_strategy_clamped_to_max_capacity(pool_name, strategy, capacity, max_capacity, expected):
    with GrowingPool.create(pool_name, capacity=capacity, max_capacity=max_capacity, growth_strategy=strategy) as pool:
        capacities, handles = fill_to_exhaustion(pool)
        assert capacities == expected
        stats = pool.statistics()
        assert (stats.capacity, stats.growth_count) == (max_capacity, len(expected) - 1)
        assert (stats.current_usage, stats.allocation_failures) == (max_capacity, 1)
        assert [pool.get(h) for h in handles] == [{"n": n} for n in range(max_capacity)]
        check_invariants(pool)


def test_growing_pool_without_a_strategy_doubles(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=32) as pool:
        assert pool.config.growth_strategy == GrowthStrategy.exponential(2.0)
        capacities, _ = fill_to_exhaustion(pool)
        assert capacities == [4, 8, 16, 32]
        assert pool.statistics().growth_count == 3


def test_pool_exhausted_only_when_full_at_max_capacity(pool_name):
    with GrowingPool.create(pool_name, capacity=2, max_capacity=6, growth_strategy=GrowthStrategy.linear(2)) as pool:
        handles = [pool.allocate(n) for n in range(6)]  # grows twice, never refuses
        assert pool.statistics().allocation_failures == 0
        with pytest.raises(PoolExhausted, match="max_capacity"):
            pool.allocate("one too many")
        pool.release(handles[0])
        assert pool.get(pool.allocate("fits again")) == "fits again"
        stats = pool.statistics()
        assert (stats.capacity, stats.growth_count, stats.allocation_failures) == (6, 2, 1)


def test_unbounded_growing_pool_keeps_growing(pool_name):
    with GrowingPool.create(pool_name, capacity=1, growth_strategy=GrowthStrategy.linear(3)) as pool:
        for n in range(100):
            pool.allocate(n)
        assert (pool.capacity, pool.statistics().growth_count) == (100, 33)


def test_allocate_many_may_grow_several_times(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=16, growth_strategy=GrowthStrategy.linear(4)) as pool:
        handles = pool.allocate_many(range(10))
        stats = pool.statistics()
        assert (stats.capacity, stats.growth_count) == (12, 2)
        assert [pool.get(h) for h in handles] == list(range(10))


# -- GrowingPool: across processes ------------------------------------------------------------------------------------


def test_growth_by_one_process_is_mapped_lazily_by_others(pool_name):
    with GrowingPool.create(pool_name, capacity=8, max_capacity=32, growth_strategy=GrowthStrategy.linear(8)) as pool:
        mine = pool.allocate({"by": "test"})
        with Children() as children:
            attached, inbox = SPAWN.Queue(), SPAWN.Queue()
            reader = children.start(kind_workers.read_after_growth, pool_name, attached, inbox)
            assert attached.get(timeout=WAIT) == (8, 1)  # B attached before the growth: one extent mapped
            grown = children.result(children.start(kind_workers.fill_until_grown, pool_name))
            assert (grown["capacity"], grown["growths"]) == (16, 1)
            assert all(h & INDEX >= 8 for h in grown["new"]) and len(grown["new"]) == 2

            # The test process attached before the growth too: it maps the extent when it meets a handle there.
            assert pool._core.extents == 1
            assert pool.get(grown["new"][0]) == {"by": "A", "n": 7}
            assert pool._core.extents == 2
            assert pool.get(mine) == {"by": "test"}
            assert [pool.get(h) for h in grown["old"]] == [{"by": "A", "n": n} for n in range(7)]

            everything = [mine, *grown["old"], *grown["new"]]
            inbox.put((everything, grown["new"][1]))
            seen = children.result(reader)
            assert (seen["mapped_before"], seen["mapped_after"]) == (1, 2)
            assert seen["values"] == [pool.get(h) for h in everything[:-1]] + [{"by": "A", "n": "second in the new extent"}]
        with pytest.raises(StaleHandle):
            pool.get(grown["new"][1])  # B released it
        assert pool.statistics().growth_count == 1
        assert check_invariants(pool)["allocated"] == 9


@pytest.mark.parametrize(
    "strategy, rounds, growths, capacity",
    [
        (GrowthStrategy.linear(2), 40, 40, 82),  # each round needs 2 slots: exactly one growth of 2
        (GrowthStrategy.exponential(2.0), 31, 5, 64),  # 2 + 2*31 = 64 slots: 2 -> 4 -> ... -> 64
    ],
    ids=["linear", "exponential"],
)
def test_two_processes_on_a_full_pool_grow_it_once_per_need(pool_name, strategy, rounds, growths, capacity):
    with GrowingPool.create(pool_name, capacity=2, growth_strategy=strategy) as pool:
        pool.allocate_many(["mine", "mine"])  # full
        barrier = SPAWN.Barrier(2)
        with Children() as children:
            keys = [children.start(kind_workers.allocate_in_rounds, pool_name, barrier, w, rounds) for w in range(2)]
            handles = [children.result(k) for k in keys]
        stats = pool.statistics()
        assert (stats.growth_count, stats.capacity, stats.current_usage) == (growths, capacity, 2 + 2 * rounds)
        flat = handles[0] + handles[1]
        assert len(set(flat)) == len(flat)
        for w in range(2):
            assert [pool.get(h) for h in handles[w]] == [{"worker": w, "round": r} for r in range(rounds)]
        check_invariants(pool)


def test_custom_growth_function_is_used_by_other_processes(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=30,
                            growth_strategy=GrowthStrategy.custom(kind_workers.add_half_plus_one)) as pool:
        run_child(kind_workers.fill, pool_name, 12)  # 4 -> 7 -> 11 -> 17, in the child
        stats = pool.statistics()
        assert (stats.capacity, stats.growth_count) == (17, 3)


def test_lambda_growth_works_in_its_creator_and_is_a_config_error_elsewhere(pool_name):
    with GrowingPool.create(pool_name, capacity=2, max_capacity=20,
                            growth_strategy=GrowthStrategy.custom(lambda capacity: 2)) as pool:
        pool.allocate_many(range(3))  # the creator grows with its own lambda
        pool.allocate(3)
        assert (pool.capacity, len(pool)) == (4, 4)
        refused = run_child(kind_workers.allocate_here, pool_name, 1)
        assert refused["error"] == "ConfigError" and "import" in refused["message"], refused
        assert refused["in_use"] == 4
        assert pool.capacity == 4 and len(pool) == 4
        assert check_invariants(pool)["writing"] == 0
        pool.allocate(4)
        assert pool.capacity == 6


def test_failed_growth_in_another_process_leaks_no_slot_of_a_batch(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=20,
                            growth_strategy=GrowthStrategy.custom(lambda capacity: 4)) as pool:
        a, b, _, _ = pool.allocate_many(range(4))
        pool.release_many([a, b])  # 2 free: a batch of 3 needs a growth the child cannot do
        refused = run_child(kind_workers.allocate_here, pool_name, 3)
        assert refused["error"] == "ConfigError" and "import" in refused["message"], refused
        assert len(pool) == 2
        counts = check_invariants(pool)
        assert (counts["writing"], counts["free"]) == (0, 2), f"the failed batch kept slots: {counts}"
        assert len(pool.allocate_many(range(2))) == 2


def test_allocate_many_whose_growth_fails_keeps_no_slot(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=20,
                            growth_strategy=GrowthStrategy.custom(kind_workers.invalid_growth)) as pool:
        pool.allocate_many(range(2))
        with pytest.raises(ConfigError, match="growth_strategy"):
            pool.allocate_many(range(3))  # takes the 2 free slots, then the growth fails
        assert len(pool) == 2
        counts = check_invariants(pool)
        assert (counts["writing"], counts["free"]) == (0, 2), f"the failed batch kept slots: {counts}"


def test_unlink_of_a_grown_pool_leaves_nothing_in_dev_shm(pool_name):
    pool = GrowingPool.create(pool_name, capacity=2, growth_strategy=GrowthStrategy.linear(2))
    run_child(kind_workers.fill, pool_name, 5)  # extents x1, x2 created by the child
    pool.allocate_many(range(5))  # x3, x4 created here
    assert shm_entries_of(pool_name) == sorted([f"fastalloc.{pool_name}", "sem"]
                                               + [f"fastalloc.{pool_name}.x{k}" for k in range(1, 5)])
    pool.unlink()
    assert shm_entries_of(pool_name) == []


# -- ThreadLocalPool --------------------------------------------------------------------------------------------------


def test_threadlocal_pool_takes_the_lock_about_once_per_batch(pool_name, make_name):
    with ThreadLocalPool.create(pool_name, capacity=1024, batch_size=32) as local, \
            FixedPool.create(make_name(), capacity=1024) as fixed:
        for pool in (local, fixed):
            for _ in range(50):
                handles = [pool.allocate(i) for i in range(100)]
                for h in handles:
                    pool.release(h)
        lstats, fstats = local.statistics(), fixed.statistics()
        assert lstats.total_allocations == lstats.total_deallocations == 5000
        assert lstats.lock_acquisitions < lstats.total_allocations / 10
        assert fstats.lock_acquisitions >= fstats.total_allocations + fstats.total_deallocations
        print(f"\nThreadLocalPool: {lstats.total_allocations / lstats.lock_acquisitions:.1f} allocations per lock "
              f"acquisition ({lstats.lock_acquisitions} for {lstats.total_allocations}); FixedPool: "
              f"{fstats.total_allocations / fstats.lock_acquisitions:.2f}")


def test_threadlocal_len_counts_this_process_s_own_allocations_and_releases(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=8) as pool:
        handles = [pool.allocate(n) for n in range(3)]
        assert len(pool) == 3
        pool.release(handles[0])
        assert len(pool) == 2 == pool.statistics().current_usage


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_threadlocal_refill_takes_batch_size_slots(pool_name, batch_size):
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=batch_size) as pool:
        before = pool.statistics().lock_acquisitions
        pool.allocate("first")
        assert pool.cached() == batch_size - 1
        assert check_invariants(pool)["cached"] == batch_size - 1
        for n in range(batch_size - 1):
            pool.allocate(n)  # from the magazine: no lock
        assert pool.statistics().lock_acquisitions - before == 1  # the refill; statistics() takes no lock
        other = attach(pool_name)
        assert other.config.batch_size == batch_size
        other.close()


def test_threadlocal_close_in_another_process_returns_its_magazine(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=256, batch_size=32) as pool:
        done = run_child(kind_workers.cycle_and_close, pool_name, 100, 3)
        assert done["batch_size"] == 32
        assert done["cached_before_close"] > 0  # the child did hold slots privately
        counts = check_invariants(pool)
        assert (counts["cached"], counts["free"]) == (0, 256)
        stats = pool.statistics()
        assert (stats.total_allocations, stats.total_deallocations, stats.current_usage) == (300, 300, 0)
        assert len(pool.allocate_many(range(256))) == 256  # every slot is reachable again


def test_threadlocal_close_in_this_process_returns_its_magazine(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=64, batch_size=8) as pool:
        second = ThreadLocalPool.attach(pool_name)
        for h in [second.allocate(n) for n in range(10)]:
            second.release(h)
        assert check_invariants(pool)["cached"] == second.cached() > 0
        second.close()
        assert check_invariants(pool)["cached"] == 0
        assert len(pool) == 0


def test_threadlocal_handles_work_across_processes(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=128, batch_size=8) as pool:
        mine = pool.allocate({"from": "test"})
        got = run_child(kind_workers.read_and_allocate, pool_name, mine, 10)
        assert got["value"] == {"from": "test"}
        assert [pool.get(h) for h in got["handles"]] == [{"from": "child", "n": n} for n in range(10)]
        for h in got["handles"]:
            pool.release(h)
        with pytest.raises(StaleHandle):
            pool.get(got["handles"][0])
        assert len(pool) == 1
        check_invariants(pool)


# -- ThreadSafePool ---------------------------------------------------------------------------------------------------


def test_threadsafe_pool_survives_8_threads_in_each_of_2_processes(pool_name):
    with ThreadSafePool.create(pool_name, capacity=512, slot_size=128) as pool:
        with Children() as children:
            keys = [children.start(kind_workers.hammer_with_threads, pool_name, p, 8, 1500) for p in range(2)]
            results = [children.result(k) for k in keys]
        held = {h: v for r in results for h, v in r["held"].items()}
        assert len(held) == sum(len(r["held"]) for r in results), "a handle was handed out twice"
        for h, value in held.items():
            assert pool.get(h) == value
        counts = check_invariants(pool)
        assert counts["allocated"] == len(held) == len(pool)
        assert counts["writing"] == counts["cached"] == 0
        stats = pool.statistics()
        operations = sum(r["allocations"] + r["sets"] + r["releases"] for r in results)
        assert stats.total_allocations == sum(r["allocations"] for r in results)
        assert stats.total_deallocations == sum(r["releases"] for r in results)
        assert stats.lock_acquisitions >= operations  # every allocate, set and release took the lock once
        print(f"\nThreadSafePool, 2 processes x 8 threads: {operations} operations, "
              f"{stats.lock_acquisitions} lock acquisitions, waited {stats.lock_wait_ns / 1e6:.1f} ms in all")


def test_threadsafe_lock_timeout_names_a_stopped_holder(tmp_path, pool_name):
    with ThreadSafePool.create(pool_name, capacity=8, lock_timeout=0.5) as pool:
        marker = tmp_path / "fault"
        env = dict(os.environ, FASTALLOC_FAULT="alloc.popped:stop", FASTALLOC_FAULT_FILE=str(marker))
        child = subprocess.Popen([sys.executable, "-m", "tests.crash_child", pool_name, "allocate"],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not (marker.exists() and "alloc.popped" in marker.read_text()):
                assert child.poll() is None, f"child exited ({child.returncode}) before stopping"
                assert time.monotonic() < deadline, "child never stopped at alloc.popped"
                time.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(LockTimeout, match=f"pid {child.pid} \\(alive\\)"):
                pool.allocate("blocked")
            assert time.monotonic() - started < 5
            assert pool.statistics().lock_timeouts == 1
            os.kill(child.pid, signal.SIGCONT)
            assert child.wait(10) == 0
            assert pool.get(int(child.stdout.read())) == {"by": "child"}
            assert pool.get(pool.allocate("after")) == "after"
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGCONT)
                child.kill()
                child.wait(10)
            child.stdout.close()


# -- initialization: lazy, eager, reset --------------------------------------------------------------------------------


KINDS = {
    "fixed": (FixedPool, {"capacity": 64}),
    "growing": (GrowingPool, {"capacity": 32, "max_capacity": 64, "growth_strategy": GrowthStrategy.linear(32)}),
    "threadlocal": (ThreadLocalPool, {"capacity": 64, "batch_size": 8}),
    "threadsafe": (ThreadSafePool, {"capacity": 64}),
}


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_lazy_creation_does_not_grow_rss_with_capacity(pool_name, kind):
    cls, _ = kind
    before = rss()
    with cls.create(pool_name, capacity=100_000, slot_size=1024) as pool:
        grown = rss() - before
        assert pool.nbytes > 100_000 * 1024
        assert grown < 8 * MB, f"creating a {pool.nbytes / MB:.0f} MB pool grew RSS by {grown / MB:.1f} MB"


def test_lazy_growth_does_not_grow_rss_with_the_extent(pool_name):
    with GrowingPool.create(pool_name, capacity=1, slot_size=1024, growth_strategy=GrowthStrategy.linear(100_000)) as pool:
        pool.allocate(0)
        before = rss()
        pool.allocate(1)  # grows by ~100 MB of slots
        grown = rss() - before
        assert pool.capacity == 100_001
        assert grown < 8 * MB, f"a {pool.nbytes / MB:.0f} MB growth grew RSS by {grown / MB:.1f} MB"


@pytest.mark.parametrize("initializer", [kind_workers.initial_value, None], ids=["initializer", "pages_only"])
def test_pre_initialize_touches_every_slot_page(pool_name, initializer):
    capacity, slot_size = 20_000, 1024
    builder = PoolConfig.builder().capacity(capacity).slot_size(slot_size).pre_initialize(True)
    cfg = (builder.initializer(initializer) if initializer else builder).build()
    with FixedPool.create(pool_name, config=cfg):
        resident = mapped_rss(pool_name)
        data = capacity * slot_size
        assert resident > 0.9 * data, f"pre-initializing {data / MB:.1f} MB of slots made {resident / MB:.1f} MB resident"


@pytest.mark.parametrize("initializer", [kind_workers.initial_value, "tests.kind_workers:initial_value"],
                         ids=["function", "string"])
def test_pre_initialize_fills_every_slot_with_the_initializer(pool_name, initializer):
    cfg = PoolConfig.builder().capacity(50).pre_initialize(True).initializer(initializer).build()
    with FixedPool.create(pool_name, config=cfg) as pool:
        assert len(pool) == 0
        handles = [pool.acquire() for _ in range(50)]
        assert [pool.get(h) for h in handles] == [{"state": "ready", "hits": 0}] * 50
        with pytest.raises(PoolExhausted):
            pool.acquire()
        check_invariants(pool)


def test_pre_initialized_pool_still_takes_values_from_allocate(pool_name):
    with FixedPool.create(pool_name, capacity=4, pre_initialize=True, initializer=kind_workers.initial_value) as pool:
        h = pool.allocate({"mine": 1})
        assert pool.get(h) == {"mine": 1}
        pool.release(h)
        assert pool.get(pool.acquire()) == {"mine": 1}  # no reset: the previous value is handed out


def test_acquire_creates_first_then_resets_in_place(pool_name):
    cfg = PoolConfig.builder().capacity(2).reset_fn(kind_workers.new_record, kind_workers.reuse_in_place).build()
    with FixedPool.create(pool_name, config=cfg) as pool:
        h = pool.acquire()
        assert pool.get(h) == {"made_by": os.getpid(), "uses": 0}
        pool.set(h, {"made_by": os.getpid(), "uses": 0, "scratch": "left over"})
        pool.release(h)
        again = pool.acquire()
        assert again & INDEX == h & INDEX
        assert pool.get(again) == {"made_by": os.getpid(), "uses": 1}
        fresh = pool.acquire()
        assert pool.get(fresh) == {"made_by": os.getpid(), "uses": 0}


def test_acquire_after_reuse_takes_the_value_reset_returns(pool_name):
    cfg = PoolConfig.builder().capacity(2).reset_fn("tests.kind_workers:new_record", "tests.kind_workers:reuse_as_new").build()
    with GrowingPool.create(pool_name, config=cfg.with_overrides(max_capacity=4)) as pool:
        h = pool.acquire()
        pool.release(h)
        assert pool.get(pool.acquire()) == {"made_by": os.getpid(), "uses": 1, "renewed": True}


def test_an_attacher_in_another_process_uses_the_recorded_reset_callables(pool_name):
    cfg = PoolConfig.builder().capacity(4).reset_fn(kind_workers.new_record, kind_workers.reuse_in_place).build()
    with FixedPool.create(pool_name, config=cfg) as pool:
        h = pool.acquire()
        pool.set(h, {"made_by": os.getpid(), "uses": 5})
        pool.release(h)
        got = run_child(kind_workers.acquire_twice, pool_name)
        assert got["first"] == {"made_by": os.getpid(), "uses": 6}  # reset(previous) ran in the child
        assert got["second"] == {"made_by": got["pid"], "uses": 0}  # create() ran in the child


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_acquire_without_reset_or_initializer_is_a_config_error(pool_name, kind):
    cls, extra = kind
    with cls.create(pool_name, **extra) as pool:
        with pytest.raises(ConfigError, match="acquire"):
            pool.acquire()
        assert len(pool) == 0
        check_invariants(pool)


# -- alignment, huge pages ------------------------------------------------------------------------------------------


def address_of(pool, handle: int) -> int:
    view = pool.buffer(handle)
    try:
        anchor = ctypes.c_char.from_buffer(view)
        address = ctypes.addressof(anchor)
        del anchor
    finally:
        view.release()
    return address


@pytest.mark.parametrize("alignment", [8, 64, 256, 4096])
def test_every_slot_and_the_stride_are_aligned(pool_name, alignment):
    with GrowingPool.create(pool_name, capacity=4, slot_size=100, alignment=alignment,
                            growth_strategy=GrowthStrategy.linear(4)) as pool:
        handles = [pool.allocate(n) for n in range(12)]  # extent 0 and two grown extents
        addresses = [address_of(pool, h) for h in handles]
        assert [a % alignment for a in addresses] == [0] * 12
        for extent in range(3):
            first, second = addresses[4 * extent], addresses[4 * extent + 1]
            stride = second - first
            assert stride % alignment == 0 and stride >= 100
        assert [pool.get(h) for h in handles] == list(range(12))


@pytest.mark.parametrize("kind", [FixedPool, GrowingPool])
def test_huge_pages_pool_is_usable(pool_name, kind):
    extra = {"max_capacity": 8192, "growth_strategy": GrowthStrategy.linear(4096)} if kind is GrowingPool else {}
    with kind.create(pool_name, capacity=4096, slot_size=512, huge_pages=True, **extra) as pool:
        assert isinstance(pool.huge_pages_advised, bool)
        handles = pool.allocate_many([{"n": n} for n in range(4096)])
        if kind is GrowingPool:
            handles.append(pool.allocate({"n": 4096}))
            assert pool.capacity == 8192
        assert [pool.get(h) for h in handles] == [{"n": n} for n in range(len(handles))]
        other = attach(pool_name)
        assert other.huge_pages_advised == pool.huge_pages_advised
        other.close()


# -- batches on every kind ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_batches_take_the_lock_once(pool_name, kind):
    cls, extra = kind
    with cls.create(pool_name, **extra) as pool:
        count = min(50, pool.capacity)  # a batch that must grow the pool takes the lock again to commit the extent
        before = pool.statistics().lock_acquisitions
        handles = pool.allocate_many([{"n": n} for n in range(count)])
        assert pool.statistics().lock_acquisitions == before + 1
        assert [pool.get(h) for h in handles] == [{"n": n} for n in range(count)]
        before = pool.statistics().lock_acquisitions
        pool.release_many(handles)
        assert pool.statistics().lock_acquisitions == before + 1
        assert len(pool) == 0
        check_invariants(pool)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_allocate_many_on_a_full_pool_allocates_nothing(pool_name, kind):
    cls, extra = kind
    with cls.create(pool_name, **extra) as pool:
        pool.allocate_many(range(60))
        with pytest.raises(PoolExhausted):
            pool.allocate_many(range(5))
        assert len(pool) == 60 and pool.capacity == 64
        counts = check_invariants(pool)
        assert (counts["allocated"], counts["writing"], counts["free"]) == (60, 0, 4)
        assert len(pool.allocate_many(range(4))) == 4


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_allocate_many_with_one_value_too_large_allocates_nothing(pool_name, kind):
    cls, extra = kind
    with cls.create(pool_name, slot_size=64, **extra) as pool:
        with pytest.raises(ValueTooLarge):
            pool.allocate_many([1, 2, b"x" * 100, 4])
        assert len(pool) == 0
        assert check_invariants(pool)["free"] == pool.capacity


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_release_many_with_one_stale_handle_releases_none(pool_name, kind):
    cls, extra = kind
    with cls.create(pool_name, **extra) as pool:
        a, b, c = pool.allocate_many(["a", "b", "c"])
        pool.release(b)
        with pytest.raises(StaleHandle):
            pool.release_many([a, b, c])
        assert (pool.get(a), pool.get(c)) == ("a", "c")
        pool.release_many([a, c])
        counts = check_invariants(pool)
        assert (counts["allocated"], counts["writing"]) == (0, 0)

"""Real processes sharing real pools: stress with invariants, queues, pickling under every start method."""

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import pytest

from fastalloc_shm import FixedPool, GrowingPool, GrowthStrategy, ThreadLocalPool, ThreadSafePool, unlink

from . import workers
from .invariants import check_invariants

KINDS = [
    (FixedPool, {}),
    (GrowingPool, {"max_capacity": 400, "growth_strategy": GrowthStrategy.linear(100)}),
    (ThreadLocalPool, {"batch_size": 8}),
    (ThreadSafePool, {}),
]


@pytest.mark.parametrize("kind, extra", KINDS, ids=lambda k: getattr(k, "__name__", ""))
def test_four_spawned_processes_lose_no_slot_and_share_none(pool_name, kind, extra):
    ctx = mp.get_context("spawn")
    with kind.create(pool_name, capacity=200, slot_size=128, **extra) as pool:
        with ctx.Pool(4) as procs:
            results = procs.starmap(workers.stress, [(pool_name, w, 3000, w) for w in range(4)])
        held = {h: v for r in results for h, v in r["held"].items()}
        assert len(held) == sum(len(r["held"]) for r in results), "a handle was handed out twice"
        report = check_invariants(pool)
        assert report["allocated"] == len(held)
        for h, value in held.items():
            assert pool.get(h) == value, "a value was overwritten by another process after its owner's last set()"


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_handles_pass_through_a_queue_under_every_start_method(pool_name, method):
    ctx = mp.get_context(method)
    with FixedPool.create(pool_name, capacity=256, slot_size=64) as pool:
        queue, results = ctx.Queue(), ctx.Queue()
        consumer = ctx.Process(target=workers.consume, args=(pool, queue, results))
        consumer.start()
        for n in range(200):
            queue.put(pool.allocate({"n": n}))
        queue.put(None)
        assert results.get(timeout=60) == sum(range(200))
        consumer.join(60)
        assert consumer.exitcode == 0
        assert len(pool) == 0


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_pickles_into_a_process_pool_executor(pool_name, method):
    with FixedPool.create(pool_name, capacity=8) as pool:
        h = pool.allocate({"x": [1, 2]})
        with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
            assert list(ex.map(workers.read_through_pickle, [pool] * 3, [h] * 3)) == [{"x": [1, 2]}] * 3


def test_forked_child_gets_its_own_client_entry(pool_name):
    ctx = mp.get_context("fork")
    with FixedPool.create(pool_name, capacity=8) as pool:
        pool.allocate(1)
        child = ctx.Process(target=_allocate_in_fork, args=(pool,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert len(pool) == 2
        assert len([c for c in pool.clients() if c.alive]) == 1


def _allocate_in_fork(pool):
    pool.allocate(2)
    assert len({c.entry for c in pool.clients()}) == 2
    pool.close()


def test_a_forked_child_keeps_a_pool_whose_name_was_unlinked(pool_name):
    ctx = mp.get_context("fork")
    pool = FixedPool.create(pool_name, capacity=8)
    try:
        pool.allocate(1)
        unlink(pool_name)  # the mapping lives on in this process, as an unlinked file does
        child = ctx.Process(target=_allocate_in_fork, args=(pool,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert len(pool) == 2
    finally:
        pool.close()

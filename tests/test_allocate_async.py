"""`pool.allocate_async` and `Channel.put_async`: the wait for a free slot, off the event loop.

A full pool's waiting task gets the slot another process releases; it never
blocks the loop meanwhile (a ticker task keeps ticking); its timeout is
`allocate`'s (None: no wait); a cancelled wait takes no slot.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from fastalloc_shm import FixedPool, GrowingPool, PoolExhausted, ThreadLocalPool, attach


def release_later(pool_name: str, handle: int, delay: float) -> subprocess.Popen:
    """Another process that releases `handle` after `delay` s."""
    code = textwrap.dedent(f"""
        import time
        from fastalloc_shm import attach
        pool = attach({pool_name!r})
        time.sleep({delay})
        pool.release({handle})
        pool.close()
    """)
    return subprocess.Popen([sys.executable, "-c", code])


def while_another_process_releases(pool, delay: float, coroutine) -> tuple[object, int]:
    """Hold the full pool's one slot, have another process release it after `delay` s, and run
    `coroutine` meanwhile: its result and the ticks of a 1 ms ticker beside it."""
    releaser = release_later(pool.name, pool.allocate("held"), delay)
    try:
        return asyncio.run(ticking_while(coroutine))
    finally:
        assert releaser.wait(30) == 0


async def ticking_while(awaitable) -> tuple[object, int]:
    """The awaitable's result and how often a 1 ms ticker ran meanwhile (0 if the loop was blocked)."""
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        return await awaitable, ticks
    finally:
        task.cancel()


@pytest.mark.parametrize("kind", [FixedPool, ThreadLocalPool], ids=lambda k: k.__name__)
def test_a_waiting_allocate_async_gets_the_slot_another_process_releases(kind, pool_name):
    with kind.create(pool_name, capacity=1, slot_size=64) as pool:
        handle, ticks = while_another_process_releases(pool, 0.3, pool.allocate_async("new", timeout=30))
        assert pool.get(handle) == "new" and len(pool) == 1
        assert ticks >= 50  # the loop ran its ticker through the 0.3 s wait


def test_allocate_async_without_a_timeout_does_not_wait_as_allocate(pool_name):
    with FixedPool.create(pool_name, capacity=1, slot_size=64) as pool:
        pool.allocate("held")
        with pytest.raises(PoolExhausted):
            asyncio.run(asyncio.wait_for(pool.allocate_async("x"), 5))
        with pytest.raises(PoolExhausted):
            asyncio.run(pool.allocate_async("x", timeout=0.1))
        assert len(pool) == 1


def test_allocate_async_takes_a_free_slot_at_once_and_grows_a_growing_pool(pool_name):
    with GrowingPool.create(pool_name, capacity=1, max_capacity=4, slot_size=64) as pool:
        handles = [asyncio.run(pool.allocate_async(i)) for i in range(3)]
        assert [pool.get(h) for h in handles] == [0, 1, 2] and pool.capacity >= 3


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_allocate_async_and_put_async_refuse_a_bad_timeout_as_allocate_does(bad, pool_name):
    with FixedPool.create(pool_name, capacity=1, slot_size=64) as pool:
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(pool.allocate_async("x", timeout=bad))
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(pool.channel("todo").put_async("x", timeout=bad))
        assert len(pool) == 0


def test_a_cancelled_allocate_async_or_put_async_takes_no_slot(pool_name):
    async def cancel_soon(coro):
        task = asyncio.create_task(coro)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with FixedPool.create(pool_name, capacity=1, slot_size=64) as pool:
        held = pool.allocate("held")
        todo = pool.channel("todo")
        asyncio.run(cancel_soon(pool.allocate_async("lost?", timeout=30)))
        asyncio.run(cancel_soon(todo.put_async("lost?")))
        pool.release(held)
        assert len(pool) == 0 and len(todo) == 0  # neither wait took the slot freed after it


def test_put_async_waits_for_a_slot_then_queues_the_item(pool_name):
    with FixedPool.create(pool_name, capacity=1, slot_size=64) as pool:
        todo = pool.channel("todo")
        _, ticks = while_another_process_releases(pool, 0.2, todo.put_async("queued", timeout=30))
        assert ticks >= 30 and todo.get(0) == "queued"
        with attach(pool_name) as other:
            assert len(other) == 0

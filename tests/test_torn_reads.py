"""get() concurrent with set() on the same slot returns the old or the new value, never a mix."""

import multiprocessing as mp
import time

import pytest

from fastalloc_shm import FixedPool, attach


def value(n, large):
    """Self-checking: every element equal. Large values are unpacked in place by get()."""
    return bytes([n % 251 + 1]) * 3000 if large else [n] * 64


def writer(name, handle, stop, large):
    pool = attach(name)
    n = 0
    while not stop.value:
        n += 1
        pool.set(handle, value(n, large))
    pool.close()


@pytest.mark.parametrize("large", [False, True], ids=["copied", "unpacked-in-place"])
def test_concurrent_set_never_yields_a_torn_value(pool_name, large):
    ctx = mp.get_context("spawn")
    with FixedPool.create(pool_name, capacity=4, slot_size=4096) as pool:
        handle = pool.allocate(value(0, large))
        first = pool.get(handle)
        stop = ctx.Value("b", 0, lock=False)
        proc = ctx.Process(target=writer, args=(pool_name, handle, stop, large))
        proc.start()
        try:
            while pool.get(handle) == first:  # wait for the writer to start
                pass
            torn = changes = reads = 0
            last = None
            deadline = time.monotonic() + 20
            while reads < 50_000 or (changes < 1000 and time.monotonic() < deadline):
                got = pool.get(handle)
                reads += 1
                torn += len(set(got)) != 1
                changes += got[0] != last
                last = got[0]
        finally:
            stop.value = 1
            proc.join(30)
        assert torn == 0
        assert changes > 50, "the writer did not run concurrently enough to test anything"

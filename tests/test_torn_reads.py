"""get() concurrent with set() on the same slot returns the old or the new value, never a mix."""

import multiprocessing as mp
import time

from fastalloc_shm import FixedPool, attach


def writer(name, handle, stop):
    pool = attach(name)
    n = 0
    while not stop.value:
        n += 1
        pool.set(handle, [n] * 64)
    pool.close()


def test_concurrent_set_never_yields_a_torn_value(pool_name):
    ctx = mp.get_context("spawn")
    with FixedPool.create(pool_name, capacity=4, slot_size=1024) as pool:
        handle = pool.allocate([0] * 64)
        stop = ctx.Value("b", 0, lock=False)
        proc = ctx.Process(target=writer, args=(pool_name, handle, stop))
        proc.start()
        try:
            while pool.get(handle)[0] == 0:  # wait for the writer to start
                pass
            torn = changes = reads = 0
            last = None
            deadline = time.monotonic() + 20
            while reads < 50_000 or (changes < 1000 and time.monotonic() < deadline):
                value = pool.get(handle)
                reads += 1
                torn += len(set(value)) != 1
                changes += value[0] != last
                last = value[0]
        finally:
            stop.value = 1
            proc.join(30)
        assert torn == 0
        assert changes > 50, "the writer did not run concurrently enough to test anything"

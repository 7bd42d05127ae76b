"""Garbage in never corrupts a pool: foreign segments, future versions, damaged metadata, random handles."""

import mmap
import os
import random

import posix_ipc
import pytest

from fastalloc_shm import FixedPool, IncompatiblePool, InvalidHandle, StaleHandle, attach
from fastalloc_shm import _layout as L

from .invariants import check_invariants


def poke_header(name, word, value):
    shm = posix_ipc.SharedMemory(f"/fastalloc.{name}")
    with mmap.mmap(shm.fd, L.HEADER_SIZE) as mm:
        view = memoryview(mm).cast("Q")
        view[word] = value
        view.release()
    shm.close_fd()


def test_random_bytes_under_a_pool_name_are_incompatible(pool_name):
    shm = posix_ipc.SharedMemory(f"/fastalloc.{pool_name}", posix_ipc.O_CREX, size=L.HEADER_SIZE * 2)
    try:
        os.write(shm.fd, os.urandom(L.HEADER_SIZE * 2))
        with pytest.raises(IncompatiblePool, match="bad magic"):
            attach(pool_name)
    finally:
        shm.close_fd()
        shm.unlink()


def test_a_tiny_segment_is_incompatible(pool_name):
    shm = posix_ipc.SharedMemory(f"/fastalloc.{pool_name}", posix_ipc.O_CREX, size=100)
    try:
        with pytest.raises(IncompatiblePool, match="not a fastalloc pool"):
            attach(pool_name)
    finally:
        shm.close_fd()
        shm.unlink()


def test_a_future_layout_version_is_incompatible_and_named(pool_name):
    with FixedPool.create(pool_name, capacity=4):
        poke_header(pool_name, L.HDR_VERSION, 99)
        with pytest.raises(IncompatiblePool, match="layout version 99"):
            attach(pool_name)
        poke_header(pool_name, L.HDR_VERSION, L.LAYOUT_VERSION)


def test_damaged_slot_metadata_is_found_by_recover(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        keep = pool.allocate("keep")
        damaged = pool.allocate("damaged")
        meta = L.HEADER_SIZE + L.EXT_HEADER_BYTES + L.META_BYTES * (damaged & 0xFFFFFFFF) + 4 * L.META_WORD
        pool._segment.mm[meta:meta + 4] = (0x7F << L.STATE_SHIFT).to_bytes(4, "little")
        report = pool.recover()
        assert report.corrupt_slots == 1
        check_invariants(pool)
        assert pool.get(keep) == "keep"
        with pytest.raises(StaleHandle):
            pool.get(damaged)


def test_ten_thousand_random_handles_only_raise_handle_errors(pool_name):
    rng = random.Random(7)
    with FixedPool.create(pool_name, capacity=64) as pool:
        live = {pool.allocate(i): i for i in range(32)}
        for _ in range(10_000):
            h = rng.choice([rng.getrandbits(64), rng.getrandbits(40), rng.randrange(-(2**40), 2**33),
                            (rng.randrange(1, 4) << 32) | rng.randrange(0, 80)])
            if h in live:
                continue
            for op in (pool.get, pool.release, lambda x: pool.set(x, 0)):
                with pytest.raises((InvalidHandle, StaleHandle)):
                    op(h)
        assert {h: pool.get(h) for h in live} == live
        assert len(pool) == 32
        check_invariants(pool)


def test_a_core_never_initialized_raises_instead_of_touching_memory():
    from fastalloc_shm import _core

    core = _core.Core.__new__(_core.Core)
    for call in (lambda: core.get(1 << 32), lambda: core.allocate(1), lambda: core.release(1 << 32), lambda: core.len(),
                 lambda: core.counters(), lambda: core.release_many([]), lambda: core.recover(True, 0.1),
                 lambda: core.slot_states(), lambda: core.set(1 << 32, 1)):
        with pytest.raises(RuntimeError, match="never initialized"):
            call()
    core.close()  # closing what never opened is fine

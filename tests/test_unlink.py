"""unlink(name) leaves nothing of the pool in /dev/shm, whatever its header holds,
and removes nothing of another pool (one created again under the name, or another name)."""

from __future__ import annotations

import os
import re

import pytest

import fastalloc_shm
from fastalloc_shm import FixedPool
from fastalloc_shm import _layout as L
from fastalloc_shm import _segment as seg

SHM = "/dev/shm"


def _entries_of(name: str) -> list[str]:
    """Every /dev/shm entry of pool `name`: its segment, its extents, its semaphores (of any id)."""
    own = re.compile(rf"(sem\.)?fastalloc\.{re.escape(name)}(\.x\d+|\.[0-9a-f]{{16}}\.lock)?")
    return sorted(e for e in os.listdir(SHM) if own.fullmatch(e))


def _semaphores_of(name: str) -> list[str]:
    return [e for e in _entries_of(name) if e.startswith("sem.")]


def _left_closed(name: str) -> None:
    """A pool of `name` that no process has open."""
    FixedPool.create(name, capacity=4, slot_size=64).close()
    assert len(_semaphores_of(name)) == 1


def _overwrite(name: str, offset: int, data: bytes) -> None:
    fd = os.open(f"{SHM}/fastalloc.{name}", os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_unlink_of_a_pool_whose_header_is_garbage_removes_its_semaphore(pool_name):
    _left_closed(pool_name)
    _overwrite(pool_name, 0, b"\xa5" * 256)  # magic, version, kind, pool id: all garbage
    assert fastalloc_shm.unlink(pool_name)
    assert _entries_of(pool_name) == []


def test_unlink_of_a_pool_whose_id_word_is_garbage_removes_its_semaphore(pool_name):
    _left_closed(pool_name)
    _overwrite(pool_name, 8 * L.HDR_POOL_ID, (0x0123456789ABCDEF).to_bytes(8, "little"))  # a valid magic, a wrong id
    assert fastalloc_shm.unlink(pool_name)
    assert _entries_of(pool_name) == []


def test_unlink_of_a_pool_whose_header_was_zeroed_removes_its_semaphore(pool_name):
    _left_closed(pool_name)
    _overwrite(pool_name, 0, bytes(L.HEADER_SIZE))
    assert fastalloc_shm.unlink(pool_name)
    assert _entries_of(pool_name) == []


def test_the_pool_created_again_during_an_unlink_keeps_its_semaphore(pool_name, monkeypatch):
    _left_closed(pool_name)
    _overwrite(pool_name, 0, b"\xa5" * 256)
    unlink_segment_with_id = seg.unlink_segment_with_id
    created = []

    def and_created_again(posix_name):
        result = unlink_segment_with_id(posix_name)
        created.append(FixedPool.create(pool_name, capacity=2, slot_size=64))  # between the removal and the sweep
        return result

    monkeypatch.setattr(seg, "unlink_segment_with_id", and_created_again)
    assert fastalloc_shm.unlink(pool_name)
    monkeypatch.undo()
    with created[0] as again:
        assert len(_semaphores_of(pool_name)) == 1
        other = fastalloc_shm.attach(pool_name)  # its semaphore is there: it attaches and works
        assert other.get(other.allocate("ok")) == "ok"
        other.close()
    assert _entries_of(pool_name) == []
    assert again.name == pool_name


def test_unlink_leaves_other_pools_semaphores_alone(make_name):
    name = make_name()
    neighbours = [f"{name}.b", f"{name}.0123456789abcdef", f"{name}-c"]
    _left_closed(name)
    _overwrite(name, 0, b"\xa5" * 256)
    pools = [FixedPool.create(n, capacity=1, slot_size=64) for n in neighbours]
    try:
        assert fastalloc_shm.unlink(name)
        assert _entries_of(name) == []
        for n in neighbours:
            assert len(_semaphores_of(n)) == 1, n
            with fastalloc_shm.attach(n) as other:
                assert other.capacity == 1
    finally:
        for pool in pools:
            pool.unlink()


def test_unlink_of_an_absent_pool_is_false_and_removes_nothing(pool_name):
    assert fastalloc_shm.unlink(pool_name) is False


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 7])
def test_unlink_of_a_segment_too_short_for_a_header(pool_name, garbage):
    fd = os.open(f"{SHM}/fastalloc.{pool_name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, garbage)
    finally:
        os.close(fd)
    assert fastalloc_shm.unlink(pool_name)
    assert _entries_of(pool_name) == []

"""Tests written to kill mutants that the rest of the suite let live (`make mutants`, tools/mutants.toml).

Each test names the mutant(s) it kills: the C core's list (tools/mutants.py c) or mutmut's
(tools/mutants.py mutmut). tests/MUTANTS.md lists the survivors that are equivalent, with why.
"""

from __future__ import annotations

import os
import struct

import pytest

from fastalloc_shm import FixedPool, ThreadLocalPool
from fastalloc_shm import _layout as L

from .requirements import needs_root


def _word(pool, index: int) -> int:
    return struct.unpack_from("<Q", pool._segment.mm, 8 * index)[0]


def _put_word(pool, index: int, value: int) -> None:
    struct.pack_into("<Q", pool._segment.mm, 8 * index, value)


# ---- C core (tools/mutants.toml) ----


def test_a_repair_left_pending_is_made_by_the_next_locker(pool_name):
    """Kills repair-pending-ignored and repair-pending-ignored-hot-path: a repair owed (the word a
    repair that failed or died leaves set) is made by the next acquisition of the lock, though the
    mutex itself is free (no EOWNERDEAD), on the inline path too."""
    with FixedPool.create(pool_name, capacity=4) as pool:
        kept = pool.allocate("kept")
        before = pool.statistics().recoveries
        _put_word(pool, L.HDR_REPAIR_PENDING, 1)
        h = pool.allocate("after")  # the hot path's trylock succeeds: it must still see the repair owed
        assert _word(pool, L.HDR_REPAIR_PENDING) == 0
        assert pool.statistics().recoveries == before + 1
        assert pool.get(kept) == "kept" and pool.get(h) == "after"  # a live process's slots survive the repair
        _put_word(pool, L.HDR_REPAIR_PENDING, 1)
        pool.release(h)  # the release path's lock too
        assert _word(pool, L.HDR_REPAIR_PENDING) == 0
        assert pool.statistics().recoveries == before + 2
        pool.release(kept)


def test_a_magazine_never_drains_a_slot_a_recovery_gave_away(pool_name):
    """Kills drain-any-owner: a recovery that judged this process's incarnation dead gave its cached
    slots away and another process allocated them; this process's close() (its drain) must skip
    them, or it frees slots that hold another process's live values."""
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=4) as doomed:
        doomed.allocate("mine")
        assert doomed.cached() == 3
        words = memoryview(doomed._segment.mm).cast("I")
        incarnation = L.CLIENT_TABLE_OFFSET // 4 + doomed._core.entry * L.CLIENT_BYTES // 4 + 1
        real = words[incarnation]
        words[incarnation] = real ^ 1  # its slots now name an incarnation that is gone: a recovery judges them dead
        other = ThreadLocalPool.attach(pool_name)
        try:
            report = other.recover(orphan_policy="reclaim")
            words[incarnation] = real
            words.release()
            assert (report.cached_returned, report.orphans_reclaimed) == (3, 1), report
            taken = {}
            while (h := other.try_allocate(f"theirs {len(taken)}")) is not None:
                taken[h] = f"theirs {len(taken)}"
            assert len(taken) == 8  # every slot, the doomed magazine's three included
            doomed.close()  # drains its magazine: the three indices are no longer its own
            assert {h: other.get(h) for h in taken} == taken
            assert other.try_allocate("none left") is None
            other.release_many(list(taken))
        finally:
            other.close()


# ---- mutmut: fastalloc_shm/_trust.py ----


def test_trusted_uids_accepts_uid_0_and_refuses_what_is_not_a_uid(monkeypatch):
    from fastalloc_shm import _trust
    from fastalloc_shm.errors import ConfigError

    monkeypatch.delenv(_trust.ENV, raising=False)
    assert _trust.trusted_uids([0, 7]) == frozenset({os.geteuid(), 0, 7})
    assert _trust.trusted_uids(None) == frozenset({os.geteuid(), 0})
    for bad in (True, "1", -1, 1.0):
        with pytest.raises(ConfigError, match=r"trusted_uids: expected uids \(ints >= 0\), got"):
            _trust.trusted_uids([bad])


def test_the_environment_lists_uids_separated_by_commas(monkeypatch):
    from fastalloc_shm import _trust
    from fastalloc_shm.errors import ConfigError

    monkeypatch.setenv(_trust.ENV, " 998,1001, ")
    assert _trust.trusted_uids() == frozenset({os.geteuid(), 0, 998, 1001})
    monkeypatch.setenv(_trust.ENV, "998;1001")
    with pytest.raises(ConfigError, match=_trust.ENV):
        _trust.trusted_uids()


@needs_root("to give a file to another uid")
def test_the_owner_checks_name_the_object_the_owner_and_the_way_to_trust_it(tmp_path):
    from fastalloc_shm import _trust
    from fastalloc_shm.errors import FastallocError

    path = tmp_path / "object"
    path.write_text("")
    stranger = 4242424  # no passwd entry: the message names the uid alone
    os.chown(path, stranger, -1)
    mine = frozenset({os.geteuid()})
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(FastallocError) as by_fd:
            _trust.check_fd(fd, str(path), "pool 'x'", mine)
    finally:
        os.close(fd)
    with pytest.raises(FastallocError) as by_path:
        _trust.check_path(str(path), "pool 'x': lock", mine)
    for raised, what in ((by_fd, "pool 'x'"), (by_path, "pool 'x': lock")):
        text = str(raised.value)
        assert text.startswith(f"{what}: {path} is owned by uid {stranger}, not by this user"), text
        assert f"trusted_uids=[{stranger}]" in text and f"{_trust.ENV}={stranger}" in text
    _trust.check_path(str(path), "pool 'x'", mine | {stranger})  # trusted: no error
    _trust.check_path(str(tmp_path / "missing"), "pool 'x'", mine)  # missing: open says so
    os.chown(path, 65534, -1)
    with pytest.raises(FastallocError, match=r"owned by uid 65534 \(nobody\)"):
        _trust.check_path(str(path), "pool 'x'", mine)


# ---- mutmut: fastalloc_shm/_segment.py ----


def test_a_segment_closes_once_and_says_so(pool_name):
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    seg = _segment.create_segment(posix, 4096, 0o600, f"pool {pool_name!r}")
    try:
        fd = seg.fd
        seg.close()
        assert seg.mm is None and seg.fd == -1
        with pytest.raises(OSError):
            os.fstat(fd)  # the descriptor itself is closed
        seg.close()  # twice: nothing left to close
    finally:
        os.unlink(_segment.segment_path(posix))


def test_no_room_says_how_much_and_where_to_get_more():
    from fastalloc_shm import _segment
    from fastalloc_shm.errors import SharedMemoryFull

    error = _segment._no_room("pool 'x'", 123456)
    assert isinstance(error, SharedMemoryFull)
    text = str(error)
    assert text.startswith("pool 'x' needs 123,456 bytes but /dev/shm has ") and " free; free space" in text
    assert "docker --shm-size" in text and "emptyDir with medium: Memory" in text


def test_open_segment_and_semaphore_name_what_is_missing(pool_name):
    from fastalloc_shm import _segment
    from fastalloc_shm.errors import IncompatiblePool, PoolNotFound

    posix = f"/fastalloc.{pool_name}"
    with pytest.raises(PoolNotFound, match=rf"pool 'x': no segment {posix} \(create the pool first"):
        _segment.open_segment(posix, "pool 'x'", frozenset({os.geteuid()}))
    with pytest.raises(IncompatiblePool, match=rf"pool 'x': its lock {posix} is missing; unlink the pool"):
        _segment.open_semaphore(posix, "pool 'x'", frozenset({os.geteuid()}))


@needs_root("to give a segment to another uid")
def test_open_segment_refuses_a_stranger_and_closes_what_it_opened(pool_name):
    from fastalloc_shm import _segment
    from fastalloc_shm.errors import FastallocError

    posix = f"/fastalloc.{pool_name}"
    path = _segment.segment_path(posix)
    seg = _segment.create_segment(posix, 4096, 0o644, "x")
    seg.close()
    os.chown(path, 4242424, -1)
    try:
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(FastallocError, match=rf"^pool 'x': {path} is owned by uid 4242424"):
            _segment.open_segment(posix, "pool 'x'", frozenset({os.geteuid()}))
        assert len(os.listdir("/proc/self/fd")) == before  # the fd it opened is closed
    finally:
        os.unlink(path)


def test_pool_id_now_reads_the_id_word_of_whatever_is_there(pool_name):
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    path = _segment.segment_path(posix)
    assert _segment.pool_id_now(posix) is None  # nothing there
    words = [0] * (L.HDR_POOL_ID + 1)
    words[L.HDR_POOL_ID] = 2**63 + 5  # an id with the top bit set is still an unsigned word
    try:
        with open(path, "wb") as f:
            f.write(struct.pack(f"<{len(words)}Q", *words))
        assert _segment.pool_id_now(posix) == 2**63 + 5
        with open(path, "r+b") as f:
            f.truncate(8 * L.HDR_POOL_ID)  # too short to hold the word
        assert _segment.pool_id_now(posix) is None
    finally:
        os.unlink(path)
    target = f"/dev/shm/{pool_name}-target"
    with open(target, "wb") as f:
        f.write(struct.pack(f"<{len(words)}Q", *words))
    os.symlink(target, path)
    try:
        assert _segment.pool_id_now(posix) is None  # a symlink is not followed
    finally:
        os.unlink(path)
        os.unlink(target)


def test_create_semaphore_replaces_a_stale_one_with_a_fresh_count(pool_name):
    import posix_ipc

    from fastalloc_shm import _names, _segment

    posix = f"/fastalloc.{pool_name}"
    stale = posix_ipc.Semaphore(posix, posix_ipc.O_CREX, mode=0o644, initial_value=99)  # left by a creator that died
    stale.close()
    sem = _segment.create_semaphore(posix, 0o600, 3)
    try:
        assert sem.value == 3
        assert os.stat(_names.semaphore_path(posix)).st_mode & 0o777 == 0o600
    finally:
        sem.close()
        posix_ipc.unlink_semaphore(posix)
    sem = _segment.create_semaphore(posix, 0o640, 5)  # none there: created at once
    try:
        assert sem.value == 5 and os.stat(_names.semaphore_path(posix)).st_mode & 0o777 == 0o640
    finally:
        sem.close()
        posix_ipc.unlink_semaphore(posix)

"""Tests written to kill mutants that the rest of the suite let live (`make mutants`, tools/mutants.toml).

Each test names the mutant(s) it kills: the C core's list (tools/mutants.py c) or mutmut's
(tools/mutants.py mutmut). tests/MUTANTS.md lists the survivors that are equivalent, with why.
"""

from __future__ import annotations

import os
import struct

import msgspec
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
    """Kills _segment.py's _no_room 4 (its last line wrapped in XX): the message is asserted whole."""
    import re

    from fastalloc_shm import _segment
    from fastalloc_shm.errors import SharedMemoryFull

    error = _segment._no_room("pool 'x'", 123456)
    assert isinstance(error, SharedMemoryFull)
    assert re.fullmatch(r"pool 'x' needs 123,456 bytes but /dev/shm has [\d,]+ free; free space or give the "
                        r"container more \(docker --shm-size, compose shm_size, a Kubernetes emptyDir with medium: "
                        r"Memory\)", str(error)), str(error)


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


def _in_a_child(work) -> str:
    """Run `work()` in a forked child (which runs this process's code, mutants included); what it returned
    or raised, as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            text = f"returned {work()!r}"
        except BaseException as exc:  # noqa: BLE001 - the child reports whatever ended it
            text = f"{type(exc).__name__}: {exc}"
        os.write(write, text.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_still_named_is_false_once_the_name_is_unlinked_or_replaced(pool_name):
    """Kills _segment.py's still_named 5 (an unlinked name answered True)."""
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    first = _segment.create_segment(posix, 4096, 0o600, "x")
    try:
        assert _segment.still_named(first)
        _segment.unlink_segment(posix)
        assert not _segment.still_named(first)  # no file under the name now
        second = _segment.create_segment(posix, 4096, 0o600, "x")
        try:
            assert _segment.still_named(second) and not _segment.still_named(first)  # another file under it
        finally:
            second.close()
            _segment.unlink_segment(posix)
    finally:
        first.close()


@needs_root("to open a segment and a semaphore as a user they do not admit")
def test_a_user_who_may_not_open_the_segment_or_its_lock_is_told_so(pool_name):
    """Kills _segment.py's open_segment 4 and open_semaphore 4 (the PermissionsError messages made None):
    a process of uid 65534 opens a pool whose segment and semaphore only root may open."""
    import posix_ipc

    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    seg = _segment.create_segment(posix, 4096, 0o600, "x")
    sem = _segment.create_semaphore(posix, 0o600, 1)
    trusted = frozenset({0})

    def as_nobody(opener):
        def work():
            os.setgid(65534)
            os.setuid(65534)
            return opener(posix, "pool 'x'", trusted)
        return _in_a_child(work)

    try:
        assert as_nobody(_segment.open_segment).startswith(
            f"PoolNotFound: pool 'x': {posix} exists but this user may not open it (")
        assert as_nobody(_segment.open_semaphore).startswith("PoolNotFound: pool 'x': this user may not open its lock (")
    finally:
        seg.close()
        _segment.unlink_segment(posix)
        sem.close()
        posix_ipc.unlink_semaphore(posix)


def test_a_segment_too_large_to_map_is_incompatible_and_its_fd_is_closed(pool_name):
    """Kills _segment.py's open_segment 23 (os.close(None) on a failed mapping) and 24 (its message
    made None): a segment of 2**60 bytes (sparse in tmpfs) cannot be mapped in any address space."""
    from fastalloc_shm import _segment
    from fastalloc_shm.errors import IncompatiblePool

    posix = f"/fastalloc.{pool_name}"
    path = _segment.segment_path(posix)
    with open(path, "wb") as f:
        f.truncate(2**60)
    try:
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(IncompatiblePool) as raised:
            _segment.open_segment(posix, "pool 'x'", frozenset({os.geteuid()}))
        assert str(raised.value).startswith(f"pool 'x': cannot map {posix} ([Errno ")
        assert sorted(os.listdir("/proc/self/fd")) == before  # the fd it opened is closed
    finally:
        os.unlink(path)


def test_a_segment_on_fd_0_is_closed_too(pool_name):
    """Kills _segment.py's Segment.close 3 and 4 (`fd >= 0` made `fd > 0`, `fd >= 1`): in a process
    whose stdin is closed (a daemon's, say) a segment gets fd 0, and close() closes it."""
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"

    def work():
        os.close(0)
        seg = _segment.create_segment(posix, 4096, 0o600, "x")
        _segment.unlink_segment(posix)
        fd = seg.fd
        seg.close()
        try:
            os.fstat(0)
        except OSError:
            return fd, "fd 0 closed"
        return fd, "fd 0 open"

    try:
        assert _in_a_child(work) == "returned (0, 'fd 0 closed')"
    finally:
        _segment.unlink_segment(posix)


def test_a_segment_larger_than_dev_shm_is_refused_before_anything_is_made(pool_name):
    """Kills _segment.py's create_segment 2-5 (what or size missing from the refusal) and 13 (the
    PoolExistsError message made None)."""
    from fastalloc_shm import _segment
    from fastalloc_shm.errors import PoolExistsError, SharedMemoryFull

    posix = f"/fastalloc.{pool_name}"
    with pytest.raises(SharedMemoryFull) as raised:
        _segment.create_segment(posix, 2**60, 0o600, "pool 'x'")
    assert str(raised.value).startswith("pool 'x' needs 1,152,921,504,606,846,976 bytes but /dev/shm has ")
    assert not os.path.exists(_segment.segment_path(posix))
    seg = _segment.create_segment(posix, 4096, 0o600, "pool 'x'")
    try:
        with pytest.raises(PoolExistsError) as raised:
            _segment.create_segment(posix, 4096, 0o600, "pool 'x'")
        assert str(raised.value) == f"pool 'x': {posix} exists already"
    finally:
        seg.close()
        _segment.unlink_segment(posix)


def test_a_segment_the_file_size_limit_refuses_is_removed_and_reported_as_no_room(pool_name):
    """Kills _segment.py's create_segment 36-42: when sizing the new segment fails (here RLIMIT_FSIZE below
    its size, so ftruncate fails with EFBIG), its fd is closed, its name removed, and the error is
    SharedMemoryFull naming what needed how much."""
    import resource
    import signal

    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"

    def work():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        fds = sorted(os.listdir("/proc/self/fd"))
        try:
            _segment.create_segment(posix, 65536, 0o600, "pool 'x'")
        except Exception as exc:
            left = os.path.exists(_segment.segment_path(posix))
            return type(exc).__name__, str(exc).split(" but ")[0], left, sorted(os.listdir("/proc/self/fd")) == fds
        return "created"

    try:
        assert _in_a_child(work) == "returned ('SharedMemoryFull', \"pool 'x' needs 65,536 bytes\", False, True)"
    finally:
        _segment.unlink_segment(posix)


def test_segment_path_strips_only_the_leading_slash():
    """Kills _segment.py's segment_path 7 (lstrip("XX/XX"): a name's leading X's stripped too)."""
    from fastalloc_shm import _segment

    assert _segment.segment_path("/XX.y") == "/dev/shm/XX.y"


def test_unlinking_a_missing_segment_says_there_was_none(pool_name):
    """Kills _segment.py's _unlink_quietly 3 (a missing name answered True)."""
    from fastalloc_shm import _segment

    assert _segment.unlink_segment(f"/fastalloc.{pool_name}") is False
    assert _segment.unlink_segment_with_id(f"/fastalloc.{pool_name}") == (False, None)


def test_unlink_with_id_removes_a_symlink_by_name_and_never_follows_it(pool_name):
    """Kills _segment.py's unlink_segment_with_id 8, 9 (O_NOFOLLOW lost: the link is followed, its target's
    inode is not the name's, nothing is removed) and 11 (the name not removed on that branch)."""
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    target = f"/dev/shm/{pool_name}-target"
    words = [0] * (L.HDR_POOL_ID + 1)
    words[L.HDR_MAGIC], words[L.HDR_POOL_ID] = L.MAGIC, 77
    with open(target, "wb") as f:
        f.write(struct.pack(f"<{len(words)}Q", *words))
    os.symlink(target, _segment.segment_path(posix))
    try:
        assert _segment.unlink_segment_with_id(posix) == (True, None)
        assert not os.path.lexists(_segment.segment_path(posix)) and os.path.exists(target)
    finally:
        if os.path.lexists(_segment.segment_path(posix)):
            os.unlink(_segment.segment_path(posix))
        os.unlink(target)


def _unlink_with_id_while_the_name_changes(posix, fifo, other, change):
    """unlink_segment_with_id(posix) with a FIFO under the name: its open waits in the kernel for a
    writer (wait_for_partner), meanwhile the name is `change`d ("replaced" by `other`, or "removed"),
    then a writer lets the open return. What it returned."""
    import threading

    from fastalloc_shm import _segment

    path = _segment.segment_path(posix)
    os.mkfifo(fifo)
    os.link(fifo, path)
    result = []
    thread = threading.Thread(target=lambda: result.append(_segment.unlink_segment_with_id(posix)))
    thread.start()
    _wait_until(lambda: open(f"/proc/self/task/{thread.native_id}/wchan").read() == "wait_for_partner",
                "the open waits for a writer")
    if change == "replaced":
        with open(other, "wb") as f:
            f.write(b"another file")
        os.replace(other, path)
    else:
        os.unlink(path)
    os.close(os.open(fifo, os.O_WRONLY))  # a reader waits: this returns at once, and so does its open
    thread.join(30)
    return result


def test_unlink_with_id_removes_nothing_when_the_name_changes_under_it(pool_name):
    """Kills _segment.py's unlink_segment_with_id 16 and 17 (a name replaced, or removed, between the
    function's open and its lstat answered "removed"), the window held open by a FIFO under the name."""
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    path = _segment.segment_path(posix)
    fifo, other = f"/dev/shm/{pool_name}-fifo", f"/dev/shm/{pool_name}-other"
    for change in ("replaced", "removed"):
        try:
            assert _unlink_with_id_while_the_name_changes(posix, fifo, other, change) == [(False, None)], change
            assert os.path.exists(path) == (change == "replaced")  # the file now under the name is left alone
        finally:
            for leftover in (path, fifo, other):
                if os.path.lexists(leftover):
                    os.unlink(leftover)


def test_unlink_with_id_reads_an_id_only_under_the_magic_and_only_whole(pool_name):
    """Kills _segment.py's _pool_id 16 (a header too short for the id word read past its end) and 24
    (the magic not checked: a garbage header's id word taken for a pool id)."""
    from fastalloc_shm import _segment

    posix = f"/fastalloc.{pool_name}"
    path = _segment.segment_path(posix)
    cases = [(L.MAGIC, 77, 8 * (L.HDR_POOL_ID + 1), 77),  # a header: its id
             (L.MAGIC + 1, 77, 8 * (L.HDR_POOL_ID + 1), None),  # no magic: no id
             (L.MAGIC, 77, 8 * L.HDR_POOL_ID, None)]  # too short to hold the id word
    for magic, pool_id, size, expected in cases:
        words = [0] * (L.HDR_POOL_ID + 1)
        words[L.HDR_MAGIC], words[L.HDR_POOL_ID] = magic, pool_id
        with open(path, "wb") as f:
            f.write(struct.pack(f"<{len(words)}Q", *words)[:size])
        assert _segment.unlink_segment_with_id(posix) == (True, expected), (magic, size)


def test_extent_names_on_disk_are_the_pools_numbered_extents_only(pool_name):
    """Kills _segment.py's extent_names_on_disk 6 (`and` made `or`: a name with the prefix but no number
    taken for an extent)."""
    from fastalloc_shm import _segment

    made = [f"/dev/shm/fastalloc.{pool_name}.x3", f"/dev/shm/fastalloc.{pool_name}.xtra"]
    for path in made:
        open(path, "wb").close()
    try:
        assert _segment.extent_names_on_disk(pool_name) == [f"/fastalloc.{pool_name}.x3"]
    finally:
        for path in made:
            os.unlink(path)


# ---- mutmut: fastalloc_shm/handle.py ----


def test_a_bad_handle_or_part_says_what_it_got_and_the_range(pool_name):
    """Kills handle.py's pack 8, pack 16 and unpack 9 (each message made None): InvalidHandle names
    the value given and the range it must be in, for a handle a real pool issued and then made bad."""
    from fastalloc_shm import InvalidHandle
    from fastalloc_shm.handle import MAX_GENERATION, pack, unpack

    with FixedPool.create(pool_name, capacity=2) as pool:
        h = pool.allocate("x")
        index, generation = unpack(h)
        assert pack(index, generation) == h
        with pytest.raises(InvalidHandle) as by_index:
            pack(-1, generation)
        assert str(by_index.value) == f"index -1 is not an int in 0..{2**32 - 1}"
        with pytest.raises(InvalidHandle) as by_generation:
            pack(index, True)
        assert str(by_generation.value) == f"generation True is not an int in 1..{MAX_GENERATION}"
        with pytest.raises(InvalidHandle) as by_handle:
            unpack(index)  # generation 0: never issued
        assert str(by_handle.value) == (
            f"{index!r} is not a handle (an int whose generation, its high 32 bits, is in 1..{MAX_GENERATION})")
        pool.release(h)


# ---- mutmut: fastalloc_shm/config.py ----


def _grow_by_nothing(capacity):
    return 0


def _grow_by_half_a_slot(capacity):
    return 1.5


def _grow_by_true(capacity):
    return True


def test_the_builder_sets_every_field_it_names_and_a_pool_keeps_them(pool_name):
    """Kills config.py's PoolConfigBuilder lock_timeout 1-6, orphan_policy 1-6, batch_size 1-6,
    mode 1-6, huge_pages 1-7, pre_initialize 1 (each setter's name or value lost, or its default
    flipped) and build 5 (the message): what the builder builds is the config given field by field,
    and a pool created with it records the same."""
    from fastalloc_shm import ConfigError, PoolConfig

    built = (PoolConfig.builder().capacity(3).slot_size(64).lock_timeout(2.5).orphan_policy("reclaim")
             .batch_size(7).mode(0o640).pre_initialize().huge_pages().build())
    assert built == PoolConfig(capacity=3, slot_size=64, lock_timeout=2.5, orphan_policy="reclaim", batch_size=7,
                               mode=0o640, pre_initialize=True, huge_pages=True)
    plain = built.with_overrides(huge_pages=False, pre_initialize=False)  # no huge pages on every machine
    with FixedPool.create(pool_name, config=plain) as pool:
        assert pool.config == plain
        assert (pool.config.lock_timeout, pool.config.orphan_policy, pool.config.batch_size, pool.config.mode) == (
            2.5, "reclaim", 7, 0o640)
    with pytest.raises(ConfigError) as raised:
        PoolConfig.builder().slot_size(8).build()
    assert str(raised.value) == "capacity: required (call .capacity(n) before .build())"


def test_growth_strategies_refuse_what_is_not_a_number_of_their_kind():
    """Kills config.py's GrowthStrategy linear 2 and exponential 3 (`or` made `and`: a float amount
    or a factor of another type accepted, or a TypeError instead of ConfigError)."""
    from fastalloc_shm import ConfigError, GrowthStrategy

    for bad in (1.5, True, "2"):
        with pytest.raises(ConfigError, match=r"^growth_strategy: linear amount must be an int >= 1, got "):
            GrowthStrategy.linear(bad)
    for bad in ("3", [3], True):
        with pytest.raises(ConfigError, match=r"^growth_strategy: exponential factor must be a finite number > 1"):
            GrowthStrategy.exponential(bad)
    assert GrowthStrategy.linear(2).amount(10) == 2 and GrowthStrategy.exponential(3).amount(10) == 20


def test_a_custom_strategy_is_named_in_its_errors_and_may_add_nothing(pool_name):
    """Kills config.py's GrowthStrategy custom 5, 8, 15 (its label; its value made None or 1.0) and
    amount 21, 23, 24, 28, 31, 32, 34, 36, 37 (the messages and labels of a custom function that cannot
    be had or returns a non-int; 0, "do not grow", refused)."""
    from fastalloc_shm import ConfigError, GrowingPool, GrowthStrategy

    with pytest.raises(ConfigError, match=r"^growth_strategy: 'no_such_module_x:f' is not|^growth_strategy: cannot"):
        GrowthStrategy.custom("no_such_module_x:f")
    with pytest.raises(ConfigError, match=r"^growth_strategy: 42 is not callable"):
        GrowthStrategy.custom(42)
    strategy = GrowthStrategy.custom(_grow_by_nothing)
    assert strategy.value == 0.0 and strategy.to_record()["value"] == 0.0
    assert strategy == GrowthStrategy.from_record(strategy.to_record())
    assert strategy.amount(5) == 0
    with GrowingPool.create(pool_name, capacity=1, max_capacity=4, growth_strategy=strategy) as pool:
        pool.allocate("one")
        assert pool.try_allocate("two") is None and pool.capacity == 1  # 0 slots to add: full, not grown, no error
    with pytest.raises(ConfigError) as unrecorded:
        GrowthStrategy("custom", 0.0, None).amount(5)
    assert str(unrecorded.value) == (
        "growth_strategy: the pool's custom growth function could not be recorded by import path, "
        "so this process cannot grow it; give it as a module-level function or 'module:qualname'")
    with pytest.raises(ConfigError, match=r"^growth_strategy: cannot import 'no_such_module_x:f'"):
        GrowthStrategy.from_record({"kind": "custom", "value": 0.0, "fn": "no_such_module_x:f"}).amount(5)
    for fn, got in ((_grow_by_half_a_slot, "1.5"), (_grow_by_true, "True")):
        with pytest.raises(ConfigError) as raised:
            GrowthStrategy.custom(fn).amount(5)
        assert str(raised.value) == f"growth_strategy: custom function returned {got}; it must return an int >= 0"


# ---- mutmut: fastalloc_shm/_growth.py ----


def _grow_by_one(capacity):
    return 1


@needs_root("to give a growing pool's segment to another uid")
def test_a_custom_growth_function_runs_only_while_the_pools_owner_is_trusted(make_name):
    """Kills _growth.py's _add_extent 4-9 (the owner check before a custom growth function runs: skipped,
    made for the built-in strategies instead, or under another field's name): a pool whose segment
    passes to an untrusted uid after attach no longer calls its custom function, and says why; a built-in
    strategy calls nothing, so it still grows."""
    from fastalloc_shm import FastallocError, GrowingPool, GrowthStrategy, _segment

    custom, linear = make_name(), make_name()
    with GrowingPool.create(custom, capacity=1, max_capacity=8, growth_strategy=GrowthStrategy.custom(_grow_by_one)) as pool:
        pool.allocate("one")
        pool.allocate("two")  # grown by one slot: the owner, this uid, is trusted
        assert pool.capacity == 2
        os.chown(_segment.segment_path(f"/fastalloc.{custom}"), 4242424, -1)
        with pytest.raises(FastallocError) as raised:
            pool.allocate("three")
        assert str(raised.value).startswith("growth_strategy: not imported or called, the pool's owner is not trusted: ")
        assert pool.capacity == 2
    with GrowingPool.create(linear, capacity=1, max_capacity=4, growth_strategy=GrowthStrategy.linear(1)) as pool:
        os.chown(_segment.segment_path(f"/fastalloc.{linear}"), 4242424, -1)
        pool.allocate("one")
        pool.allocate("two")
        assert pool.capacity == 2


def test_the_fork_hook_closes_the_growth_fds_of_the_other_threads_only(pool_name):
    """Kills _growth.py's _after_fork_in_child 1-4 (mutmut sees no test reach it: it runs in forked
    children). The hook is run here as in a child forked by this thread while another thread grows:
    the other thread's growth fd is closed and forgotten, this thread's is kept."""
    import threading

    from fastalloc_shm import GrowingPool, _growth, _segment

    with GrowingPool.create(pool_name, capacity=1, max_capacity=4):
        path = _segment.segment_path(f"/fastalloc.{pool_name}")
        opened, done = threading.Event(), threading.Event()
        theirs = []

        def grow_elsewhere():
            theirs.append(_growth._open_growth_fd(path))
            opened.set()
            done.wait(10)

        thread = threading.Thread(target=grow_elsewhere)
        thread.start()
        assert opened.wait(10)
        mine = _growth._open_growth_fd(path)
        try:
            _growth._before_fork()
            try:
                _growth._after_fork_in_child()
            finally:
                if _growth._in_flight_lock.locked():  # a hook that raised left it held
                    _growth._in_flight_lock.release()
            assert set(_growth._in_flight) == {mine}
            os.fstat(mine)  # still open
            with pytest.raises(OSError):
                os.fstat(theirs[0])
        finally:
            done.set()
            thread.join()
            _growth._in_flight.pop(theirs[0], None)
            if mine in _growth._in_flight:
                _growth._close_growth_fd(mine)


def test_first_difference_names_both_values():
    """Kills config.py's PoolConfig first_difference 4 (the other config's value read under None)."""
    from fastalloc_shm import PoolConfig

    assert PoolConfig(capacity=4).first_difference(PoolConfig(capacity=8)) == "capacity=4, not 8"
    assert PoolConfig(capacity=4).first_difference(PoolConfig(capacity=4)) is None


# ---- mutmut: fastalloc_shm/_header.py ----


def _half_created(pool_name, cfg):
    """A pool segment as a creator leaves it when it dies after writing the header, before marking it
    ready (nobody holds its creator byte); its path, and the segment."""
    from fastalloc_shm import _header, _names
    from fastalloc_shm import _segment as seg

    posix = _names.segment(pool_name)
    size = L.main_segment_size(cfg.capacity, L.stride_for(cfg.slot_size, cfg.alignment), cfg.alignment)
    segment = seg.create_segment(posix, size, 0o600, "test")
    _header.write_header(segment, cfg, _header.encode_config(cfg), L.KIND_FIXED, 7, 0)
    return seg.segment_path(posix), segment


def test_an_attacher_of_a_pool_whose_creator_died_half_way_names_it_and_its_pid(pool_name):
    """Kills _header.py's open_ready 1, 20, 23-27, 29, 31 (the pool's name in messages made None; the
    creator judged alive, or its byte not asked about; the message lost) and creator_pid 1, 2, 4-8
    (the pid read from a mapped header lost, or read through a broken view): attach of a pool whose
    creator died before marking it ready raises HalfCreated naming the pool and the creator's pid."""
    from fastalloc_shm import PoolConfig, _header

    path, segment = _half_created(pool_name, PoolConfig(capacity=2))
    try:
        assert _header.creator_pid(segment) == os.getpid()
        with pytest.raises(_header.HalfCreated) as raised:
            FixedPool.attach(pool_name)
        assert str(raised.value) == (f"pool {pool_name!r}: its creator (pid {os.getpid()}) died before finishing; "
                                     "unlink it and create it again")
    finally:
        segment.close()
        os.unlink(path)
    assert _header.creator_pid(segment) == 0  # closed: nothing mapped to read


def test_creator_pid_reads_a_whole_header_only(pool_name):
    """Kills _header.py's creator_pid 1, 3 and 4 and open_ready 22: a segment shorter than the header
    has no pid to read (0, though its bytes there say otherwise); one of exactly the header's size
    has, and its creator, gone, is judged dead at once (HalfCreated, not a wait of READY_TIMEOUT)."""
    from fastalloc_shm import _header, _names
    from fastalloc_shm import _segment as seg

    posix = _names.segment(pool_name)
    for size, expected in ((L.HEADER_SIZE - 8, 0), (L.HEADER_SIZE, 4321)):
        segment = seg.create_segment(posix, size, 0o600, "test")
        try:
            struct.pack_into("<Q", segment.mm, 8 * L.HDR_CREATOR_PID, 4321)
            assert _header.creator_pid(segment) == expected, size
            if size == L.HEADER_SIZE:  # a header and nothing more, never marked ready, its creator gone
                struct.pack_into("<Q", segment.mm, 8 * L.HDR_MAGIC, L.MAGIC)
                struct.pack_into("<Q", segment.mm, 8 * L.HDR_VERSION, L.LAYOUT_VERSION)
                with pytest.raises(_header.HalfCreated, match=r"its creator \(pid 4321\) died"):
                    FixedPool.attach(pool_name)
        finally:
            segment.close()
            os.unlink(seg.segment_path(posix))


def test_attach_waits_for_a_live_creator_to_mark_its_pool_ready(pool_name):
    """Kills _header.py's open_ready 4, 5, 21, 30, 34 (no deadline, or one already past; a live
    creator judged dead; no sleep): an attacher that finds the header not ready while its creator
    lives (its creator byte held) waits, then attaches."""
    import threading
    import time

    with FixedPool.create(pool_name, capacity=2) as pool:
        h = pool.allocate("ready")
        _put_word(pool, L.HDR_READY, 0)  # as before the creator's last step; its creator byte is still held
        marker = threading.Timer(0.3, _put_word, (pool, L.HDR_READY, 1))
        started = time.monotonic()
        marker.start()
        try:
            with FixedPool.attach(pool_name) as other:
                assert time.monotonic() - started >= 0.25
                assert other.get(h) == "ready"
        finally:
            marker.join()
        pool.release(h)


def test_attach_names_the_pool_in_what_it_refuses(pool_name):
    """Kills _header.py's open_ready 9 and 16 (the pool's name not passed to open_segment or
    check_header): a missing pool and a segment that is no pool are refused naming the pool."""
    from fastalloc_shm.errors import IncompatiblePool, PoolNotFound

    with pytest.raises(PoolNotFound) as missing:
        FixedPool.attach(pool_name)
    assert str(missing.value).startswith(f"pool {pool_name!r}: no segment ")
    with FixedPool.create(pool_name, capacity=2) as pool:
        _put_word(pool, L.HDR_MAGIC, L.MAGIC ^ 1)
        try:
            with pytest.raises(IncompatiblePool) as foreign:
                FixedPool.attach(pool_name)
        finally:
            _put_word(pool, L.HDR_MAGIC, L.MAGIC)
    assert str(foreign.value).startswith(f"pool {pool_name!r}: /") and "is not a fastalloc pool (bad magic)" in str(
        foreign.value)


def test_attach_gives_up_on_a_creator_that_never_finishes(pool_name, monkeypatch):
    """Kills _header.py's open_ready 33 (its message made None): a header never marked ready by a
    creator that lives is refused after READY_TIMEOUT (shortened here: the wait itself, not its
    length, is under test), saying so."""
    from fastalloc_shm import _header
    from fastalloc_shm.errors import IncompatiblePool

    monkeypatch.setattr(_header, "READY_TIMEOUT", 0.1)
    with FixedPool.create(pool_name, capacity=2) as pool:
        _put_word(pool, L.HDR_READY, 0)
        try:
            with pytest.raises(IncompatiblePool) as stuck:
                FixedPool.attach(pool_name)
        finally:
            _put_word(pool, L.HDR_READY, 1)
    assert str(stuck.value) == f"pool {pool_name!r}: not ready after 0.1 s; is its creator stuck?"


def test_a_config_record_keeps_its_callables_as_paths_and_refuses_bad_ones(pool_name):
    """Kills config.py's PoolConfig from_record 9-14, 16, 18-26, 30, 34, 39-41, 45, 48, 52, 53, 56, 60,
    61 and to_record 1 (no reset recorded as "", not None): an
    attacher reads the creator's initializer and reset back as the same import paths, never importing
    them (a record is data); a path that is not 'module:qualname', or a pre_initialize that is not a
    bool, is refused naming the field, and the record's other fields are checked first."""
    from fastalloc_shm import ConfigError, PoolConfig

    cfg = PoolConfig(capacity=2, initializer="builtins:dict", reset=("builtins:dict", "builtins:len"))
    with FixedPool.create(pool_name, config=cfg) as pool, FixedPool.attach(pool_name) as other:
        assert other.config == cfg and pool.config == cfg
        assert (other.config.initializer, other.config.reset) == ("builtins:dict", ("builtins:dict", "builtins:len"))
    record = cfg.to_record()
    unimportable = dict(record, initializer="no_such_module_x:make", reset=["no_such_module_x:a", "no_such_module_x:b"])
    back = PoolConfig.from_record(unimportable)
    assert (back.initializer, back.reset) == ("no_such_module_x:make", ("no_such_module_x:a", "no_such_module_x:b"))
    assert PoolConfig.from_record(dict(record, reset=["builtins:dict", None])).reset is None
    assert PoolConfig(capacity=2).to_record()["reset"] is None  # no reset: recorded as none, not as ""
    for field_name, bad, shown in (("initializer", "no_colon", "'no_colon'"), ("initializer", 42, "42"),
                                   ("reset", ["builtins:dict", "no_colon"], "'no_colon'"),
                                   ("reset", ["builtins:dict", 7], "7")):
        with pytest.raises(ConfigError) as raised:
            PoolConfig.from_record(dict(record, **{field_name: bad}))
        assert str(raised.value) == f"{field_name}: {shown} is not of the form 'module:qualname'"
    with pytest.raises(ConfigError) as raised:
        PoolConfig.from_record(dict(record, pre_initialize="yes"))
    assert str(raised.value) == "pre_initialize: expected a bool, got 'yes'"
    with pytest.raises(ConfigError, match=r"^huge_pages: expected a bool"):
        PoolConfig.from_record(dict(record, pre_initialize="yes", huge_pages="no"))


def _refusal(pool_name, words):
    """What attach says of a real pool (its creator alive) whose header words are set to `words`."""
    with FixedPool.create(pool_name, capacity=2) as pool:
        kept = {w: _word(pool, w) for w in words}
        for w, value in words.items():
            _put_word(pool, w, value)
        try:
            with pytest.raises(Exception) as raised:
                FixedPool.attach(pool_name)
        finally:
            for w, value in kept.items():
                _put_word(pool, w, value)
    return raised


def test_check_header_tells_a_pool_being_made_from_a_damaged_one(pool_name, monkeypatch):
    """Kills _header.py's check_header 12-16 (which header is one being created: magic 0 and not
    ready only; words read unsigned), 21, 22 (the version message), 27 (a pool id of 0 is damage on
    its own), 31-33 (config lengths 0 refused; 1 and the maximum read, and found damaged), 61-63 and
    70 (an extent count of 0, or a slot size, wrong on its own is damage; MAX_EXTENTS extents is not)."""
    from fastalloc_shm import _header
    from fastalloc_shm.errors import IncompatiblePool

    monkeypatch.setattr(_header, "READY_TIMEOUT", 0.1)
    what = f"pool {pool_name!r}"
    stuck = f"{what}: not ready after 0.1 s; is its creator stuck?"
    raised = _refusal(pool_name, {L.HDR_MAGIC: 0, L.HDR_READY: 0})  # not written yet: wait
    assert raised.type is IncompatiblePool and str(raised.value) == stuck
    raised = _refusal(pool_name, {L.HDR_MAGIC: L.MAGIC ^ 1, L.HDR_READY: 0})  # foreign: refused at once
    assert raised.type is IncompatiblePool and "is not a fastalloc pool (bad magic); remove it" in str(raised.value)
    raised = _refusal(pool_name, {L.HDR_VERSION: L.LAYOUT_VERSION + 1})
    assert str(raised.value) == (f"{what}: layout version {L.LAYOUT_VERSION + 1}, this library reads version "
                                 f"{L.LAYOUT_VERSION}; use the fastalloc-shm version that created it")
    raised = _refusal(pool_name, {L.HDR_KIND: 2**63 + L.KIND_FIXED})
    assert raised.type is IncompatiblePool and str(raised.value).startswith(
        f"{what}: damaged header (kind {2**63 + L.KIND_FIXED}, config length ")
    raised = _refusal(pool_name, {L.HDR_POOL_ID: 0})
    assert raised.type is IncompatiblePool and str(raised.value).endswith(", pool id 0)")
    raised = _refusal(pool_name, {L.HDR_CONFIG_LEN: 0})
    assert raised.type is IncompatiblePool and str(raised.value).startswith(f"{what}: damaged header (")
    for length in (1, L.MAX_CONFIG_BYTES):  # in range: read, and found to be no record
        raised = _refusal(pool_name, {L.HDR_CONFIG_LEN: length})
        assert raised.type is IncompatiblePool and str(raised.value).startswith(f"{what}: damaged config record (")
    for words in ({L.HDR_EXTENTS: 0}, {L.HDR_SLOT_SIZE: 65}):  # each wrong on its own
        raised = _refusal(pool_name, words)
        assert str(raised.value).startswith(f"{what}: header does not match its segment ("), words
    raised = _refusal(pool_name, {L.HDR_EXTENTS: L.MAX_EXTENTS})  # as many extents as fit: a header that matches
    assert "header does not match" not in str(raised.value), str(raised.value)


def test_check_header_waits_for_an_unsized_segment_and_refuses_a_wrong_size(pool_name, monkeypatch):
    """Kills _header.py's check_header 2 and 3: a segment of 0 bytes is one its creator has not sized
    yet (wait), one shorter than a header or not a whole number of words is no pool."""
    from fastalloc_shm import _header, _names
    from fastalloc_shm.errors import IncompatiblePool

    monkeypatch.setattr(_header, "READY_TIMEOUT", 0.1)
    path = os.path.join(_names.SHM_DIR, _names.segment(pool_name).lstrip("/"))
    for size in (0, L.HEADER_SIZE - 8, L.HEADER_SIZE + 4):
        with open(path, "wb") as f:
            f.truncate(size)
        try:
            with pytest.raises(IncompatiblePool) as raised:
                FixedPool.attach(pool_name)
        finally:
            os.unlink(path)
        expected = ("not ready after 0.1 s" if size == 0 else
                    f"{_names.segment(pool_name)} is {size} bytes, not a fastalloc pool; remove it")
        assert expected in str(raised.value), (size, str(raised.value))


def test_a_config_record_of_exactly_the_room_fits(pool_name):
    """Kills _header.py's encode_config 7 (a record of exactly MAX_CONFIG_BYTES refused): a record
    that fills the header's room is stored, one byte more is refused, saying how much fits."""
    from fastalloc_shm import ConfigError, PoolConfig, _header

    record = PoolConfig(capacity=2).to_record()

    def with_path_of(n):  # a record is data: from_record imports nothing
        return PoolConfig.from_record(dict(record, initializer="m:" + "x" * n))

    n = 1000  # msgpack's str16 from 256 bytes on: the record grows byte by byte with the path
    n += L.MAX_CONFIG_BYTES - len(_header.encode_config(with_path_of(n)))
    assert len(_header.encode_config(with_path_of(n))) == L.MAX_CONFIG_BYTES
    over = with_path_of(n + 1)
    with pytest.raises(ConfigError) as raised:
        _header.encode_config(over)
    assert str(raised.value) == (f"config: {L.MAX_CONFIG_BYTES + 1} bytes recorded, at most {L.MAX_CONFIG_BYTES} "
                                 "fit in the header")


def test_pool_config_takes_the_smallest_slot_and_names_a_wrong_strategy():
    """Kills config.py's PoolConfig __post_init__ 18 (slot_size 1 refused), 29 and 96 (messages)."""
    from fastalloc_shm import ConfigError, PoolConfig

    assert PoolConfig(capacity=1, slot_size=1).slot_size == 1
    with pytest.raises(ConfigError) as raised:
        PoolConfig(capacity=1, growth_strategy="linear")
    assert str(raised.value) == "growth_strategy: expected a GrowthStrategy, got 'linear'"
    with pytest.raises(ConfigError) as raised:
        PoolConfig(capacity=1, mode=-1)
    assert str(raised.value) == "mode: expected an int >= 0, got -1"


def test_both_callables_of_a_reset_pair_are_checked_and_named():
    """Kills config.py's PoolConfig __post_init__ 62, 65-67, 69, 73 (the pair's first callable
    unchecked, or either checked under another label)."""
    from fastalloc_shm import ConfigError, PoolConfig

    for pair in ((42, len), (dict, 42)):
        with pytest.raises(ConfigError) as raised:
            PoolConfig(capacity=1, reset=pair)
        assert str(raised.value) == "reset: 42 is not callable"


# ---- mutmut: daemon/registry.py (fastalloc_shmd.registry), driven in this process ----
# test_daemon.py runs the daemon as a subprocess, which mutmut cannot see: these drive a Registry here,
# over real pools and real client processes.


def _spec(name, capacity=4, kind="fixed", persist=False):
    from fastalloc_shm import PoolConfig
    from fastalloc_shmd.config import PoolSpec

    return PoolSpec(name, kind, PoolConfig(capacity=capacity, slot_size=64), persist)


def _info(name, *, owned, persist, declared, in_use=0, capacity=4, kind="fixed"):
    return {"name": name, "kind": kind, "capacity": capacity, "slot_size": 64, "in_use": in_use, "owned": owned,
            "persist": persist, "declared": declared}


def _logged(caplog):
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fastalloc_shmd"]


@pytest.fixture
def registry(caplog):
    import logging

    from fastalloc_shmd.registry import Registry

    caplog.set_level(logging.INFO, logger="fastalloc_shmd")
    reg = Registry()
    yield reg
    reg.close()


@pytest.fixture
def sleeper():
    """A live client process (its pid is what a client registers)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _die_holding_a_slot(name):
    """A child attaches pool `name`, allocates one slot and dies without releasing it."""
    from fastalloc_shm import attach

    pid = os.fork()
    if pid == 0:
        try:
            pool = attach(name)  # held: a temporary pool is collected (and closed) before its allocate runs
            pool.allocate(b"held")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _die_with_cached_slots(name):
    """A child attaches ThreadLocalPool `name`, allocates and releases (its magazine keeps the slot) and dies."""
    from fastalloc_shm import attach

    pid = os.fork()
    if pid == 0:
        try:
            pool = attach(name)
            pool.release(pool.allocate(b"cached"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def test_a_reload_opens_new_pools_keeps_the_live_shape_and_says_what_it_kept(registry, make_name, caplog):
    """Kills registry.py's apply, _open, _adopt and _info mutants (and register 28, 29: a watched pool's
    recorded kind or config lost, so declaring its live settings would warn): what a config opens (owned,
    declared), what a reload with changed settings logs and keeps, what a pool removed from the config
    becomes."""
    from fastalloc_shm import FixedPool, unlink
    from fastalloc_shmd.config import DaemonConfig

    a, b, c, w = make_name(), make_name(), make_name(), make_name()
    try:
        registry.apply(DaemonConfig({a: _spec(a), b: _spec(b, persist=True), c: _spec(c)}, source="one.toml"),
                       strict=True)
        assert _logged(caplog) == [("INFO", f"pool {a!r} ready: fixed, 4 slots of 64 B"),
                                   ("INFO", f"pool {b!r} ready: fixed, 4 slots of 64 B, persists"),
                                   ("INFO", f"pool {c!r} ready: fixed, 4 slots of 64 B")]
        assert registry.list() == sorted([_info(a, owned=True, persist=False, declared=True),
                                          _info(b, owned=True, persist=True, declared=True),
                                          _info(c, owned=True, persist=False, declared=True)], key=lambda i: i["name"])
        watched = FixedPool.create(w, capacity=4, slot_size=64)
        registry.register(os.getpid(), [w])
        caplog.clear()
        again = DaemonConfig({a: _spec(a, capacity=8, persist=True), w: _spec(w, capacity=2)}, source="two.toml")
        registry.apply(again, strict=True)
        assert _logged(caplog) == [
            ("WARNING", f"pool {a!r}: new settings in the config are not applied to the live pool; destroy it "
                        f"(`fastalloc-shm rm {a}`) and reload to recreate it with them"),
            ("WARNING", f"pool {b!r} was removed from two.toml: kept as it is (clients may still use it) and kept at "
                        f"stop; remove it now with `fastalloc-shm rm {b}` or DaemonClient().destroy({b!r})"),
            ("WARNING", f"pool {c!r} was removed from two.toml: kept as it is (clients may still use it) and unlinked "
                        f"at stop; remove it now with `fastalloc-shm rm {c}` or DaemonClient().destroy({c!r})")]
        # the live shape stays (4 slots), the new persist applies; the watched pool is owned now, without a warning
        assert registry.list() == sorted([_info(a, owned=True, persist=True, declared=True),
                                          _info(b, owned=True, persist=True, declared=False),
                                          _info(c, owned=True, persist=False, declared=False),
                                          _info(w, owned=True, persist=False, declared=True)], key=lambda i: i["name"])
        caplog.clear()
        registry.apply(DaemonConfig({a: _spec(a, persist=True), w: _spec(w)}, source="three.toml"), strict=True)
        assert _logged(caplog) == []  # the live settings declared: no warning (b and c were warned of once)
        watched.close()
    finally:
        registry.close()
        for name in (a, b, c, w):
            unlink(name)


def test_a_pool_that_cannot_be_opened_stops_a_strict_apply_and_is_logged_by_a_reload(registry, make_name, caplog):
    """Kills registry.py's apply mutants of its error path: strict raises; otherwise the error is logged
    whole and the pools after it are opened."""
    from fastalloc_shm import FixedPool, unlink
    from fastalloc_shm.errors import FastallocError
    from fastalloc_shmd.config import DaemonConfig

    bad, good = make_name(), make_name()
    squatter = FixedPool.create(bad, capacity=2, slot_size=64)  # another shape under the name
    try:
        config = DaemonConfig({bad: _spec(bad), good: _spec(good)}, source="d.toml")
        with pytest.raises(FastallocError):
            registry.apply(config, strict=True)
        assert registry.names() == []
        registry.apply(config, strict=False)
        assert registry.names() == [good]
        errors = [m for lv, m in _logged(caplog) if lv == "ERROR"]
        assert len(errors) == 1 and errors[0].startswith(f"pool {bad!r} from d.toml not opened: pool {bad!r}")
    finally:
        squatter.close()
        registry.close()
        unlink(bad)
        unlink(good)


def test_create_and_destroy_ops_of_the_registry(registry, make_name, sleeper, caplog):
    """Kills registry.py's create, destroy and _get mutants: what create answers for a new pool, for one of
    the same name and kind, of another kind, and without exist_ok; what destroy removes, and its refusals."""
    from fastalloc_shm import FixedPool, unlink
    from fastalloc_shm._admin import list_pools
    from fastalloc_shm.errors import IncompatiblePool, PoolExistsError, PoolNotFound

    a, outside, missing = make_name(), make_name(), make_name()
    try:
        assert registry.create(_spec(a), exist_ok=False) == _info(a, owned=True, persist=False, declared=False)
        assert registry.create(_spec(a), exist_ok=True) == _info(a, owned=True, persist=False, declared=False)
        with pytest.raises(PoolExistsError) as raised:
            registry.create(_spec(a), exist_ok=False)
        assert str(raised.value) == f"pool {a!r} exists (managed by this daemon); pass exist_ok=True"
        with pytest.raises(IncompatiblePool) as raised:
            registry.create(_spec(a, kind="growing"), exist_ok=True)
        assert str(raised.value) == f"pool {a!r} is a fixed pool, not growing"
        registry.register(sleeper.pid, [a])
        pool = registry._pools[a].pool
        caplog.clear()
        registry.destroy(a)
        assert pool._closed and a not in list_pools() and registry.names() == []
        assert registry.clients() == {sleeper.pid: set()}
        assert _logged(caplog) == [("INFO", f"pool {a!r} destroyed on request")]
        FixedPool.create(outside, capacity=1, slot_size=64).close()
        registry.destroy(outside)  # not managed, but on the machine: unlinked
        assert outside not in list_pools()
        with pytest.raises(PoolNotFound) as raised:
            registry.destroy(missing)
        assert str(raised.value) == f"no pool named {missing!r} on this machine"
        with pytest.raises(PoolNotFound) as raised:
            registry.stats(missing)
        assert str(raised.value) == f"fastalloc-shmd does not manage a pool named {missing!r}; see the `list` op"
    finally:
        registry.close()
        for name in (a, outside):
            unlink(name)


def test_register_watches_a_live_pid_and_forgets_it_once_dead(registry, make_name, sleeper, caplog):
    """Kills registry.py's register, clients and pop_dead_clients mutants (register 43, 44, 47, 50 among them:
    a live client's record replaced): a dead pid is refused, a live one's pools are attached (watched, not
    owned) or shared with a managed one, its pools add up; a failed attach closes what it opened; a client
    that died is popped once."""
    import subprocess
    import sys

    from fastalloc_shm import FixedPool, attach, unlink
    from fastalloc_shm.errors import FastallocError, PoolNotFound

    x, y, z, missing = make_name(), make_name(), make_name(), make_name()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        with pytest.raises(FastallocError) as raised:
            registry.register(dead.pid, [x])
        assert str(raised.value) == f"pid {dead.pid} is not a running process; register a live one"
        FixedPool.create(x, capacity=4, slot_size=64).close()
        FixedPool.create(z, capacity=4, slot_size=64).close()
        registry.create(_spec(y), exist_ok=False)
        caplog.clear()
        assert registry.register(sleeper.pid, [x]) == {"pid": sleeper.pid, "pools": [x]}
        assert _logged(caplog) == [("INFO", f"watching pool {x!r} (used by pid {sleeper.pid})")]
        assert registry.register(sleeper.pid, [y]) == {"pid": sleeper.pid, "pools": sorted([x, y])}  # adds up
        assert registry.register(os.getpid(), [x]) == {"pid": os.getpid(), "pools": [x]}
        assert registry.clients() == {sleeper.pid: {x, y}, os.getpid(): {x}}
        assert registry.list() == sorted([_info(x, owned=False, persist=False, declared=False),
                                          _info(y, owned=True, persist=False, declared=False)], key=lambda i: i["name"])
        with pytest.raises(PoolNotFound):
            registry.register(sleeper.pid, [z, missing])
        assert z not in registry.names() and registry.clients()[sleeper.pid] == {x, y}
        mine = attach(z)
        try:  # the registry's attach of z was closed: the only client left in z's table is this one
            assert [c.alive for c in mine.clients()] == [True]
        finally:
            mine.close()
        assert registry.pop_dead_clients() == []
        sleeper.kill()
        sleeper.wait()
        (gone,) = registry.pop_dead_clients()
        assert (gone.pid, gone.pools) == (sleeper.pid, {x, y})
        assert registry.clients() == {os.getpid(): {x}}
        assert registry.pop_dead_clients() == []
    finally:
        registry.close()
        for name in (x, y, z):
            unlink(name)


def test_stats_and_samples_of_the_managed_pools(registry, make_name):
    """Kills registry.py's stats, stats_all and sample mutants: every field each reports, for each pool."""
    from fastalloc_shm import attach, unlink

    a, b = make_name(), make_name()
    try:
        registry.create(_spec(a), exist_ok=False)
        registry.create(_spec(b, capacity=2, kind="growing"), exist_ok=False)
        mine = attach(a)
        handle = mine.allocate(b"x")
        mine.get(handle)
        stats = mine.statistics()
        clients = [{"pid": c.pid, "state": c.state, "alive": c.alive} for c in mine.clients()]
        expected = {**stats.to_dict(), "hit_rate": stats.hit_rate(), "utilization_rate": stats.utilization_rate(),
                    "peak_utilization_rate": stats.peak_utilization_rate(), "clients": clients,
                    "recovered_by_daemon": 0, "last_recovery": None}
        assert expected["utilization_rate"] == 25.0 and len(clients) == 2
        assert registry.stats(a) == expected
        assert registry.stats_all() == {a: expected, b: registry.stats(b)}
        assert registry.stats(b)["capacity"] == 2
        samples = registry.sample()
        assert [(s.name, s.kind, s.stats, len(s.clients)) for s in samples] == [
            (a, "fixed", stats, 2), (b, "growing", attach_stats(b), 1)]
        assert samples[0].clients == tuple(mine.clients())
        mine.release(handle)
        mine.close()
    finally:
        registry.close()
        unlink(a)
        unlink(b)


def attach_stats(name):
    from fastalloc_shm import attach

    pool = attach(name)
    try:
        return pool.statistics()
    finally:
        pool.close()


def test_recover_counts_only_repairs_and_passes_the_orphan_policy(registry, make_name):
    """Kills registry.py's recover, try_recover, _count and recover_all mutants: a repair is counted with its
    report, a recover that repairs nothing is not, the orphan policy reaches the pool, a busy pool is left
    for a later pass."""
    from fastalloc_shm import unlink

    a, b, t = make_name(), make_name(), make_name()
    try:
        registry.create(_spec(a), exist_ok=False)
        registry.create(_spec(b), exist_ok=False)
        _die_holding_a_slot(a)
        kept = registry.recover(a)  # the pool's own policy: keep
        assert (kept.orphans_kept, kept.repaired) == (1, False)
        assert registry.stats(a)["recovered_by_daemon"] == 0 and registry.stats(a)["last_recovery"] is None
        report = registry.recover(a, "reclaim")
        assert (report.orphans_reclaimed, report.repaired) == (1, True)
        assert registry.stats(a)["recovered_by_daemon"] == 1
        assert registry.stats(a)["last_recovery"] == report.to_dict()
        _die_holding_a_slot(a)
        _die_holding_a_slot(b)
        reports = registry.recover_all("reclaim")
        assert [(r.pool, r.orphans_reclaimed) for r in reports] == [(a, 1), (b, 1)]
        assert [registry.stats(n)["recovered_by_daemon"] for n in (a, b)] == [2, 1]
        _die_holding_a_slot(b)
        with registry._pools[b].busy:
            assert registry.try_recover(b, 0.05) is None  # busy: left for a later pass
        report = registry.try_recover(b, 5.0)
        assert (report.orphans_kept, report.repaired) == (1, False)  # the pool's own policy, keep: not counted
        assert registry.stats(b)["recovered_by_daemon"] == 1
        registry.create(_spec(t, kind="threadlocal"), exist_ok=False)
        _die_with_cached_slots(t)
        report = registry.try_recover(t, 5.0)
        assert report.cached_returned > 0 and report.repaired
        assert registry.stats(t)["recovered_by_daemon"] == 1 and registry.stats(t)["last_recovery"] == report.to_dict()
    finally:
        registry.close()
        for name in (a, b, t):
            unlink(name)


def test_stop_unlinks_only_the_owned_pools_it_still_holds(registry, make_name, sleeper, caplog):
    """Kills registry.py's close and _forget_replaced mutants (and sample's letting go): stop unlinks an owned
    pool, keeps a persistent one and a watched one, and never unlinks a pool created again under an owned
    pool's name; sample() lets go of a pool unlinked behind the daemon's back and closes it."""
    from fastalloc_shm import FixedPool, unlink
    from fastalloc_shm._admin import list_pools

    owned, kept, watched, replaced = make_name(), make_name(), make_name(), make_name()
    try:
        registry.create(_spec(owned), exist_ok=False)
        registry.create(_spec(kept, persist=True), exist_ok=False)
        registry.create(_spec(replaced), exist_ok=False)
        FixedPool.create(watched, capacity=4, slot_size=64).close()
        registry.register(sleeper.pid, [watched])
        old = registry._pools[replaced].pool
        unlink(replaced)
        FixedPool.create(replaced, capacity=4, slot_size=64).close()  # a successor under the name
        caplog.clear()
        assert [s.name for s in registry.sample()] == sorted([owned, kept, watched])
        assert old._closed
        assert _logged(caplog) == [("WARNING", f"pool {replaced!r} was unlinked by another process; "
                                               "the daemon lets go of it")]
        caplog.clear()
        registry.close()
        assert registry.names() == []
        left = set(list_pools())
        assert owned not in left and {kept, watched, replaced} <= left
        assert sorted(_logged(caplog)) == sorted([("INFO", f"pool {owned!r} unlinked"),
                                                  ("INFO", f"pool {kept!r} persists (persist = true)")])
    finally:
        registry.close()
        for name in (owned, kept, watched, replaced):
            unlink(name)


def test_pools_already_on_the_machine_are_taken_by_a_config_and_by_create_with_exist_ok(registry, make_name):
    """Kills registry.py's apply 5, 10, create 17 and _open 4, 7 (exist_ok lost on the way to create()):
    a declared pool that outlived the last daemon (persist) is attached, not refused; so is one create
    names with exist_ok; without it, refused."""
    from fastalloc_shm import FixedPool, PoolExistsError, unlink
    from fastalloc_shmd.config import DaemonConfig

    declared, created, refused = make_name(), make_name(), make_name()
    for name in (declared, created, refused):
        FixedPool.create(name, capacity=4, slot_size=64).close()
    try:
        registry.apply(DaemonConfig({declared: _spec(declared)}, source="d.toml"), strict=True)
        assert registry.create(_spec(created), exist_ok=True) == _info(created, owned=True, persist=False,
                                                                         declared=False)
        with pytest.raises(PoolExistsError):
            registry.create(_spec(refused), exist_ok=False)
        assert registry.names() == sorted([declared, created])
    finally:
        registry.close()
        for name in (declared, created, refused):
            unlink(name)


def test_register_refuses_a_zombie(registry, make_name):
    """Kills registry.py's register 3 (`or` made `and`: a pid whose start time can be read but which
    no longer runs, a zombie, accepted)."""
    import subprocess
    import sys
    import time

    import psutil

    from fastalloc_shm.errors import FastallocError

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        with pytest.raises(FastallocError) as raised:
            registry.register(zombie.pid, [make_name()])
        assert str(raised.value) == f"pid {zombie.pid} is not a running process; register a live one"
    finally:
        zombie.wait()


def _spawn_as_pid(pid):
    """A sleeping process given pid `pid` (the kernel's next pid set through ns_last_pid, as CRIU does;
    tried again when another process on the machine forks first)."""
    import subprocess
    import sys

    for _ in range(100):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.fail(f"pid {pid} was never given back")


@needs_root("to hand a dead client's pid to a new process (ns_last_pid)")
def test_a_pid_reused_by_another_process_is_another_client(registry, make_name):
    """Kills registry.py's register 49, 51, 54 and pop_dead_clients 4, 6 (a client's start time ignored
    or not recorded): a registered client dies and its pid goes to a new process; that process's
    register starts a new record (the dead one's pools are not its), and once it dies in turn its
    record is popped even while its pid runs a third process."""
    import subprocess
    import sys
    import time

    from fastalloc_shm import FixedPool, unlink

    x, y = make_name(), make_name()
    for name in (x, y):
        FixedPool.create(name, capacity=4, slot_size=64).close()
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    pid = procs[0].pid
    try:
        registry.register(pid, [x])
        for proc in procs:
            proc.kill()
            proc.wait()
        time.sleep(0.05)  # start times differ by more than the tick they are compared to
        procs.append(_spawn_as_pid(pid))
        assert registry.register(pid, [y]) == {"pid": pid, "pools": [y]}
        procs[-1].kill()
        procs[-1].wait()
        time.sleep(0.05)
        procs.append(_spawn_as_pid(pid))
        (gone,) = registry.pop_dead_clients()
        assert (gone.pid, gone.pools) == (pid, {y}) and registry.clients() == {}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        registry.close()
        for name in (x, y):
            unlink(name)


def _stack_of(thread):
    """The functions on `thread`'s Python stack, innermost first, each with its locals (match names by
    substring: under mutmut a function runs as `x_<name>__mutmut_<n>` behind a trampoline)."""
    import sys

    frame = sys._current_frames().get(thread.ident)
    stack = []
    while frame is not None:
        stack.append((frame.f_code.co_name, frame.f_locals))
        frame = frame.f_back
    return stack


def _wait_until(predicate, what):
    import time

    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.002)


def test_a_register_that_finds_its_pool_opened_meanwhile_goes_on_with_the_rest(registry, make_name):
    """Kills registry.py's register 17 (`continue` made `break`): a register attaches its new pools outside
    the registry lock; one of them managed meanwhile (here created while the register waits for another
    pool's creator to mark it ready) is closed, and the pools after it are still watched."""
    import threading

    from fastalloc_shm import FixedPool, attach, unlink

    meanwhile, slow = make_name(), make_name()
    FixedPool.create(meanwhile, capacity=4, slot_size=64).close()
    creator = FixedPool.create(slow, capacity=4, slot_size=64)
    result = {}
    try:
        _put_word(creator, L.HDR_READY, 0)  # as before its creator's last step: an attach waits
        thread = threading.Thread(target=lambda: result.update(registry.register(os.getpid(), [meanwhile, slow])))
        thread.start()
        _wait_until(lambda: any("open_ready" in f for f, _ in _stack_of(thread)[:2])
                    and any("register" in f and v.get("name") == slow for f, v in _stack_of(thread)),
                    "the register waits for the second pool")
        registry.create(_spec(meanwhile), exist_ok=True)
        _put_word(creator, L.HDR_READY, 1)
        thread.join(30)
        assert result == {"pid": os.getpid(), "pools": sorted([meanwhile, slow])}
        assert registry.list() == sorted([_info(meanwhile, owned=True, persist=False, declared=False),
                                          _info(slow, owned=False, persist=False, declared=False)],
                                         key=lambda i: i["name"])
        mine = attach(meanwhile)
        try:  # the register's own attach of it was closed: the registry's and this one are left
            assert len(mine.clients()) == 2
        finally:
            mine.close()
    finally:
        creator.close()
        registry.close()
        for name in (meanwhile, slow):
            unlink(name)


def test_a_recover_that_waited_for_a_pool_destroyed_meanwhile_says_so(registry, make_name):
    """Kills registry.py's recover 5 (the message made None): a recover waiting for the pool object while
    a destroy takes it away finds it gone."""
    import threading

    from fastalloc_shm import unlink
    from fastalloc_shm.errors import PoolNotFound

    a = make_name()
    registry.create(_spec(a), exist_ok=False)
    busy = registry._pools[a].busy
    raised = []

    def recover():
        try:
            registry.recover(a)
        except PoolNotFound as exc:
            raised.append(str(exc))

    try:
        with busy:  # the pool object in use (as by the monitor)
            recovering = threading.Thread(target=recover)
            recovering.start()
            _wait_until(lambda: any("recover" in f and "managed" in v for f, v in _stack_of(recovering)),
                        "the recover waits for the pool object")
            destroying = threading.Thread(target=registry.destroy, args=(a,))
            destroying.start()
            _wait_until(lambda: a not in registry.names(), "the destroy took the pool")
        recovering.join(30)
        destroying.join(30)
        assert raised == [f"pool {a!r} was destroyed meanwhile"]
    finally:
        registry.close()
        unlink(a)


def test_try_recover_waits_only_as_long_as_it_is_told(registry, make_name, tmp_path):
    """Kills registry.py's try_recover 9 (the wait dropped: the pool's lock_timeout, here 20 s, waited
    instead): with the pool's lock held by a stopped process, try_recover gives up after its own wait."""
    import time

    from fastalloc_shm import PoolConfig, unlink
    from fastalloc_shmd.config import PoolSpec

    from .test_review_findings import Faulted

    a = make_name()
    registry.create(PoolSpec(a, "fixed", PoolConfig(capacity=4, slot_size=64, lock_timeout=20.0)), exist_ok=False)
    holder = Faulted(tmp_path, "allocate_n", a, 1, fault="lock.acquired:stop")
    try:
        started = time.monotonic()
        assert registry.try_recover(a, 0.2) is None
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        registry.close()
        unlink(a)


def test_sample_logs_a_pool_it_cannot_read_and_samples_the_others(registry, make_name, caplog):
    """Kills registry.py's sample 14-21 (the error's log line): a managed pool object that cannot be read
    (closed here, as a fault elsewhere might leave it) is logged by name and reason; the rest are sampled."""
    from fastalloc_shm import unlink

    broken, fine = make_name(), make_name()
    try:
        registry.create(_spec(broken), exist_ok=False)
        registry.create(_spec(fine), exist_ok=False)
        registry._pools[broken].pool.close()
        caplog.clear()
        assert [s.name for s in registry.sample()] == [fine]
        assert _logged(caplog) == [("ERROR", f"pool {broken!r} cannot be read: pool {broken!r} is closed in this "
                                             "process; attach it again")]
    finally:
        registry.close()
        unlink(broken)
        unlink(fine)


def test_stop_logs_a_pool_it_cannot_unlink_and_unlinks_the_others(registry, make_name, caplog):
    """Kills registry.py's close 19-26 (the error's log line): junk under an owned pool's extent name
    (a directory) fails its unlink; stop logs it by name and reason and goes on to the next pool."""
    from fastalloc_shm import unlink
    from fastalloc_shm._admin import list_pools

    junk, fine = make_name(), make_name()
    directory = f"/dev/shm/fastalloc.{junk}.x7"
    try:
        registry.create(_spec(junk), exist_ok=False)
        registry.create(_spec(fine), exist_ok=False)
        os.mkdir(directory)
        caplog.clear()
        registry.close()
        assert _logged(caplog) == [("ERROR", f"pool {junk!r}: [Errno 21] Is a directory"),
                                   ("INFO", f"pool {fine!r} unlinked")]
        assert fine not in list_pools()
    finally:
        if os.path.isdir(directory):
            os.rmdir(directory)
        registry.close()
        unlink(junk)
        unlink(fine)


# ---- mutmut: fastalloc_shm/redis_pool.py (against a real redis-server) ----


def test_a_redis_pools_timeouts_and_refusals_say_what_they_got(redis_url, pool_name):
    """Kills redis_pool.py's _check_timeout 2 (a bool accepted), 6 (0 refused), 11 (its message made None),
    buffer 2, 3 (its message) and _custom_growth 3-6 (the message of a growth function an attacher cannot
    import)."""
    from fastalloc_shm import ConfigError, GrowthStrategy, RedisPool
    from fastalloc_shm._redis_errors import SharedMemoryOnly

    with RedisPool.create(pool_name, url=redis_url, capacity=1, growth_strategy=GrowthStrategy.custom(
            lambda capacity: 1)) as pool:
        with pytest.raises(ValueError) as raised:
            pool.allocate("x", timeout=True)
        assert str(raised.value) == "timeout: seconds, finite and >= 0 (or None), got True"
        handle = pool.allocate("x", timeout=0)
        with pytest.raises(SharedMemoryOnly) as raised:
            pool.buffer(handle)
        assert str(raised.value) == (
            f"buffer(): pool {pool_name!r} is a RedisPool; its values live on the Redis server, so there are no raw"
            " bytes to map here. Use get()/set(), or a shared-memory pool (FixedPool) for zero-copy access")
        with RedisPool.attach(pool_name, url=redis_url) as other:
            with pytest.raises(ConfigError) as raised:
                other.allocate("y")
            assert str(raised.value).endswith(
                " this process (it was a lambda or local function); give a module-level function or"
                " 'module:qualname' when creating the pool")


def _redis_version(port, **credentials):
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, **credentials)
    try:
        return client.info("server")["redis_version"]
    finally:
        client.close()


def test_a_redis_attach_and_a_pickle_keep_what_they_are_given(pool_name, monkeypatch):
    """Kills redis_pool.py's attach 2, 16, 19, 34, 45 (allow_eviction lost or defaulted on the way), 9, 10,
    13, 14 (username or password lost), 5, 17, 20 (durability not checked, or not against the server),
    _attach_pickled 1, 8, 14 (a pickle's allow_eviction lost), 16, 17 (the hint when a receiver has no
    credentials) and _describe 10, 11 (a missing pool's error without its name or address): against a
    redis-server that may evict keys and admits only user alice."""
    import pickle

    from fastalloc_shm import ConfigError, PoolNotFound, RedisPool
    from fastalloc_shm._redis_connection import AUTH_ENV, URL_ENV
    from fastalloc_shm._redis_errors import RedisUnavailable

    from .redis_servers import redis_server

    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(AUTH_ENV, raising=False)
    with redis_server("--maxmemory-policy", "allkeys-lru", "--user", "alice", "on", ">secret", "~*", "&*", "+@all",
                      "--user", "default", "off") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        alice = {"username": "alice", "password": "secret"}
        with RedisPool.create(pool_name, url=url, capacity=2, allow_eviction=True, **alice) as pool:
            with pytest.raises(ConfigError, match=r"^maxmemory-policy: Redis at 127\.0\.0\.1:\d+ runs with "
                                                  r"maxmemory-policy allkeys-lru, so under memory pressure"):
                RedisPool.attach(pool_name, url=url, **alice)
            with RedisPool.attach(pool_name, url=url, allow_eviction=True, **alice) as other:
                handle = other.allocate("x")
                assert pool.get(handle) == "x"
                other.release(handle)
                blob = pickle.dumps(other)  # an attacher's pickle: its allow_eviction must travel too
            with pytest.raises(ConfigError, match=r"^durability: expected None, 'aof' or 'replicas:N'"):
                RedisPool.attach(pool_name, url=url, allow_eviction=True, durability="sometimes", **alice)
            if tuple(map(int, _redis_version(server.port, **alice).split(".")[:2])) < (7, 2):  # no WAITAOF
                with pytest.raises(ConfigError, match=r"^durability: 'aof' waits with WAITAOF, which Redis at "):
                    RedisPool.attach(pool_name, url=url, allow_eviction=True, durability="aof", **alice)
            with pytest.raises(PoolNotFound) as raised:
                RedisPool.attach(pool_name + "-none", url=url, allow_eviction=True, **alice)
            assert f"{pool_name + '-none'!r}" in str(raised.value) and f"127.0.0.1:{server.port}" in str(raised.value)
            with pytest.raises(RedisUnavailable) as raised:
                pickle.loads(blob)  # no credentials in the pickle, none in this process
            assert str(raised.value).endswith(
                f". A pickled RedisPool carries no credentials and this process has none of its own: set {URL_ENV}="
                f"redis://user:password@host:port/db or {AUTH_ENV}=password in its environment")
            monkeypatch.setenv(URL_ENV, f"redis://alice:secret@127.0.0.1:{server.port}/0")
            with pickle.loads(blob) as clone:  # its allow_eviction travelled with it
                assert clone.get(clone.allocate("y")) == "y"
            with pickle.loads(pickle.dumps(pool)) as clone:  # and the creator's
                assert clone.get(clone.allocate("z")) == "z"
            with RedisPool.create(pool_name, url=url, capacity=2, allow_eviction=True, exist_ok=True, **alice) as same:
                with pickle.loads(pickle.dumps(same)) as clone:  # and an exist_ok attacher's
                    assert len(clone) == 2  # attached: it reads the pool (full with the two clones' values)
            with pytest.raises(ConfigError, match=r"^maxmemory-policy: "):
                RedisPool.create(pool_name + "-other", url=url, capacity=2, **alice)  # not allowed by default


def _new_list():
    return []


def _unchanged(value):
    return value


def test_an_attacher_of_a_redis_pool_whose_reset_functions_were_lambdas_says_so(redis_url, pool_name):
    """Kills redis_pool.py's _reset_callables 2-5 (the refusal inverted or its message lost), _describe 31-37
    and attach 35, 46 (the record's unimportable reset not seen or not passed on): the creator's lambdas
    run in the creator; an attacher cannot import them and says why on its first acquire; a pool with
    importable reset functions (or none) is not refused."""
    from fastalloc_shm import ConfigError, RedisPool

    with RedisPool.create(pool_name, url=redis_url, capacity=2, reset=(lambda: [], lambda v: v)) as pool:
        pool.release(pool.acquire())
        with RedisPool.attach(pool_name, url=redis_url) as other:
            with pytest.raises(ConfigError) as raised:
                other.acquire()
            assert str(raised.value) == (
                f"reset: pool {pool_name!r} was created with reset functions that cannot be imported in this"
                " process (a lambda or local function); give module-level functions or 'module:qualname' strings")
        with RedisPool.create(pool_name, url=redis_url, capacity=2, exist_ok=True) as same:  # an attacher too
            with pytest.raises(ConfigError, match=r"^reset: pool .* cannot be imported in this process"):
                same.acquire()
    with RedisPool.create(pool_name, url=redis_url, capacity=2, reset=(_new_list, _unchanged)):
        with RedisPool.attach(pool_name, url=redis_url) as other:
            handle = other.acquire()  # importable: run here
            assert other.get(handle) == []
            other.release(handle)


def test_list_pools_skips_what_is_not_a_pools_meta_key_and_attach_names_a_damaged_record(redis_url, pool_name):
    """Kills redis_pool.py's list_pools 12, 13 (a key name that is not UTF-8 read with an unknown error
    handler), 14 (a meta key that names no pool taken for one) and _describe 28-30 (the message of a config
    record this version cannot read)."""
    import redis

    from fastalloc_shm import IncompatiblePool, RedisPool
    from fastalloc_shm._redis_scripts import LAYOUT, pool_keys
    from fastalloc_shm.redis_pool import list_pools

    raw = redis.Redis.from_url(redis_url)
    odd = [b"{fastalloc.\xff" + pool_name.encode() + b"}:meta", b"{fastalloc.}:meta"]  # not UTF-8; no name
    try:
        for key in odd:
            raw.hset(key, "layout", LAYOUT)
        with RedisPool.create(pool_name, url=redis_url, capacity=1):
            names = list_pools(redis_url)
            assert pool_name in names and "\ufffd" + pool_name in names and "" not in names
            raw.hset(pool_keys(pool_name)[0], "config", b"\xc1")  # no msgpack
            with pytest.raises(IncompatiblePool) as raised:
                RedisPool.attach(pool_name, url=redis_url)
            assert str(raised.value).startswith(f"pool {pool_name!r} on Redis at ")
            assert " has a config record this version cannot read (" in str(raised.value)
            assert str(raised.value).endswith("); unlink the pool and create it again")
    finally:
        raw.delete(*odd)
        raw.close()


def _overwrite_slot(redis_url: str, pool_name: str, handle: int, payload: bytes) -> int:
    """Write `payload` into the handle's slot on the server, behind the pool's back; the slot's index."""
    import redis

    from fastalloc_shm._redis_scripts import pool_keys
    from fastalloc_shm.handle import unpack

    index = unpack(handle)[0]
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.hset(pool_keys(pool_name)[4], str(index), payload)
    finally:
        raw.close()
    return index


def test_a_redis_pools_errors_name_the_pool_and_the_slot(redis_url, pool_name):
    """Kills redis_pool.py's _once 10 (a stale handle's error without the pool's name), _unpack 9-11 and
    get 4 (the message of a slot holding bytes msgpack cannot read, and its index), __repr__ 14, 19 (an
    attacher's and a closed pool's repr)."""

    from fastalloc_shm import RedisPool, StaleHandle
    from fastalloc_shm.errors import SerializationError
    from fastalloc_shm.handle import unpack

    with RedisPool.create(pool_name, url=redis_url, capacity=2) as pool:
        handle = pool.allocate("x")
        index, generation = unpack(handle)
        pool.release(handle)
        with pytest.raises(StaleHandle) as raised:
            pool.release(handle)
        assert str(raised.value).startswith(f"handle {handle} of pool {pool_name!r} is stale: slot {index} ")
        handle = pool.allocate("y")
        index = _overwrite_slot(redis_url, pool_name, handle, b"\xc1")  # no msgpack
        with pytest.raises(SerializationError) as raised:
            pool.get(handle)
        assert str(raised.value).startswith(f"slot {index} of pool {pool_name!r} holds bytes msgpack cannot read (")
        assert str(raised.value).endswith("); something other than fastalloc-shm wrote them")
        other = RedisPool.attach(pool_name, url=redis_url)
        other.allocate("its own")  # registered, with a lease
        assert repr(other) == f"<RedisPool {pool_name!r} at {redis_url}, slot_size={other.slot_size}, attached>"
        pool.unlink()
        other.close()  # its goodbye finds no pool: no error
        assert repr(other) == (f"<RedisPool {pool_name!r} at {redis_url}, slot_size={other.slot_size}, attached,"
                               " closed>")


def _lease_thread(name):
    import threading

    return [t for t in threading.enumerate() if t.name == f"fastalloc-lease-{name}"]


def _wait_for(condition, seconds: float, what: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _die_as_a_client(pool, keep_a_slot: bool, take_from: str | None = None) -> None:
    """Fork a child that registers as a client of `pool` (allocates, or takes an item of channel
    `take_from` by handle) and dies without a goodbye."""
    pid = os.fork()
    if pid == 0:
        try:
            if take_from is not None:
                pool.channel(take_from).get_handle(timeout=0)
            else:
                handle = pool.allocate("the dead one's")
                if not keep_a_slot:
                    pool.release(handle)
        finally:
            os._exit(0)  # no finalizer runs: its lease expires, its registry entry stays
    _, status = os.waitpid(pid, 0)
    assert status == 0


def test_a_redis_lease_thread_refreshes_prunes_the_dead_that_own_nothing_and_ends_with_the_pool(redis_url, pool_name):
    """Kills redis_pool.py's _keep_lease mutants (the refresh's keys, ttl and cadence, the prune's cadence and
    arguments, the end when the pool is gone), _register's (the lease thread's arguments, the first TOUCH) and
    _prune's: a live client's lease never lapses and lasts its ttl; a client that died owning nothing leaves the
    registry within about a lease period, a live one owning nothing never does; one that died owning a slot
    stays (recover() needs it); an item a dead consumer took goes back to its channel's head with no call of
    anyone's; the thread ends by itself once the pool is unlinked."""
    import time

    import redis

    from fastalloc_shm import RedisPool
    from fastalloc_shm._redis_scripts import lease_key, pool_keys

    raw = redis.Redis.from_url(redis_url)
    clients = pool_keys(pool_name)[6]
    pool = RedisPool.create(pool_name, url=redis_url, capacity=4, lease_ttl=0.3)
    try:
        mine = pool.allocate("mine")
        me = pool._client_id
        lease = lease_key(pool_name, me)
        assert 0 < raw.pttl(lease) <= 300 and raw.smembers(clients) == {str(me).encode()}
        for _ in range(30):  # 1.5 s: five lease periods, the lease never gone between refreshes
            assert raw.pttl(lease) > 0, "the lease lapsed between two refreshes"
            time.sleep(0.05)
        # A live client owning nothing, whose own refresh (every 1.7 s) would hide a wrong prune for long.
        idle = RedisPool.attach(pool_name, url=redis_url, lease_ttl=5)
        idle.release(idle.allocate("registered"))
        todo = pool.channel("todo")
        todo.put_many(["first", "second"])
        _die_as_a_client(pool, keep_a_slot=True)
        _die_as_a_client(pool, keep_a_slot=False)
        _die_as_a_client(pool, keep_a_slot=False, take_from="todo")
        assert len(raw.smembers(clients)) == 5 and len(todo) == 1
        # Their leases expire after 0.3 s; the prune runs every third refresh (0.1 s apart).
        _wait_for(lambda: len(raw.smembers(clients)) == 3, 3.0, "a dead client owning nothing was never pruned")
        assert len(todo) == 2 and todo.get() == "first", "the dead consumer's item did not go back to the head"
        for _ in range(50):  # 1 s of prunes: the dead owner of a slot stays, and so do the live clients
            registered = {int(c) for c in raw.smembers(clients)}
            assert {me, idle._client_id} <= registered and len(registered) == 3
            time.sleep(0.02)
        idle.close()
        report = pool.recover()
        assert report.orphans_kept == 1 and len(report.dead_clients) == 1 and report.dead_clients[0] != me
        assert pool.get(mine) == "mine"
        assert _lease_thread(pool_name), "the lease thread stopped while the pool exists"
        pool.unlink()
        _wait_for(lambda: not _lease_thread(pool_name), 2.0, "the lease thread outlived its pool")
    finally:
        pool.close()
        raw.close()


def test_a_redis_clients_goodbye_ends_its_lease_and_unregisters_it_unless_it_owns_slots(redis_url, pool_name):
    """Kills redis_pool.py's _farewell mutants (its pid check, the join, the GOODBYE and its arguments) and
    close()'s: closing a client ends its lease and its thread at once; it leaves the registry if it owns
    nothing, and stays registered (for recover()) if it still owns a slot."""
    import redis

    from fastalloc_shm import RedisPool
    from fastalloc_shm._redis_scripts import lease_key, pool_keys

    raw = redis.Redis.from_url(redis_url)
    clients = pool_keys(pool_name)[6]
    try:
        with RedisPool.create(pool_name, url=redis_url, capacity=4) as pool:
            pool.allocate("the creator's")
            holder = RedisPool.attach(pool_name, url=redis_url, lease_ttl=5)
            kept = holder.allocate("handed on")
            holder_id = holder._client_id
            thread = _lease_thread(pool_name)[-1]
            holder.close()
            assert not thread.is_alive(), "close() returned before the lease thread ended"
            assert raw.exists(lease_key(pool_name, holder_id)) == 0
            assert str(holder_id).encode() in raw.smembers(clients), "a client owning a slot left the registry"
            quitter = RedisPool.attach(pool_name, url=redis_url, lease_ttl=5)
            quitter.release(quitter.allocate("gone"))
            quitter_id = quitter._client_id
            quitter.close()
            assert raw.exists(lease_key(pool_name, quitter_id)) == 0
            assert str(quitter_id).encode() not in raw.smembers(clients)
            quitter.close()  # idempotent
            # The pool's meta key replaced by a key of another type while a client is open: its goodbye's
            # error (WRONGTYPE) is no reason for close() to fail.
            doomed = RedisPool.attach(pool_name, url=redis_url)
            doomed.allocate("registered")
            meta = pool_keys(pool_name)[0]
            record = raw.hgetall(meta)
            raw.delete(meta)
            raw.set(meta, "someone else's")
            try:
                doomed.close()
            finally:
                raw.delete(meta)
                raw.hset(meta, mapping=record)
            assert pool.get(kept) == "handed on"
            assert pool.recover(orphan_policy="reclaim").orphans_reclaimed == 1
    finally:
        raw.close()


def test_a_redis_allocation_given_up_on_is_freed_by_the_lease_thread_or_at_goodbye(pool_name, caplog):
    """Kills redis_pool.py's _keep_lease mutants around a failed refresh (logged, retried, not the end) and
    its settling of abandoned allocations, _farewell's settling, and _settle's: an allocation whose reply
    never came (RedisUnavailable) ran all the same; nobody holds its handle, so the lease thread frees it
    once the server answers again, without any call of the user's, and a client that closes first frees
    it in its goodbye."""
    import logging

    import redis

    from fastalloc_shm import IncompatiblePool, RedisPool
    from fastalloc_shm.redis_pool import RedisUnavailable, unlink_pool

    from .redis_servers import faulty_link, redis_server

    with redis_server() as server, faulty_link(server) as link:
        raw = redis.Redis.from_url(server.url)
        in_use = lambda: int(raw.hget(f"{{fastalloc.{pool_name}}}:meta", "in_use"))  # noqa: E731
        url = link.url("?socket_timeout=0.3")

        def attach_and_lose_a_reply():
            """A client with a long lease (its thread will not settle soon) whose allocation heard no reply."""
            client = RedisPool.attach(pool_name, url=url, lease_ttl=60)
            client.allocate("registered")
            link.black_hole(True)
            with pytest.raises(RedisUnavailable):
                client.allocate("lost reply")
            link.black_hole(False)
            return client

        try:
            with RedisPool.create(pool_name, url=url, capacity=8, lease_ttl=0.3) as pool, \
                    caplog.at_level(logging.WARNING, logger="fastalloc_shm.redis_pool"):
                kept = pool.allocate("kept")
                link.black_hole(True)
                with pytest.raises(RedisUnavailable):
                    pool.allocate("lost reply")
                assert in_use() == 2  # it ran
                _wait_for(lambda: any(r.getMessage().startswith("fastalloc-shm: lease refresh failed, retrying in 0.10 s:"
                                                                 f" Redis at 127.0.0.1:{link.port} is unavailable")
                                      for r in caplog.records), 5.0, "a failed refresh was not logged")
                link.black_hole(False)
                # Freed (ABANDON), then struck off the list: the two steps are seen done, not half.
                _wait_for(lambda: in_use() == 1 and not pool._abandoned, 5.0,
                          "the lease thread never freed the abandoned slot")
                assert _lease_thread(pool_name), "a failed refresh ended the thread"
                assert pool.get(kept) == "kept"
                # A client whose thread will not settle soon calls again: that call frees it first.
                busy = attach_and_lose_a_reply()
                assert in_use() == 3 and len(busy._abandoned) == 1
                busy.allocate("next")
                assert in_use() == 3 and busy._abandoned == []  # one freed, one taken
                busy.close()
                # One that closes first: its goodbye frees its abandoned slot.
                late = attach_and_lose_a_reply()
                assert in_use() == 5 and len(late._abandoned) == 1
                late.close()
                assert in_use() == 4  # its abandoned slot freed; its live one kept (handed on, maybe)
                # The pool unlinked while a client still has a call to settle: its goodbye finds nothing to
                # free and closes quietly.
                # The pool's meta key replaced by a key of another type while a call waits to be settled: the
                # next call says the pool is damaged (the settling's own error is no reason to fail otherwise).
                damaged = attach_and_lose_a_reply()
                meta = f"{{fastalloc.{pool_name}}}:meta"
                record = raw.hgetall(meta)
                raw.delete(meta)
                raw.set(meta, "someone else's")
                with pytest.raises(IncompatiblePool, match="replaced by one of another type"):
                    damaged.allocate("into a damaged pool")
                raw.delete(meta)
                raw.hset(meta, mapping=record)
                damaged.close()
                gone = attach_and_lose_a_reply()
                unlink_pool(pool_name, url)
                gone.close()
                # A client that cannot reach the server at all when it closes: its goodbye fails quietly.
                cut_off = RedisPool.create(pool_name, url=url, capacity=1, lease_ttl=60)
                cut_off.allocate("registered")
                link.black_hole(True)
                try:
                    cut_off.close()
                finally:
                    link.black_hole(False)
                unlink_pool(pool_name, url)
            # Every key went with the pool: no record of a lane outside the pool's keys (a new lane after a
            # lost reply included).
            assert raw.dbsize() == 0, sorted(raw.keys("*"))
        finally:
            raw.close()


def test_a_redis_pools_channels_open_by_name_and_a_closed_pools_channel_says_closed(redis_url, pool_name):
    """Kills redis_pool.py's channel mutants (the name unchecked or not passed on, another channel's number)
    and _ClosedConnection._refuse's (its message): a pool's channels are told apart by name, reopened by
    name, refused a bad name; a channel of a pool closed in this process says the pool is closed."""
    from fastalloc_shm import ConfigError, FastallocError, RedisPool

    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool:
        todo, done = pool.channel("todo"), pool.channel("done")
        assert (todo.name, done.name) == ("todo", "done")
        todo.put("a job")
        done.put("a result")
        done.put("another")
        assert (len(pool.channel("todo")), len(done)) == (1, 2)
        assert pool.channel("todo").get() == "a job" and done.get() == "a result"
        assert set(pool.statistics().channels) == {"todo", "done"}
        with pytest.raises(ConfigError, match="at most 31 bytes"):
            pool.channel("x" * 32)
        with pytest.raises(ValueError):
            pool.channel("bad/name")
        done.get()
        pool.close()
        with pytest.raises(FastallocError) as raised:
            len(done)
        assert str(raised.value) == f"pool {pool_name!r} is closed in this process; attach again to use it"
        with pytest.raises(FastallocError, match="is closed in this process"):
            pool.channel("todo")


def test_a_redis_pool_in_a_forked_child_registers_as_a_new_client_with_its_own_records(redis_url, pool_name):
    """Kills redis_pool.py's _after_fork_in_child and _forget_client mutants, which mutmut reaches through no
    test (they run in forked children, which it does not see): the hook runs here as a forked child's would.
    The child is a new client: no client id, no finalizer of the parent's (closing must not end the parent's
    lease), new request lanes and no share of the parent's abandoned calls; its first allocation registers it."""
    import redis

    from fastalloc_shm import RedisPool
    from fastalloc_shm import redis_pool as module
    from fastalloc_shm._redis_scripts import lease_key, pool_keys

    raw = redis.Redis.from_url(redis_url)
    pool = RedisPool.create(pool_name, url=redis_url, capacity=4, lease_ttl=5)
    try:
        parents = pool.allocate("the parent's")
        parent_id, parent_lanes, parent_abandoned = pool._client_id, pool._lane_prefix, pool._abandoned
        parent_lane = pool._lane()
        module._after_fork_in_child()
        assert pool._client_id is None and pool._farewell is None
        assert pool._lane_prefix != parent_lanes and pool._lane() != parent_lane
        assert pool._abandoned == [] and pool._abandoned is not parent_abandoned
        childs = pool.allocate("the child's")
        assert pool._client_id not in (None, parent_id)
        owners = raw.hgetall(pool_keys(pool_name)[3])
        from fastalloc_shm.handle import unpack

        assert int(owners[str(unpack(parents)[0]).encode()]) == parent_id
        assert int(owners[str(unpack(childs)[0]).encode()]) == pool._client_id
        pool.close()  # the child's goodbye: the parent's lease (the parent's to end) stays
        assert raw.exists(lease_key(pool_name, parent_id)) == 1
    finally:
        pool.unlink()  # ends the parent's lease thread, which nothing here can stop now
        pool.close()
        _wait_for(lambda: not _lease_thread(pool_name), 8.0, "the parent's lease thread outlived the pool")
        raw.close()


class _RedisJob(msgspec.Struct):
    id: int
    tags: list[str] = []


class _RedisOtherJob(msgspec.Struct):
    id: str


def test_a_redis_attacher_keeps_its_value_type_and_durability_through_attach_and_pickle(redis_url, pool_name):
    """Kills redis_pool.py's attach mutants that drop value_type or durability on the way to the instance,
    _check_value_type's (the check skipped or inverted, its message) and _attach_pickled's: an attacher
    naming the pool's type gets that type back (so does its pickle); one naming another type is refused,
    naming the pool and the difference; an attacher asking replicas:1 of a server that has none hears that
    its write was not confirmed (so does its pickle)."""
    import pickle

    from fastalloc_shm import IncompatiblePool, RedisPool
    from fastalloc_shm._redis_errors import RedisNotDurable
    from fastalloc_shm._value_types import difference, schema_of

    with RedisPool.create(pool_name, url=redis_url, capacity=4, value_type=_RedisJob) as pool:
        handle = pool.allocate(_RedisJob(1, ["a"]))
        with RedisPool.attach(pool_name, url=redis_url, value_type=_RedisJob) as typed:
            assert typed.get(handle) == _RedisJob(1, ["a"]) and typed.value_type is _RedisJob
            with pickle.loads(pickle.dumps(typed)) as clone:
                assert clone.get(handle) == _RedisJob(1, ["a"])
        with RedisPool.attach(pool_name, url=redis_url) as plain:
            assert plain.get(handle) == {"id": 1, "tags": ["a"]}
        with pytest.raises(IncompatiblePool) as raised:
            RedisPool.attach(pool_name, url=redis_url, value_type=_RedisOtherJob)
        wanted = difference(schema_of(_RedisJob), schema_of(_RedisOtherJob))
        assert str(raised.value) == f"pool {pool_name!r}: {wanted}" and wanted
        slow = redis_url + "?socket_timeout=1"
        with RedisPool.attach(pool_name, url=slow, durability="replicas:1", value_type=_RedisJob) as durable:
            with pytest.raises(RedisNotDurable):
                durable.set(handle, _RedisJob(2))  # applied, but no replica confirms it
            with pickle.loads(pickle.dumps(durable)) as clone, pytest.raises(RedisNotDurable):
                clone.set(handle, _RedisJob(3))
        with RedisPool.create(pool_name, url=slow, capacity=4, value_type=_RedisJob, exist_ok=True,
                              durability="replicas:1") as durable, pytest.raises(RedisNotDurable):
            durable.set(handle, _RedisJob(3))
        assert pool.get(handle) == _RedisJob(3)


def test_a_redis_pools_reset_statistics_zeroes_its_channels_counters_too(redis_url, pool_name):
    """Kills redis_pool.py's reset_statistics mutants of the channels' reset (script, channel numbers, keys)."""
    from fastalloc_shm import RedisPool

    with RedisPool.create(pool_name, url=redis_url, capacity=8) as pool:
        first, second = pool.channel("first"), pool.channel("second")
        first.put_many([1, 2, 3])
        first.get()
        second.put("x")
        before = pool.statistics().channels
        assert (before["first"].puts, before["first"].gets, before["second"].puts) == (3, 1, 1)
        pool.reset_statistics()
        after = pool.statistics().channels
        assert (after["first"].puts, after["first"].gets, after["first"].length) == (0, 0, 2)
        assert (after["second"].puts, after["second"].length) == (0, 1)
        assert pool.statistics().total_allocations == 0 and len(pool) == 3


def test_a_redis_recover_puts_a_dead_consumers_items_back_and_reclaims_by_cursor(redis_url, pool_name):
    """Kills redis_pool.py's recover mutants around the requeue (its arguments, its request ids, its count in
    the report) and the reclaim steps (the cursor's start, the sum of the steps, the leases checked): a
    consumer that died holding an item taken by handle has it put back at the head; a dead client's 600 slots,
    more than one step's walk, are all reclaimed and counted; a client judged dead whose lease is back before
    the reclaim runs is alive after all and keeps its slots."""
    import time

    import redis

    from fastalloc_shm import IncompatiblePool, RedisPool, StaleHandle
    from fastalloc_shm._redis_scripts import RECLAIM, lease_key

    with RedisPool.create(pool_name, url=redis_url, capacity=1000) as pool:
        todo = pool.channel("todo")
        todo.put_many(["first", "second", *range(299)])
        pid = os.fork()
        if pid == 0:
            try:
                consumer = RedisPool.attach(pool_name, url=redis_url, lease_ttl=0.2)
                for _ in range(300):  # more taken items than one step's walk (250): HSCAN by cursor, steps summed
                    consumer.channel("todo").get_handle(timeout=0)
                consumer.allocate_many(range(600))
            finally:
                os._exit(0)  # dies holding 300 items and 600 slots, no goodbye
        assert os.waitpid(pid, 0)[1] == 0
        live = todo.get_handle(timeout=0)  # taken by a live consumer: never put back
        time.sleep(0.4)  # its lease expires (this process's lease thread, 10 s, prunes nothing meanwhile)
        report = pool.recover()
        assert (report.requeued, report.orphans_kept, len(report.dead_clients)) == (300, 600, 1)
        assert pool.get(live) == 298
        back = todo.get_many(300, timeout=0)
        assert len(back) == 300 and set(map(str, back)) == {"first", "second", *map(str, range(298))}
        pool.release(live)
        (dead,) = report.dead_clients
        # The dead client comes back (its lease renewed) between recover's check and its reclaim steps.
        run = pool._conn.run

        def revive_then_run(script, keys, args):
            if script is RECLAIM:
                pool._command("SET", lease_key(pool_name, dead), 1, "PX", 5000)
            return run(script, keys, args)

        pool._conn.run = revive_then_run
        try:
            revived = pool.recover(orphan_policy="reclaim")
        finally:
            pool._conn.run = run
        assert revived.orphans_reclaimed == 0 and len(pool) == 600
        pool._command("DEL", lease_key(pool_name, dead))
        report = pool.recover(orphan_policy="reclaim")
        assert (report.orphans_reclaimed, report.dead_clients) == (600, (dead,)) and len(pool) == 0
        with pytest.raises(StaleHandle):
            pool.get(1 << 32)  # slot 0, generation 1: a reclaimed slot's handle is stale
        # A recover() that finds the pool's meta key replaced by a key of another type names the pool.
        raw = redis.Redis.from_url(redis_url)
        meta = f"{{fastalloc.{pool_name}}}:meta"
        record = raw.hgetall(meta)
        raw.delete(meta)
        raw.set(meta, "someone else's")
        try:
            with pytest.raises(IncompatiblePool) as raised:
                pool.recover()
            assert str(raised.value).startswith(f"a key of pool {pool_name!r} on Redis at ")
        finally:
            raw.delete(meta)
            raw.hset(meta, mapping=record)
            raw.close()


def _unlink_the_pool_then_fail(previous):
    _POOL_TO_UNLINK[0].unlink()
    raise RuntimeError("reset failed")


_POOL_TO_UNLINK: list = []


def test_a_redis_acquire_names_an_unreadable_previous_value_and_a_failing_reset_wins_over_a_lost_pool(
        redis_url, pool_name):
    """Kills redis_pool.py's _decode_previous mutants (the slot's index in the error) and _return_slot's (the
    release of a slot whose reset failed, in a pool unlinked meanwhile, must not hide the reset's error), and
    _command's (a command's error names the pool and the server)."""
    import redis

    from fastalloc_shm import IncompatiblePool, RedisPool
    from fastalloc_shm._redis_scripts import pool_keys
    from fastalloc_shm.errors import SerializationError
    from fastalloc_shm.handle import unpack

    raw = redis.Redis.from_url(redis_url)
    try:
        with RedisPool.create(pool_name, url=redis_url, capacity=1, reset=(_new_list, _unchanged)) as pool:
            handle = pool.acquire()
            index = unpack(handle)[0]
            pool.release(handle)
            raw.hset(pool_keys(pool_name)[4], str(index), b"\xc1")
            with pytest.raises(SerializationError) as raised:
                pool.acquire()
            assert str(raised.value).startswith(f"slot {index} of pool {pool_name!r} holds bytes msgpack cannot")
            assert len(pool) == 0  # the slot went back
            raw.delete(pool_keys(pool_name)[6])
            raw.set(pool_keys(pool_name)[6], "not a set")
            with pytest.raises(IncompatiblePool) as raised:
                pool.recover()
            assert f"pool {pool_name!r}" in str(raised.value) and redis_url.split("/")[2] in str(raised.value)
            raw.delete(pool_keys(pool_name)[6])
        with RedisPool.create(pool_name, url=redis_url, capacity=1,
                              reset=(_new_list, _unlink_the_pool_then_fail)) as pool:
            pool.release(pool.acquire())
            _POOL_TO_UNLINK[:] = [pool]
            with pytest.raises(RuntimeError, match="reset failed"):
                pool.acquire()
    finally:
        _POOL_TO_UNLINK.clear()
        raw.close()


def test_a_redis_allocate_with_a_timeout_backs_off_and_a_thread_keeps_one_record_key(pool_name):
    """Kills redis_pool.py's allocate mutant whose pause shrinks instead of doubling (a full pool polled
    hundreds of times a second), _allocate's whose PoolExhausted does not name the pool, and _lane's that
    make a new record key per call (each a key left on the server for a lease period): one thread's calls
    share one record key, another thread gets its own."""
    import threading

    import redis

    from fastalloc_shm import PoolExhausted, RedisPool
    from fastalloc_shm._redis_scripts import ALLOCATE, record_prefix

    from .redis_servers import redis_server

    with redis_server() as server:
        raw = redis.Redis.from_url(server.url)
        try:
            with RedisPool.create(pool_name, url=server.url, capacity=1) as pool:
                kept = pool.allocate("the only slot")
                run, calls = pool._conn.run, []

                def counted(script, keys, args):
                    calls.append(script is ALLOCATE)
                    return run(script, keys, args)

                pool._conn.run = counted
                with pytest.raises(PoolExhausted) as raised:
                    pool.allocate("no room", timeout=0.5)
                pool._conn.run = run
                assert str(raised.value).startswith(f"pool {pool_name!r} is full (1/1 slots in use)")
                # Pauses of 1, 2, 4 ... 50 ms: about 16 tries in 0.5 s.
                assert 5 <= sum(calls) <= 40, sum(calls)
                for n in range(20):
                    pool.set(kept, n)
                lanes = lambda: {k for k in raw.keys(record_prefix(pool_name) + "*") if b":create:" not in k}  # noqa: E731
                assert len(lanes()) == 1, sorted(lanes())
                thread = threading.Thread(target=lambda: [pool.set(kept, n) for n in range(5)])
                thread.start()
                thread.join()
                assert len(lanes()) == 2
        finally:
            raw.close()


def test_a_redis_pools_repr_says_cluster_and_a_typed_slot_of_another_shape_says_so(redis_url, pool_name):
    """Kills redis_pool.py's __repr__ mutants of the cluster marker (on a pool whose __init__ never ran, as
    repr must work then) and _unpack's (the message of a slot whose value is not of the pool's type)."""

    from fastalloc_shm import RedisPool
    from fastalloc_shm.errors import SerializationError

    half = RedisPool.__new__(RedisPool)
    half._name, half._url, half._cluster = "jobs", "redis://node1:7000/0", True
    assert repr(half) == "<RedisPool 'jobs' at redis://node1:7000/0 (cluster), slot_size=0, attached, closed>"
    with RedisPool.create(pool_name, url=redis_url, capacity=2, value_type=_RedisJob) as pool:
        handle = pool.allocate(_RedisJob(1))
        index = _overwrite_slot(redis_url, pool_name, handle, msgspec.msgpack.encode({"id": "not an int"}))
        with pytest.raises(SerializationError) as raised:
            pool.get(handle)
        assert str(raised.value).startswith(f"slot {index} of pool {pool_name!r} holds a value not of its value_type (")
        assert str(raised.value).endswith("); set() it again")


def test_a_redis_pools_unlink_takes_its_own_keys_only_closed_or_not_and_names_what_fails(pool_name, make_name):
    """Kills redis_pool.py's unlink mutants of a closed pool (its own connection, its incarnation), _unlink's
    (the records looked for under any name, a channel's first key left, its errors' messages) and _pack's
    (its messages, a value of exactly slot_size refused), _run's (a stale get's message without the pool's name):
    unlinking a pool deletes every key it had (channels, records, leases) and no key of another pool; a closed
    pool unlinks too, but not the pool created again under its name."""
    import redis

    from fastalloc_shm import IncompatiblePool, PoolNotFound, RedisPool, StaleHandle
    from fastalloc_shm._redis_scripts import pool_keys
    from fastalloc_shm.errors import SerializationError, ValueTooLarge
    from fastalloc_shm.redis_pool import unlink_pool

    from .redis_servers import redis_server

    with redis_server() as server:
        raw = redis.Redis.from_url(server.url)
        url, other_name = server.url, make_name()
        try:
            with RedisPool.create(other_name, url=url, capacity=2) as other:
                other.release(other.allocate("registered"))  # a lease, a record of its own
                before = set(raw.keys("*"))
                pool = RedisPool.create(pool_name, url=url, capacity=4, slot_size=8)
                todo = pool.channel("todo")
                todo.put(1)
                handle = pool.allocate(b"123456")  # bin 8 header: exactly 8 bytes, fits
                with pytest.raises(ValueTooLarge) as raised:
                    pool.allocate(b"1234567")
                assert str(raised.value) == (f"value packs to 9 bytes but pool {pool_name!r} has slot_size 8; store"
                                             " less, or create the pool with a larger slot_size")
                with pytest.raises(SerializationError) as raised:
                    pool.allocate({1, 2})
                assert str(raised.value).startswith(f"pool {pool_name!r}: cannot pack set with msgpack (")
                pool.release(handle)
                with pytest.raises(StaleHandle) as raised:
                    pool.get(handle)
                assert str(raised.value).startswith(f"handle {handle} of pool {pool_name!r} is stale")
                pool.close()
                pool.unlink()  # closed: on a connection of its own
                assert set(raw.keys("*")) == before, "unlink left a key of its pool or took another pool's"
                with pytest.raises(PoolNotFound):
                    RedisPool.attach(pool_name, url=url)
                again = RedisPool.create(pool_name, url=url, capacity=1)
                again.allocate("the new pool's")
                pool.unlink()  # the closed old pool's unlink leaves the new one alone
                assert len(again) == 1
                meta = raw.hgetall(pool_keys(pool_name)[0])
                raw.delete(pool_keys(pool_name)[0])
                raw.set(pool_keys(pool_name)[0], "not a pool's")
                with pytest.raises(IncompatiblePool) as raised:
                    unlink_pool(pool_name, url)  # never deletes a key it did not make
                assert str(raised.value) == (
                    f"key '{pool_keys(pool_name)[0]}' on Redis at 127.0.0.1:{server.port} is a string that fastalloc-shm"
                    f" did not create, under the name of pool {pool_name!r}; pick another pool name or delete that key")
                raw.delete(pool_keys(pool_name)[0])
                raw.hset(pool_keys(pool_name)[0], mapping=meta)
                again.close()
                assert unlink_pool(pool_name, url) and set(raw.keys("*")) == before
        finally:
            raw.close()


def test_a_redis_pool_replaced_by_a_foreign_key_while_attaching_is_named_in_the_error(redis_url, pool_name,
                                                                                     monkeypatch):
    """Kills redis_pool.py's __init__ mutants of the greeting's error (the pool's name, the error itself): the
    pool's meta key replaced by a key of another type between attach's describe and its greeting (forced here
    at the greeting) is an IncompatiblePool naming the pool and the server."""
    import redis

    from fastalloc_shm import IncompatiblePool, RedisPool
    from fastalloc_shm._redis_connection import Connection
    from fastalloc_shm._redis_scripts import pool_keys

    raw = redis.Redis.from_url(redis_url)
    meta = pool_keys(pool_name)[0]
    greet = Connection.greet

    def replaced_first(self, script, keys, args):
        raw.delete(meta)
        raw.set(meta, "someone else's")
        return greet(self, script, keys, args)

    try:
        with RedisPool.create(pool_name, url=redis_url, capacity=1):
            record = raw.hgetall(meta)
            monkeypatch.setattr(Connection, "greet", replaced_first)
            with pytest.raises(IncompatiblePool) as raised:
                RedisPool.attach(pool_name, url=redis_url)
            monkeypatch.setattr(Connection, "greet", greet)
            assert str(raised.value).startswith(
                f"a key of pool {pool_name!r} on Redis at {redis_url.split('/')[2]} was replaced by one of another type")
            raw.delete(meta)
            raw.hset(meta, mapping=record)  # the pool back, for its creator to unlink
    finally:
        raw.close()


def test_a_redis_pools_create_checks_what_it_is_given_and_says_what_it_found(redis_url, pool_name, make_name):
    """Kills redis_pool.py's create mutants of its checks (durability, the index limit, its message), of its
    refusals' messages (an existing pool, a foreign key under the name, another config or type under
    exist_ok) and of what an exist_ok attacher keeps (its url, its value type)."""
    import redis

    from fastalloc_shm import ConfigError, IncompatiblePool, PoolExistsError, PoolNotFound, RedisPool
    from fastalloc_shm._redis_scripts import INDEX_LIMIT, pool_keys

    address = redis_url.split("/")[2]
    with pytest.raises(ConfigError, match=r"^durability: expected None, 'aof' or 'replicas:N'"):
        RedisPool.create(pool_name, url=redis_url, capacity=1, durability="sometimes")
    with pytest.raises(ConfigError, match=r"^durability: 'aof' waits with WAITAOF, which Redis at "):
        RedisPool.create(pool_name, url=redis_url, capacity=1, durability="aof")  # this server is 7.0
    with pytest.raises(ConfigError) as raised:
        RedisPool.create(pool_name, url=redis_url, capacity=INDEX_LIMIT + 1)
    assert str(raised.value) == f"capacity: {INDEX_LIMIT + 1} slots is more than a pool can index ({INDEX_LIMIT})"
    with RedisPool.create(pool_name, url=redis_url, capacity=INDEX_LIMIT) as biggest:
        assert biggest.capacity == INDEX_LIMIT  # the limit itself is allowed (nothing is laid out in advance)
    with RedisPool.create(pool_name, url=redis_url, capacity=2, value_type=_RedisJob) as pool:
        with pytest.raises(PoolExistsError) as raised:
            RedisPool.create(pool_name, url=redis_url, capacity=2)
        assert str(raised.value) == (f"pool {pool_name!r} already exists on Redis at {address}; attach to it with"
                                     " RedisPool.attach(), pass exist_ok=True, or unlink it first")
        with pytest.raises(IncompatiblePool) as raised:
            RedisPool.create(pool_name, url=redis_url, capacity=3, exist_ok=True, value_type=_RedisJob)
        assert str(raised.value).startswith(f"pool {pool_name!r} on Redis at {address} exists with capacity")
        assert str(raised.value).endswith("; attach to it as it is (RedisPool.attach), or pick another name")
        with pytest.raises(IncompatiblePool) as raised:
            RedisPool.create(pool_name, url=redis_url, capacity=2, exist_ok=True, value_type=_RedisOtherJob)
        assert str(raised.value).startswith(f"pool {pool_name!r}: ")
        with RedisPool.create(pool_name, url=redis_url, capacity=2, exist_ok=True, value_type=_RedisJob) as same:
            handle = same.allocate(_RedisJob(7))
            assert pool.get(handle) == _RedisJob(7) and same.get(handle) == _RedisJob(7)
            assert repr(same) == f"<RedisPool {pool_name!r} at {redis_url}, slot_size=256, attached>"
            same.close()
            same.unlink()  # closed: by its url
        with pytest.raises(PoolNotFound):
            pool.get(handle)
    foreign = make_name()
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(pool_keys(foreign)[0], "someone else's")
        with pytest.raises(IncompatiblePool) as raised:
            RedisPool.create(foreign, url=redis_url, capacity=1)
        assert f"under the name of pool {foreign!r}" in str(raised.value)
    finally:
        raw.delete(pool_keys(foreign)[0])
        raw.close()


@pytest.mark.parametrize(("version", "policy", "durability", "refusal"), [
    ("6.2.14", "noeviction", None, "server: Redis at {where} is version 6.2.14; RedisPool needs Redis >= 7.0 (script"
                                   " flags keep reads working at maxmemory); upgrade the server"),
    ("7.0.15", "noeviction", "aof", "durability: 'aof' waits with WAITAOF, which Redis at {where} (version 7.0.15) lacks:"
                                    " it needs Redis >= 7.2. Upgrade the server, or use durability='replicas:N' with"
                                    " replicas (or appendfsync always on the server, which makes every write wait for"
                                    " the disk)"),
    ("7.2.0", "noeviction", "aof", None),
    ("255.255.255-a-fork", "noeviction", None, None),  # its own numbering: its scripts will say what they lack
    (None, "noeviction", None, None),
    ("7.0.15", None, None, None),  # no policy reported: the default, noeviction
    ("7.0.15", "volatile-lru", None, "maxmemory-policy: Redis at {where} runs with maxmemory-policy volatile-lru, so"
                                     " under memory pressure it may silently evict a pool's keys or a live client's"
                                     " lease (and recover() would then free slots still in use). Set `maxmemory-policy"
                                     " noeviction` (redis.conf, or CONFIG SET maxmemory-policy noeviction), or pass"
                                     " allow_eviction=True if you accept that risk"),
])
def test_a_redis_server_is_checked_for_version_policy_and_durability_as_it_reports_them(
        redis_url, pool_name, monkeypatch, version, policy, durability, refusal):
    """Kills redis_pool.py's _check_server mutants (the version read, parsed and compared, the fallback for a
    fork's numbering, the default policy, every refusal's message): the real server's INFO, with the version
    and policy fields it reports replaced by those of servers this machine does not run."""
    from fastalloc_shm import ConfigError, RedisPool
    from fastalloc_shm._redis_connection import Connection

    real = Connection.server_info

    def reported(self):
        replies = []
        for where, info in real(self):
            info = dict(info)
            for field, value in (("redis_version", version), ("maxmemory_policy", policy)):
                if value is None:
                    info.pop(field, None)
                else:
                    info[field] = value
            replies.append((where, info))
        return replies

    monkeypatch.setattr(Connection, "server_info", reported)
    monkeypatch.setattr(Connection, "require", lambda self, durability: None)  # no WAITAOF on this 7.0 server
    if refusal is None:
        with RedisPool.create(pool_name, url=redis_url, capacity=1, durability=durability) as pool:
            assert pool.capacity == 1
        return
    with pytest.raises(ConfigError) as raised:
        RedisPool.create(pool_name, url=redis_url, capacity=1, durability=durability)
    assert str(raised.value) == refusal.format(where=redis_url.split("/")[2])


@pytest.mark.parametrize(("field", "value", "accepted"), [
    ("durability", "replicas:1", True), ("durability", "replicas:12", True), ("durability", "aof", True),
    ("durability", "replicas:0", False), ("durability", "replicas:x", False), ("durability", "replicas", False),
    ("durability", "replica:1", False), ("durability", "1:replicas", False), ("durability", "", False),
    ("lease_ttl", 0.1, True), ("lease_ttl", 0.099, False), ("lease_ttl", float("inf"), False),
    ("lease_ttl", True, False), ("lease_ttl", "10", False),
])
def test_a_redis_pools_durability_and_lease_ttl_are_checked_before_any_connection(field, value, accepted):
    """Kills redis_pool.py's _check_durability and _check_lease_ttl mutants: what each accepts and refuses,
    at its bounds, checked before the url is even tried (this one has no server)."""
    from fastalloc_shm import ConfigError, RedisPool
    from fastalloc_shm.redis_pool import RedisUnavailable

    url = "redis://127.0.0.1:1/0"  # nothing listens: an accepted value fails only later, on the connection
    expected = RedisUnavailable if accepted else ConfigError
    with pytest.raises(expected) as raised:
        RedisPool.attach("checked", url=url, **{field: value})
    if not accepted:
        assert str(raised.value).startswith(f"{field}: ")

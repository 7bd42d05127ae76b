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

"""FixedPool's public API, one behaviour per test, on real shared memory."""

import os
import pickle
import re
import stat
import subprocess
import sys

import pytest

from fastalloc_shm import (
    ConfigError,
    FixedPool,
    GrowingPool,
    IncompatiblePool,
    InvalidHandle,
    PoolConfig,
    PoolExhausted,
    PoolExistsError,
    PoolNotFound,
    SerializationError,
    StaleHandle,
    ValueTooLarge,
    attach,
    unlink,
)
from fastalloc_shm.handle import unpack


@pytest.fixture
def pool(pool_name):
    with FixedPool.create(pool_name, capacity=8, slot_size=128) as p:
        yield p


def shm_entries(name):
    return sorted(e for e in os.listdir("/dev/shm") if f"fastalloc.{name}" in e)


def test_allocate_then_get_returns_an_equal_fresh_object(pool):
    value = {"id": 1, "tags": [1, 2]}
    h = pool.allocate(value)
    got = pool.get(h)
    assert got == value and got is not value


def test_handles_are_nonzero_ints_with_generation_one(pool):
    h = pool.allocate("x")
    assert isinstance(h, int) and h != 0
    assert unpack(h)[1] == 1


def test_set_replaces_in_place(pool):
    h = pool.allocate({"id": 1})
    pool.set(h, {"id": 2})
    assert pool.get(h) == {"id": 2}


def test_release_makes_handle_stale(pool):
    h = pool.allocate(1)
    pool.release(h)
    with pytest.raises(StaleHandle, match="released"):
        pool.get(h)
    with pytest.raises(StaleHandle):
        pool.set(h, 2)


def test_double_release_is_stale(pool):
    h = pool.allocate(1)
    pool.release(h)
    with pytest.raises(StaleHandle):
        pool.release(h)


def test_reused_slot_gets_a_new_generation(pool):
    h1 = pool.allocate(1)
    pool.release(h1)
    h2 = pool.allocate(2)
    assert unpack(h1)[0] == unpack(h2)[0] and h1 != h2
    with pytest.raises(StaleHandle):
        pool.get(h1)
    assert pool.get(h2) == 2


@pytest.mark.parametrize("garbage", [0, -5, 7, 1 << 70, (1 << 32) | 10_000, "h", 2.5, None])
def test_garbage_handles_are_invalid(pool, garbage):
    for op in (pool.get, pool.release, lambda h: pool.set(h, 1), pool.buffer):
        with pytest.raises(InvalidHandle):
            op(garbage)


def test_exhaustion_raises_and_try_allocate_returns_none(pool):
    handles = [pool.allocate(i) for i in range(8)]
    with pytest.raises(PoolExhausted, match="full .8/8"):
        pool.allocate(9)
    assert pool.try_allocate(9) is None
    assert pool.statistics().allocation_failures == 2
    pool.release(handles[0])
    assert pool.try_allocate(9) is not None


def test_value_too_large_names_the_sizes_and_leaks_nothing(pool):
    with pytest.raises(ValueTooLarge, match="202 bytes but slots hold 128"):
        pool.allocate(b"x" * 200)
    h = pool.allocate(1)
    with pytest.raises(ValueTooLarge):
        pool.set(h, "y" * 500)
    assert pool.get(h) == 1
    assert len(pool) == 1


def test_unpackable_value_is_a_serialization_error_and_leaks_nothing(pool):
    with pytest.raises(SerializationError, match="msgpack"):
        pool.allocate(object())
    with pytest.raises(SerializationError):
        pool.allocate({"big": 1 << 70})
    assert len(pool) == 0
    assert pool.statistics().total_allocations == 0


def test_values_round_trip_through_msgpack(pool):
    for value in [None, True, 0, -1, 2.5, "ünïcode", b"\x00bytes", [1, [2]], {1: "int key", "k": None}]:
        h = pool.allocate(value)
        assert pool.get(h) == value
        pool.release(h)


def test_tuples_come_back_as_lists(pool):
    assert pool.get(pool.allocate((1, 2))) == [1, 2]


def test_allocate_many_and_release_many(pool):
    handles = pool.allocate_many([{"i": i} for i in range(5)])
    assert [pool.get(h) for h in handles] == [{"i": i} for i in range(5)]
    before = pool.statistics().lock_acquisitions
    pool.release_many(handles)
    assert pool.statistics().lock_acquisitions == before + 1
    assert len(pool) == 0


def test_allocate_many_is_all_or_nothing(pool):
    pool.allocate_many(range(6))
    with pytest.raises(PoolExhausted):
        pool.allocate_many(range(3))
    assert len(pool) == 6
    with pytest.raises(ValueTooLarge):
        pool.allocate_many([1, b"x" * 500])
    assert len(pool) == 6


def test_release_many_checks_every_handle_first(pool):
    a, b = pool.allocate_many([1, 2])
    pool.release(b)
    with pytest.raises(StaleHandle):
        pool.release_many([a, b])
    assert pool.get(a) == 1
    with pytest.raises(StaleHandle):
        pool.release_many([a, a])
    assert pool.get(a) == 1


def test_borrowed_releases_on_exit_even_on_error(pool):
    with pytest.raises(RuntimeError):
        with pool.borrowed({"x": 1}) as h:
            assert pool.get(h) == {"x": 1}
            raise RuntimeError
    assert len(pool) == 0
    with pytest.raises(StaleHandle):
        pool.get(h)


def test_buffer_is_a_writable_zero_copy_view(pool):
    h = pool.allocate(b"abc")
    view = pool.buffer(h)
    assert len(view) == 128 and not view.readonly
    view[2:5] = b"xyz"  # after msgpack's 2-byte bin header
    assert pool.get(h) == b"xyz"
    view.release()


def test_len_counts_slots_in_use(pool):
    hs = [pool.allocate(i) for i in range(3)]
    assert len(pool) == 3
    pool.release(hs[0])
    assert len(pool) == 2


def test_properties(pool, pool_name):
    assert (pool.name, pool.capacity, pool.slot_size, pool.kind) == (pool_name, 8, 128, "fixed")
    assert pool_name in repr(pool)
    assert pool.nbytes >= 8 * 128


def test_statistics_follow_operations(pool):
    hs = [pool.allocate(i) for i in range(4)]
    pool.release(hs[0])
    s = pool.statistics()
    assert (s.capacity, s.current_usage, s.peak_usage, s.total_allocations, s.total_deallocations) == (8, 3, 4, 4, 1)
    assert s.lock_acquisitions >= 5
    assert s.utilization_rate() == 37.5 and s.available() == 5


def test_reset_statistics_keeps_usage(pool):
    [pool.allocate(i) for i in range(3)]
    pool.reset_statistics()
    s = pool.statistics()
    assert s.current_usage == 3 and s.peak_usage == 3 and s.allocation_failures == 0


def test_create_existing_raises_unless_exist_ok(pool, pool_name):
    with pytest.raises(PoolExistsError, match="exist_ok"):
        FixedPool.create(pool_name, capacity=8, slot_size=128)
    other = FixedPool.create(pool_name, capacity=8, slot_size=128, exist_ok=True)
    h = pool.allocate("shared")
    assert other.get(h) == "shared"
    other.close()


def test_exist_ok_refuses_an_incompatible_pool(pool, pool_name):
    with pytest.raises(IncompatiblePool, match="slot_size=128"):
        FixedPool.create(pool_name, capacity=8, slot_size=64, exist_ok=True)


def test_create_takes_a_config_and_overrides(pool_name):
    cfg = PoolConfig(capacity=4, slot_size=32)
    with FixedPool.create(pool_name, config=cfg, slot_size=64) as p:
        assert (p.capacity, p.slot_size) == (4, 64)


def test_fixed_pool_refuses_growth_settings(pool_name):
    with pytest.raises(ConfigError, match="GrowingPool"):
        FixedPool.create(pool_name, capacity=4, max_capacity=8)


def test_attach_sees_the_same_slots(pool, pool_name):
    h = pool.allocate([1, 2, 3])
    other = FixedPool.attach(pool_name)
    assert other.get(h) == [1, 2, 3]
    other.release(h)
    with pytest.raises(StaleHandle):
        pool.get(h)
    other.close()


def test_module_attach_picks_the_class_from_the_header(pool_name):
    with GrowingPool.create(pool_name, capacity=2, max_capacity=4) as _:
        p = attach(pool_name)
        assert type(p) is GrowingPool
        p.close()


def test_attach_with_the_wrong_class_is_incompatible(pool_name):
    with GrowingPool.create(pool_name, capacity=2, max_capacity=4):
        with pytest.raises(IncompatiblePool, match="GrowingPool"):
            FixedPool.attach(pool_name)


def test_attach_missing_pool_is_not_found(pool_name):
    with pytest.raises(PoolNotFound, match="create the pool first"):
        FixedPool.attach(pool_name)


def test_unlink_removes_every_system_object(pool_name):
    p = FixedPool.create(pool_name, capacity=4)
    segment, semaphore = shm_entries(pool_name)
    assert segment == f"fastalloc.{pool_name}"
    assert re.fullmatch(rf"sem\.fastalloc\.{re.escape(pool_name)}\.[0-9a-f]{{16}}\.lock", semaphore)
    p.unlink()
    assert shm_entries(pool_name) == []


def test_module_unlink_is_a_quiet_no_op_when_absent(pool_name):
    assert unlink(pool_name) is False
    FixedPool.create(pool_name, capacity=1).close()
    assert unlink(pool_name) is True
    assert shm_entries(pool_name) == []


def test_context_manager_of_creator_unlinks(pool_name):
    with FixedPool.create(pool_name, capacity=1):
        pass
    assert shm_entries(pool_name) == []


def test_context_manager_of_attacher_only_closes(pool, pool_name):
    with FixedPool.attach(pool_name):
        pass
    assert shm_entries(pool_name)


def test_close_is_idempotent_and_safe(pool_name):
    p = FixedPool.create(pool_name, capacity=1)
    p.close()
    p.close()
    unlink(pool_name)


def test_objects_are_created_mode_0600(pool, pool_name):
    for entry in shm_entries(pool_name):
        assert stat.S_IMODE(os.stat(f"/dev/shm/{entry}").st_mode) == 0o600


def test_mode_can_be_widened(pool_name):
    with FixedPool.create(pool_name, capacity=1, mode=0o660):
        assert stat.S_IMODE(os.stat(f"/dev/shm/fastalloc.{pool_name}").st_mode) == 0o660


def test_pickles_as_attach_by_name(pool):
    h = pool.allocate("v")
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.get(h) == "v" and type(clone) is FixedPool
    clone.close()


def test_lazy_creation_touches_no_slot_pages(pool_name):
    import psutil

    rss = psutil.Process().memory_info().rss
    with FixedPool.create(pool_name, capacity=200_000, slot_size=1024) as p:
        grown = psutil.Process().memory_info().rss - rss
        assert grown < 20 * 1024 * 1024, f"creation grew RSS by {grown} bytes for a {p.nbytes}-byte pool"


def test_attach_from_an_unrelated_python_process(pool, pool_name):
    h = pool.allocate({"from": "parent"})
    code = (
        "import sys, fastalloc_shm as f\n"
        "p = f.attach(sys.argv[1]); h = int(sys.argv[2])\n"
        "assert p.get(h) == {'from': 'parent'}\n"
        "p.set(h, {'from': 'child'}); print(p.allocate('new')); p.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, pool_name, str(h)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert pool.get(h) == {"from": "child"}
    assert pool.get(int(out.stdout)) == "new"


def test_resource_tracker_of_an_exiting_process_does_not_unlink(pool, pool_name):
    code = (
        "import sys, multiprocessing.resource_tracker, fastalloc_shm as f\n"
        "p = f.attach(sys.argv[1]); p.allocate(1); p.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, pool_name], check=True, timeout=60)
    assert f"fastalloc.{pool_name}" in shm_entries(pool_name)
    assert pool.get(pool.allocate(2)) == 2


def test_foreign_segment_is_incompatible(pool_name):
    import posix_ipc

    shm = posix_ipc.SharedMemory(f"/fastalloc.{pool_name}", posix_ipc.O_CREX, size=64 * 1024)
    try:
        os.write(shm.fd, os.urandom(64 * 1024))
        with pytest.raises(IncompatiblePool, match="not a fastalloc pool"):
            attach(pool_name)
    finally:
        shm.close_fd()
        shm.unlink()

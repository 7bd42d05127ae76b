"""FixedPool's own behaviour on real shared memory; the contract every backend shares is in test_contract.py."""

import os
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
    attach,
    unlink,
)


@pytest.fixture
def pool(pool_name):
    with FixedPool.create(pool_name, capacity=8, slot_size=128) as p:
        yield p


def shm_entries(name):
    return sorted(e for e in os.listdir("/dev/shm") if f"fastalloc.{name}" in e)


def test_buffer_is_a_writable_zero_copy_view(pool):
    h = pool.allocate(b"abc")
    view = pool.buffer(h)
    assert len(view) == 128 and not view.readonly
    view[2:5] = b"xyz"  # after msgpack's 2-byte bin header
    assert pool.get(h) == b"xyz"
    view.release()


def test_properties(pool, pool_name):
    assert (pool.name, pool.capacity, pool.slot_size, pool.kind) == (pool_name, 8, 128, "fixed")
    assert pool_name in repr(pool)
    assert pool.nbytes >= 8 * 128


def test_fixed_pool_refuses_growth_settings(pool_name):
    with pytest.raises(ConfigError, match="GrowingPool"):
        FixedPool.create(pool_name, capacity=4, max_capacity=8)


def test_module_attach_picks_the_class_from_the_header(pool_name):
    with GrowingPool.create(pool_name, capacity=2, max_capacity=4) as _:
        p = attach(pool_name)
        assert type(p) is GrowingPool
        p.close()


def test_attach_with_the_wrong_class_is_incompatible(pool_name):
    with GrowingPool.create(pool_name, capacity=2, max_capacity=4):
        with pytest.raises(IncompatiblePool, match="GrowingPool"):
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


def test_objects_are_created_mode_0600(pool, pool_name):
    for entry in shm_entries(pool_name):
        assert stat.S_IMODE(os.stat(f"/dev/shm/{entry}").st_mode) == 0o600


def test_mode_can_be_widened(pool_name):
    with FixedPool.create(pool_name, capacity=1, mode=0o660):
        assert stat.S_IMODE(os.stat(f"/dev/shm/fastalloc.{pool_name}").st_mode) == 0o660


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

import pytest

from fastalloc_shm import ConfigError, FixedPool, _names


@pytest.mark.parametrize("bad", ["", "a/b", "white space", "x" * 201, "..", "jobs.lock", "jobs.x3", "ünï"])
def test_bad_names_are_refused_before_any_system_call(bad):
    with pytest.raises(ConfigError, match="name"):
        FixedPool.create(bad, capacity=1)


def test_every_system_object_carries_the_prefix():
    assert _names.segment("jobs") == "/fastalloc.jobs"
    assert _names.semaphore("jobs", 0xAB) == "/fastalloc.jobs.00000000000000ab.lock"
    assert _names.extent("jobs", 2) == "/fastalloc.jobs.x2"


def test_pool_of_entry_skips_locks_and_extents():
    assert _names.pool_of_entry("fastalloc.jobs") == "jobs"
    assert _names.pool_of_entry("fastalloc.jobs.x1") is None
    assert _names.pool_of_entry("sem.fastalloc.jobs.lock") is None
    assert _names.pool_of_entry("other") is None

"""Unit coverage, round 2: operations.c's release_many when the lock cannot be had (issue 22, item 7).

Pinned: release_many is all or nothing; when its lock wait runs out (another
process stopped holding the lock) it raises LockTimeout naming the holder and
releases none of the handles: each still reads its value, and a release_many
once the holder has gone frees them all.
"""

from __future__ import annotations

import pytest

from fastalloc_shm import FixedPool, LockTimeout

from .test_unit_lock import Holder


def test_release_many_that_cannot_get_the_lock_releases_nothing(tmp_path, pool_name):
    with FixedPool.create(pool_name, capacity=8, lock_timeout=0.2) as pool:
        handles = [pool.allocate(i) for i in range(3)]
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            with pytest.raises(LockTimeout, match=f"held by pid {holder.pid} "):
                pool.release_many(handles)
            assert [pool.get(h) for h in handles] == [0, 1, 2]
            assert len(pool) == 3
        finally:
            holder.kill()
        pool.release_many(handles)
        assert len(pool) == 0

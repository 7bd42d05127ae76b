"""Unit coverage, round 2: statistics.c's readers when an extent cannot be mapped (issue 22, item 7).

Pinned: the pool grew in another attachment and the new extent's file cannot
be opened here. counters() never fails for that (it reads the header's words,
the capacity included, and leaves the extent unmapped); slot_states(), which
must read every extent's slots, raises the mapping's error instead of giving a
partial list; once the file is back both answer, and slot_states lists both
extents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastalloc_shm import FastallocError, GrowingPool, GrowthStrategy, attach


def test_counters_answer_and_slot_states_refuse_while_an_extent_cannot_be_mapped(pool_name):
    with GrowingPool.create(pool_name, capacity=4, max_capacity=8, growth_strategy=GrowthStrategy.linear(4)) as pool, \
            attach(pool_name) as other:
        [other.allocate(i) for i in range(6)]
        assert pool._core.extents == 1
        x1 = Path(f"/dev/shm/fastalloc.{pool_name}.x1")
        hidden = x1.with_name(x1.name + ".hidden")
        x1.rename(hidden)
        try:
            counters = pool._core.counters()
            assert counters["capacity"] == 8 and counters["current_usage"] == 6
            assert pool._core.extents == 1
            with pytest.raises(FastallocError, match="cannot open a growth extent"):
                pool._core.slot_states()
        finally:
            hidden.rename(x1)
        states = pool._core.slot_states()
        assert [(s["first"], s["capacity"], s["fresh"]) for s in states] == [(0, 4, 4), (4, 4, 2)]

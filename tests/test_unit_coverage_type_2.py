"""Unit coverage, round 2: type.c's deallocation of a Core that was never closed (issue 22, item 7).

Pinned (Core_dealloc): a Core dropped without close() leaves the client table
as close() would (its entry's pid cleared, not left behind as a dead client for
recover() to find), and the pool goes on.
"""

from __future__ import annotations

import gc

from .test_unit_coverage_type import core_arguments, fresh_core  # noqa: F401 - core_arguments is a fixture


def test_a_core_collected_without_close_leaves_the_client_table(core_arguments):  # noqa: F811
    pool, args, kwargs = core_arguments
    core, exc = fresh_core(args, kwargs, creating=False)
    assert exc is None and not core.closed
    entry = core.entry
    h = core.allocate("kept by the pool")
    assert entry in {row.entry for row in pool.clients()}
    del core
    gc.collect()
    assert entry not in {row.entry for row in pool.clients()}, "the entry outlived its Core"
    report = pool.recover()
    assert report.dead_clients == ()
    assert pool.get(h) == "kept by the pool"

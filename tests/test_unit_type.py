"""Unit: type.c and module.c, the Core heap type and the module.

Their invariants (the top of each): the Core is a heap type with GC support
that traverses and clears the callables it holds, closed until __init__
succeeds and initialised once; operations in flight are counted and close()
never unmaps under one; buffer exports are counted. The module is initialised
in phases (PEP 489), exports its tables, and every callable has a text
signature.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import weakref

import pytest

from fastalloc_shm import FastallocError, FixedPool, ThreadLocalPool, _core, attach

HEAPTYPE, HAVE_GC = 1 << 9, 1 << 14
FUNCTIONS = ["init_mutex", "extent_size", "data_offset", "init_extent", "lock_byte", "byte_locked", "fault_active", "fault"]


def test_core_is_a_heap_type_with_gc():
    for cls in (_core.Core, _core.SlotExport):
        assert cls.__flags__ & HEAPTYPE and cls.__flags__ & HAVE_GC, cls
    assert _core.Core.__module__ == "fastalloc_shm._core"
    with pytest.raises(TypeError):
        _core.SlotExport()


def test_a_core_shows_its_callables_to_the_collector(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        core = pool._core
        assert gc.is_tracked(core)
        referents = gc.get_referents(core)
        assert _core.Core in referents
        assert sum(callable(r) for r in referents) >= 4  # errors, pack, unpack, grow
        assert any(isinstance(r, dict) for r in referents)  # the exports
        with pool.buffer(pool.allocate(b"x")) as view:
            assert core in gc.get_referents(view.obj)


def test_a_pool_in_a_cycle_is_collected_and_leaves_the_table(pool_name):
    keeper = FixedPool.create(pool_name, capacity=4)
    try:
        pool = attach(pool_name)
        pool.cycle = pool
        gone = weakref.ref(pool)
        entry = pool._core.entry
        del pool
        gc.collect()
        assert gone() is None
        assert entry not in [row.entry for row in keeper.clients()]
    finally:
        keeper.close()
        keeper.unlink()


def test_text_signatures_on_every_method_and_function(pool_name):
    with FixedPool.create(pool_name, capacity=4) as pool:
        methods = [name for name, v in vars(_core.Core).items() if callable(v) and not name.startswith("__")]
        assert {"allocate", "get", "set", "release", "close", "recover"} <= set(methods)
        for name in methods:
            bound = getattr(pool._core, name)
            assert getattr(_core.Core, name).__text_signature__, name
            inspect.signature(bound)
            assert bound.__doc__, name
        assert list(inspect.signature(pool._core.allocate).parameters) == ["value", "timeout"]
    for name in FUNCTIONS:
        function = getattr(_core, name)
        assert function.__text_signature__ and inspect.signature(function), name
    assert _core.Core.__text_signature__


def test_multi_phase_init():
    assert _core.__spec__ is not None and _core.__spec__.name == "fastalloc_shm._core"
    second = importlib.util.module_from_spec(_core.__spec__)  # single-phase init would hand back the same module
    _core.__spec__.loader.exec_module(second)
    assert second is not _core and second.Core is not _core.Core
    assert second.LAYOUT == _core.LAYOUT and second.ERRORS == _core.ERRORS and second.FAULT_POINTS == _core.FAULT_POINTS


def test_a_core_is_closed_until_initialised_and_initialised_once(pool_name):
    bare = _core.Core.__new__(_core.Core)
    assert bare.closed and bare.entry == -1 and bare.semaphore_value == -1
    with pytest.raises(RuntimeError, match="never initialized"):
        bare.get(1)
    bare.close()
    with FixedPool.create(pool_name, capacity=4) as pool:
        with pytest.raises(RuntimeError, match="initialized once"):
            pool._core.__init__()
        assert pool.get(pool.allocate("still")) == "still"


def test_exports_are_counted_and_close_waits_for_none(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=2) as pool:
        h = pool.allocate(b"abc")
        view = pool.buffer(h)
        assert pool._core.exports == 1
        with pytest.raises(BufferError):
            pool.release(h)
        with pytest.raises(BufferError):
            pool._core.close()
        second = pool.buffer(h)
        assert pool._core.exports == 2
        view.release()
        second.release()
        assert pool._core.exports == 0 and pool._core.operations == 0
        pool.release(h)
    with pytest.raises(FastallocError, match="closed"):
        pool.get(h)


def test_helpers_refuse_small_buffers():
    for call in (lambda: _core.init_mutex(bytearray(8)), lambda: _core.init_extent(bytearray(8), 4, 1)):
        with pytest.raises(ValueError, match="buffer too small"):
            call()
    with pytest.raises(BufferError):
        _core.init_mutex(b"read-only bytes")
    with pytest.raises(OSError):
        _core.byte_locked(-1, 0)
    with pytest.raises(OSError):
        _core.lock_byte(-1, 0)

"""Unit coverage, round 2: errors.c when the pool's errors callable itself fails (issue 22, item 7).

Pinned (raise_code): the core turns a failure into the user's exception by
calling the pool's `errors(code, *args)`; when that call raises (a signal
handler's exception, MemoryError, a bug in the message code), that exception
comes out of the operation as it is, with nothing else set over it, and the
Core stays usable.
"""

from __future__ import annotations

import pytest

from fastalloc_shm import InvalidHandle

from .test_unit_coverage_type import core_arguments, fresh_core  # noqa: F401 - core_arguments is a fixture


class MessageBroke(Exception):
    pass


def test_an_errors_callable_that_raises_passes_its_exception_through(core_arguments):  # noqa: F811
    pool, args, kwargs = core_arguments
    calls = []

    def errors(code, *rest):
        calls.append(code)
        raise MessageBroke(f"errors({code}) failed")

    core, exc = fresh_core(args, kwargs, errors=errors, creating=False)
    assert exc is None
    try:
        with pytest.raises(MessageBroke, match=r"errors\(\d+\) failed"):
            core.get(0)  # generation 0 is no handle: the core reports E_INVALID through errors()
        assert len(calls) == 1
        h = core.allocate("still usable")
        assert core.get(h) == "still usable"
        core.release(h)
    finally:
        core.close()
    with pytest.raises(InvalidHandle):
        pool.get(0)

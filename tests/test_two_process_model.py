"""Hypothesis: random operations interleaved across two processes, checked against one model."""

import itertools
import multiprocessing as mp

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from fastalloc_shm import FixedPool, GrowingPool, GrowthStrategy, ThreadLocalPool, unlink

from .conftest import RUN_TAG
from .invariants import check_invariants

values = st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8), max_size=4)
_names = itertools.count()


def serve(conn):
    """The other process: run pool operations sent over a pipe, reply with result or error type."""
    from fastalloc_shm import attach

    pools = {}
    while (msg := conn.recv()) is not None:
        op, name, args = msg
        try:
            if op == "attach":
                pools[name], result = attach(name), None
            elif op == "close":
                pools.pop(name).close()
                result = None
            else:
                result = getattr(pools[name], op)(*args)
            conn.send(("ok", result))
        except Exception as exc:
            conn.send(("error", type(exc).__name__))


@pytest.fixture(scope="module")
def other_process():
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(theirs,), daemon=True)
    proc.start()
    yield mine
    mine.send(None)
    proc.join(10)


def remote(conn, op, name, *args):
    conn.send((op, name, args))
    status, result = conn.recv()
    if status == "error":
        raise RuntimeError(result)
    return result


def machine_for(conn, kind, capacity, extra):
    class TwoProcesses(RuleBasedStateMachine):
        handles = Bundle("handles")

        def __init__(self):
            super().__init__()
            self.name = f"{RUN_TAG}-two-{next(_names)}"
            self.pool = kind.create(self.name, capacity=capacity, slot_size=1024, **extra)
            remote(conn, "attach", self.name)
            self.model = {}

        def teardown(self):
            remote(conn, "close", self.name)
            self.pool.close()
            unlink(self.name)

        def run(self, here, op, *args):
            return getattr(self.pool, op)(*args) if here else remote(conn, op, self.name, *args)

        @rule(target=handles, value=values, here=st.booleans())
        def allocate(self, value, here):
            h = self.run(here, "try_allocate", value)
            if h is None:
                return -1
            assert h not in self.model
            self.model[h] = value
            return h

        @rule(h=handles, here=st.booleans())
        def get(self, h, here):
            if h in self.model:
                assert self.run(here, "get", h) == self.model[h]

        @rule(h=handles, value=values, here=st.booleans())
        def set(self, h, value, here):
            if h in self.model:
                self.run(here, "set", h, value)
                self.model[h] = value

        @rule(h=consumes(handles), here=st.booleans())
        def release(self, h, here):
            if h in self.model:
                self.run(here, "release", h)
                del self.model[h]

        @invariant()
        def slots_match_the_model(self):
            assert check_invariants(self.pool)["allocated"] == len(self.model)

    return TwoProcesses


KINDS = {
    "fixed": (FixedPool, 5, {}),
    "growing": (GrowingPool, 2, {"max_capacity": 8, "growth_strategy": GrowthStrategy.linear(3)}),
    "threadlocal": (ThreadLocalPool, 8, {"batch_size": 2}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_processes_agree_with_one_model(other_process, kind):
    test = machine_for(other_process, *KINDS[kind]).TestCase
    test.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                             suppress_health_check=list(HealthCheck))
    test("runTest").runTest()

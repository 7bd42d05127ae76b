"""Hypothesis stateful: every pool kind against a dict model, through two attachments."""

import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from fastalloc_shm import (
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    InvalidHandle,
    PoolExhausted,
    StaleHandle,
    ThreadLocalPool,
    ThreadSafePool,
    ValueTooLarge,
    unlink,
)

from .conftest import RUN_TAG
from .invariants import check_invariants

CAPACITY = 6
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
_names = itertools.count()


def machine_for(kind, capacity, extra):
    class PoolMachine(RuleBasedStateMachine):
        handles = Bundle("handles")
        released = Bundle("released")

        def __init__(self):
            super().__init__()
            self.name = f"{RUN_TAG}-hyp-{next(_names)}"
            self.pool = kind.create(self.name, capacity=capacity, slot_size=64, **extra)
            self.other = kind.attach(self.name)  # a second attachment: same slots, other client entry
            self.model = {}

        def teardown(self):
            self.other.close()
            self.pool.close()
            unlink(self.name)

        def side(self, which):
            return self.pool if which else self.other

        @rule(target=handles, value=values, which=st.booleans())
        def allocate(self, value, which):
            try:
                h = self.side(which).allocate(value)
            except PoolExhausted:
                # a ThreadLocalPool may have free slots cached in the other attachment's magazine
                assert len(self.model) >= CAPACITY or kind is ThreadLocalPool
                return -1  # stands for "no handle"; rules skip it
            except ValueTooLarge:
                return -1
            assert h not in self.model
            self.model[h] = value
            return h

        @rule(h=handles, which=st.booleans())
        def get(self, h, which):
            if h in self.model:
                assert self.side(which).get(h) == _normalised(self.model[h])

        @rule(h=handles, value=values, which=st.booleans())
        def set(self, h, value, which):
            if h in self.model:
                try:
                    self.side(which).set(h, value)
                    self.model[h] = value
                except ValueTooLarge:
                    pass

        @rule(target=released, h=consumes(handles), which=st.booleans())
        def release(self, h, which):
            if h in self.model:
                self.side(which).release(h)
                del self.model[h]
            return h

        @rule(h=released, which=st.booleans())
        def stale_handle_is_refused(self, h, which):
            if h > 0 and h not in self.model:
                with pytest.raises(StaleHandle):
                    self.side(which).get(h)
                with pytest.raises(StaleHandle):
                    self.side(which).release(h)

        @rule(garbage=st.integers(-(2**70), 2**70))
        def garbage_is_refused(self, garbage):
            if garbage not in self.model:
                with pytest.raises((InvalidHandle, StaleHandle)):
                    self.pool.get(garbage)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def batch_release(self, data):
            chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), unique=True, max_size=3))
            self.pool.release_many(chosen)
            for h in chosen:
                del self.model[h]

        @invariant()
        def usage_matches_the_model(self):
            if kind is ThreadLocalPool:
                # len() adds this attachment's unpublished magazine counts to the shared ones;
                # the other attachment's reach the shared counters when it publishes.
                self.other.statistics()
            assert len(self.pool) == len(self.model)
            counts = check_invariants(self.pool)
            assert counts["allocated"] == len(self.model)

    return PoolMachine


def _normalised(value):
    """What msgpack gives back: tuples as lists, at any depth."""
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    return value


KINDS = {
    "fixed": (FixedPool, CAPACITY, {}),
    "growing": (GrowingPool, 2, {"max_capacity": CAPACITY, "growth_strategy": GrowthStrategy.linear(2)}),
    "threadlocal": (ThreadLocalPool, CAPACITY, {"batch_size": 2}),
    "threadsafe": (ThreadSafePool, CAPACITY, {}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pool_behaves_like_a_dict_model(kind):
    test = machine_for(*KINDS[kind]).TestCase
    test.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                             suppress_health_check=list(HealthCheck))
    test("runTest").runTest()

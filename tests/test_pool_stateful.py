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
    max_capacity = extra.get("max_capacity", capacity)
    strategy = extra.get("growth_strategy")
    threadlocal = kind is ThreadLocalPool

    class PoolMachine(RuleBasedStateMachine):
        handles = Bundle("handles")

        def __init__(self):
            super().__init__()
            self.name = f"{RUN_TAG}-hyp-{next(_names)}"
            self.pool = kind.create(self.name, capacity=capacity, slot_size=64, **extra)
            self.other = kind.attach(self.name)  # a second attachment: same slots, other client entry
            self.model = {}
            self.issued = set()  # every handle ever handed out: a reused slot comes back under a new generation
            self.stale = []  # handles released (by either side)
            self.capacity = capacity
            self.counters = {"total_allocations": 0, "total_deallocations": 0, "allocation_failures": 0,
                             "growth_count": 0, "peak_usage": 0}

        def teardown(self):
            self.other.close()
            self.pool.close()
            unlink(self.name)

        def side(self, which):
            return self.pool if which else self.other

        def grew(self):
            """The pool grew when asked to allocate past its capacity, by its strategy, up to max_capacity."""
            while self.pool.capacity > self.capacity:
                self.capacity = min(self.capacity + strategy.amount(self.capacity), max_capacity)
                self.counters["growth_count"] += 1
            assert self.pool.capacity == self.capacity

        def allocated(self, h, value):
            assert h is not None
            assert h not in self.issued, f"handle {h:#x} handed out twice: its slot's generation was not bumped"
            self.issued.add(h)
            self.model[h] = value
            self.counters["total_allocations"] += 1
            self.counters["peak_usage"] = max(self.counters["peak_usage"], len(self.model))
            self.grew()
            return h

        def refused(self, which):
            """The pool said full: only when every slot it may have (grown to max_capacity) is in the model."""
            self.grew()
            # A magazine hides no free slot (issue 18): every kind is full only when every slot is in the model.
            assert len(self.model) >= max_capacity, (
                f"refused with {len(self.model)} of {self.capacity} (max {max_capacity}) slots in the model")
            self.counters["allocation_failures"] += 1
            return -1  # stands for "no handle"; rules skip it

        @rule(target=handles, value=values, which=st.booleans())
        def allocate(self, value, which):
            try:
                h = self.side(which).allocate(value)
            except PoolExhausted:
                return self.refused(which)
            except ValueTooLarge:
                return -1
            return self.allocated(h, value)

        @rule(target=handles, value=values, which=st.booleans())
        def try_allocate(self, value, which):
            try:
                h = self.side(which).try_allocate(value)
            except ValueTooLarge:
                return -1
            if h is None:
                return self.refused(which)
            return self.allocated(h, value)

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

        @rule(h=consumes(handles), which=st.booleans())
        def release(self, h, which):
            if h in self.model:
                self.side(which).release(h)
                del self.model[h]
                self.stale.append(h)
                self.counters["total_deallocations"] += 1

        @precondition(lambda self: self.stale)
        @rule(data=st.data(), which=st.booleans(), value=values)
        def stale_handle_is_refused(self, data, which, value):
            """A released handle stays stale, whether or not its slot was handed out again, on either side."""
            h = data.draw(st.sampled_from(self.stale))
            with pytest.raises(StaleHandle):
                self.side(which).get(h)
            with pytest.raises((StaleHandle, ValueTooLarge)):
                self.side(which).set(h, value)
            with pytest.raises(StaleHandle):
                self.side(which).release(h)

        @rule(garbage=st.integers(-(2**70), 2**70))
        def garbage_is_refused(self, garbage):
            if garbage not in self.model:
                with pytest.raises((InvalidHandle, StaleHandle)):
                    self.pool.get(garbage)

        @precondition(lambda self: self.model)
        @rule(data=st.data(), which=st.booleans())
        def batch_release(self, data, which):
            chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), unique=True, max_size=3))
            self.side(which).release_many(chosen)
            for h in chosen:
                del self.model[h]
                self.stale.append(h)
            self.counters["total_deallocations"] += len(chosen)

        @invariant()
        def usage_and_counters_match_the_model(self):
            if threadlocal:
                # len() adds this attachment's unpublished magazine counts to the shared ones;
                # the other attachment's reach the shared counters when it publishes.
                self.other.statistics()
            assert len(self.pool) == len(self.model)
            counts = check_invariants(self.pool)
            assert counts["allocated"] == len(self.model)
            stats = self.pool.statistics()
            assert stats.capacity == self.pool.capacity == self.capacity
            assert stats.current_usage == len(self.model)
            got = {k: getattr(stats, k) for k in self.counters}
            expected = dict(self.counters)
            if threadlocal:
                # Not exact across attachments today: an allocation from a magazine computes the
                # peak from the other attachments' usage as of its last refill, so the peak may count
                # a slot they released meanwhile, or miss one they allocated (found writing this
                # model; reported with issue 22). Bounded: at least the usage now, at most capacity.
                assert len(self.model) <= got["peak_usage"] <= self.capacity, got
                expected["peak_usage"] = got["peak_usage"]
            assert got == expected

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
    # A ThreadLocalPool grows too: refills take slots of new extents into magazines.
    "threadlocal-growing": (ThreadLocalPool, 2, {"batch_size": 2, "max_capacity": CAPACITY,
                                                 "growth_strategy": GrowthStrategy.linear(2)}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pool_behaves_like_a_dict_model(kind):
    test = machine_for(*KINDS[kind]).TestCase
    test.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                             suppress_health_check=list(HealthCheck))
    test("runTest").runTest()

"""A hostile or corrupted segment is a typed error, never a crash: random bytes into the header,
the extent table, the client table, the extent header and the slot metadata, then every operation.

The pool mutex's own bytes are left alone: whoever can write a segment can wedge its lock (a denial of
service the README's security model names), which is not memory safety. `make test-asan` runs this file
under AddressSanitizer and UBSan, so an out-of-bounds read that happens not to crash fails there too.
"""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastalloc_shm import FastallocError, GrowingPool, GrowthStrategy, ThreadLocalPool, attach
from fastalloc_shm import _layout as L

CAPACITY = 8
REGIONS = {
    "header": (0, L.MUTEX_OFFSET),
    "extent table": (L.EXTENT_TABLE_OFFSET, L.EXTENT_TABLE_OFFSET + 32),
    "client table": (L.CLIENT_TABLE_OFFSET, L.CLIENT_TABLE_OFFSET + 4 * L.CLIENT_BYTES),
    "extent header": (L.HEADER_SIZE, L.HEADER_SIZE + L.EXT_HEADER_BYTES),
    "slot metadata": (L.HEADER_SIZE + L.EXT_HEADER_BYTES, L.HEADER_SIZE + L.EXT_HEADER_BYTES + CAPACITY * L.META_BYTES),
}
INTERESTING = [0, 1, 2, 7, 8, 9, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63, 2**64 - 1, L.MAGIC]


@st.composite
def corruption(draw):
    region = draw(st.sampled_from(sorted(REGIONS)))
    start, end = REGIONS[region]
    if draw(st.booleans()):
        offset = draw(st.integers(start, end - 8)) & ~7
        data = struct.pack("<Q", draw(st.sampled_from(INTERESTING)) if draw(st.booleans()) else draw(st.integers(0, 2**64 - 1)))
    else:
        offset = draw(st.integers(start, end - 1))
        data = draw(st.binary(min_size=1, max_size=min(16, end - offset)))
    return offset, data


def _every_operation(pool, handles):
    """Call everything; only FastallocError may come out. Returns how many raised."""
    raised = 0
    calls = [
        lambda: pool.allocate({"n": 1}),
        lambda: pool.allocate(b"x" * 10),
        lambda: pool.allocate_many([1, 2, 3]),
        lambda: pool.release_many(handles[:2]),
        lambda: len(pool),
        lambda: pool.statistics(),
        lambda: pool.clients(),
        lambda: pool.recover(orphan_policy="reclaim", lock_wait=0.2),
        lambda: pool.allocate("after recovery"),
        lambda: pool.reset_statistics(),
    ]
    for h in handles + [(5 << 32) | 3, (1 << 32) | (CAPACITY + 100)]:
        calls += [lambda h=h: pool.get(h), lambda h=h: pool.set(h, "new"), lambda h=h: pool.release(h),
                  lambda h=h: pool.buffer(h).release()]
    for call in calls:
        try:
            call()
        except FastallocError:
            raised += 1
    return raised


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(corruption(), min_size=1, max_size=6), kind=st.sampled_from([GrowingPool, ThreadLocalPool]))
def test_random_bytes_in_a_segment_give_typed_errors_only(make_name, damage, kind):
    name = make_name()
    extra = {"growth_strategy": GrowthStrategy.linear(4), "max_capacity": 16} if kind is GrowingPool else {}
    with kind.create(name, capacity=CAPACITY, slot_size=64, lock_timeout=0.2, **extra) as pool:
        handles = [pool.allocate({"i": i}) for i in range(5)]
        pool.release(handles.pop())
        mm = pool._segment.mm
        for offset, data in damage:
            mm[offset:offset + len(data)] = data
        _every_operation(pool, handles)
        try:
            other = attach(name)  # a fresh core validates the header it is given
        except FastallocError:
            return
        with other:
            _every_operation(other, handles)


def test_counters_full_of_garbage_are_only_numbers(pool_name):
    """Found by the fuzz test under UBSan: sums of counters a writer set near 2**63 overflowed."""
    with ThreadLocalPool.create(pool_name, capacity=CAPACITY, slot_size=64) as pool:
        pool.allocate("one")
        mm = pool._segment.mm
        for entry in range(3):
            at = L.CLIENT_TABLE_OFFSET + entry * L.CLIENT_BYTES + 8 * L.CLIENT_ALLOCATIONS
            mm[at:at + 8] = struct.pack("<Q", 2**63 - 2 + entry)
        mm[8 * L.HDR_IN_USE:8 * L.HDR_IN_USE + 8] = struct.pack("<Q", 2**63 + 5)
        assert isinstance(len(pool), int)
        assert pool.statistics().current_usage >= 0
        pool.reset_statistics()
        pool.recover()
        assert pool.get(pool.allocate("still works")) == "still works"

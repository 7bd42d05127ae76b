"""Values (issue 20): msgspec writes and reads them, and nothing a user stored before changes.

For every value msgpack-python round-trips, a pool stores the very bytes
msgpack-python writes (`msgpack.unpackb(bytes(pool.buffer(h)))` still reads a
slot) and `get` returns what msgpack-python's own round trip returns, for plain
values (the fast codec) and the rest (tuples, subclasses, ExtType, Timestamp:
the full one) alike; values that would not read back are still refused. Checked
against the model msgpack-python is, with hypothesis and by example, through
allocate/get, set, the batches and a channel.
"""

from __future__ import annotations

import collections
import enum
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastalloc_shm import FixedPool, SerializationError, _codec, _core

SLOT = 4096


def msgpack_round_trip(value):
    """What msgpack-python gives back for `value`: the model of what get() returns."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


def same(a, b) -> bool:
    """Equal, with NaN equal to itself and bool never equal to int (1 == True otherwise)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True), st.text(max_size=40),
    st.binary(max_size=40),
)
keys = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                 st.text(max_size=10), st.binary(max_size=10))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.tuples(inner, inner),
                            st.dictionaries(keys, inner, max_size=5)),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def pool():
    import os

    with FixedPool.create(f"values-{os.getpid()}", capacity=64, slot_size=SLOT) as p:
        yield p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_every_value_is_stored_as_msgpack_python_writes_it_and_reads_back_as_its_round_trip(pool, value):
    expected_bytes = msgpack.packb(value, use_bin_type=True)
    h = pool.allocate(value)
    try:
        assert bytes(pool.buffer(h))[:len(expected_bytes)] == expected_bytes
        assert same(pool.get(h), msgpack_round_trip(value))
        pool.set(h, [value])
        assert same(pool.get(h), [msgpack_round_trip(value)])
    finally:
        pool.release(h)
    hs = pool.allocate_many([value, value])
    assert all(same(pool.get(x), msgpack_round_trip(value)) for x in hs)
    pool.release_many(hs)
    todo = pool.channel("values")
    todo.put(value)
    assert same(todo.get(0), msgpack_round_trip(value))


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize("value", [
    msgpack.ExtType(5, b"x"), {"e": [msgpack.ExtType(127, b"")]}, msgpack.Timestamp(1, 2),
    {"when": msgpack.Timestamp(10**9, 0)}, (1, (2, 3)), Colour.RED, Name("n"), bytearray(b"ab"), memoryview(b"cd"),
    collections.OrderedDict(a=1), {"k": [1.5, -1, 255, -(2**63), 2**64 - 1]}, [b"\xd6\xff", "\xff"],
], ids=repr)
def test_values_the_full_codec_takes_read_back_as_msgpack_python_reads_them(pool, value):
    h = pool.allocate(value)
    assert same(pool.get(h), msgpack_round_trip(value))
    assert bytes(pool.buffer(h))[:len(msgpack.packb(value, use_bin_type=True))] == msgpack.packb(value, use_bin_type=True)
    pool.release(h)


def test_a_number_that_looks_like_a_timestamp_header_reads_back_the_same(pool):
    """The timestamp check may send plain values to the full unpacker (a false alarm): still the same value."""
    for value in [{"x": -1, "y": [214, 255]}, 0xD6FF, b"\xc7\x0c\xff", "\u00ff"]:
        assert same(pool.get(pool.allocate(value)), msgpack_round_trip(value))


@pytest.mark.parametrize("value", [{1, 2}, frozenset([1]), __import__("datetime").datetime(2026, 1, 1), 1 << 70,
                                   {"deep": [{(1,): 2}]}, object()], ids=repr)
def test_values_that_would_not_read_back_are_still_refused(pool, value):
    used = len(pool)
    with pytest.raises(SerializationError):
        pool.allocate(value)
    assert len(pool) == used


def test_the_core_sends_only_plain_values_to_the_fast_codec():
    assert _core.is_plain({"a": [1, 2.5, None, True, b"x", "s"], 1: {}, b"k": [], None: 0.5})
    too_deep: list = []
    for _ in range(40):  # deeper than the walk goes: the full packer (and its own limit) takes it
        too_deep = [too_deep]
    for not_plain in [(1,), [(1,)], {(1,): 1}, Name("x"), Colour.RED, bytearray(b""), {"s": {1}}, too_deep]:
        assert not _core.is_plain(not_plain), not_plain


def test_one_codec_module_for_python_backends_agrees_with_the_core(pool):
    codec = _codec.Codec()
    for value in [{"id": 1, "when": msgpack.Timestamp(5, 0)}, (1, 2), {"a": [1, 2]}, msgpack.ExtType(3, b"q")]:
        data = codec.pack(value)
        assert data == msgpack.packb(value, use_bin_type=True)
        assert same(codec.unpack(data), msgpack_round_trip(value))
    with pytest.raises(Exception, match="tuple"):
        codec.pack({(1,): 2})


@pytest.mark.parametrize("value", [
    {"id": 1, "tags": ["a"], "score": 0.5, "raw": b"\x00"}, (1, (2, 3)), msgpack.ExtType(5, b"x"),
    msgpack.Timestamp(1, 2), Name("n"), [float("nan")], {1: "int key", None: b"k"},
], ids=repr)
def test_redis_pool_reads_back_every_value_as_msgpack_python_does(value, redis_url, pool_name):
    """RedisPool packs and unpacks through the same codec module (_codec.Codec)."""
    from fastalloc_shm import RedisPool

    with RedisPool.create(pool_name, url=redis_url, capacity=4, slot_size=SLOT) as pool:
        h = pool.allocate(value)
        assert same(pool.get(h), msgpack_round_trip(value))
        with pytest.raises(SerializationError):
            pool.allocate({"s": {1, 2}})

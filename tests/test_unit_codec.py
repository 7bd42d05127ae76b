"""Unit: codec.c, values into slots and back (the msgpack glue).

Its invariant (the top of codec.c): bytes and str are packed and unpacked by
the core with a msgpack header around their own buffer, any other value by the
pool's packer, so a slot always holds one msgpack object of at most slot_size
bytes; packing happens before a slot is touched.
"""

from __future__ import annotations

import msgpack
import pytest

from fastalloc_shm import FixedPool, SerializationError, ValueTooLarge

BIG = 70_000


@pytest.fixture(scope="module")
def pool():
    from .conftest import RUN_TAG

    name = f"{RUN_TAG}-codec"
    with FixedPool.create(name, capacity=64, slot_size=BIG + 8) as p:
        yield p
        p.unlink()


VALUES = [b"", b"x", b"y" * 255, b"z" * 256, b"w" * 65535, b"v" * 65536, "", "a" * 31, "b" * 32, "c" * 255,
          "d" * 256, "e" * 65536, "é€😀", {"a": [1, 2.5, None, True]}, [b"nested", "str"], 0, -1, 2**63, None, 3.25]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{type(v).__name__}-{len(v) if hasattr(v, '__len__') else v}")
def test_round_trip_and_bytes_are_one_msgpack_object(pool, value):
    h = pool.allocate(value)
    assert pool.get(h) == value and type(pool.get(h)) is type(value)
    packed = msgpack.packb(value, use_bin_type=True)
    with pool.buffer(h) as view:
        assert bytes(view[:len(packed)]) == packed
    pool.set(h, value)
    assert pool.get(h) == value
    pool.release(h)


def test_subclasses_go_through_the_packer(pool):
    class B(bytes):
        pass

    class S(str):
        pass

    h = pool.allocate(B(b"sub"))
    assert pool.get(h) == b"sub" and type(pool.get(h)) is bytes
    pool.set(h, S("sub"))
    assert pool.get(h) == "sub" and type(pool.get(h)) is str
    pool.release(h)


def test_the_packed_size_limit_is_the_slot_size(pool_name):
    with FixedPool.create(pool_name, capacity=4, slot_size=64) as small:
        h = small.allocate(b"x" * 62)  # 2 bytes of header + 62: exactly the slot
        assert small.get(h) == b"x" * 62
        for value in (b"x" * 63, "s" * 63, "s" * 300, list(range(200, 240))):
            with pytest.raises(ValueTooLarge):
                small.allocate(value)
            with pytest.raises(ValueTooLarge):
                small.set(h, value)
        assert small.get(h) == b"x" * 62 and len(small) == 1


def test_what_cannot_be_packed_or_unpacked_is_a_serialization_error(pool):
    for value in ("\ud800", object(), {1, 2}):
        with pytest.raises(SerializationError):
            pool.allocate(value)
    h = pool.allocate("abc")
    with pool.buffer(h) as view:
        view[1:4] = b"\xff\xfe\xfd"  # a fixstr header over bytes that are not UTF-8
    with pytest.raises(SerializationError):
        pool.get(h)
    with pool.buffer(h) as view:
        view[0:4] = b"\xc4\x09ab"  # bin 8 claiming more bytes than the value's length: the unpacker decides
    with pytest.raises(SerializationError):
        pool.get(h)
    pool.release(h)

"""Unit coverage: codec.c's headers, limits and refusals (issue 22, item 7).

bytes and str are framed in C with the smallest msgpack header that fits
(fixstr, str8/16/32, bin8/16/32) and read back by the fast path; every length
boundary is pinned both ways. A value msgpack cannot pack (too deep, an int out
of range, a lone surrogate, a set, a tuple key) is SerializationError naming the
type, and takes no slot; the packed size limit is the slot size, byte-exact.
A packer that returns something other than bytes is a TypeError.
"""

from __future__ import annotations

import msgpack
import pytest

from fastalloc_shm import FixedPool, SerializationError, ValueTooLarge, _core
from fastalloc_shm import pool as pool_module

SLOT = 70000


@pytest.fixture(scope="module")
def pool():
    from .conftest import RUN_TAG

    with FixedPool.create(f"{RUN_TAG}-codec", capacity=4, slot_size=SLOT) as p:
        yield p
        p.unlink()


# Each boundary of a header: (value, the msgpack header bytes it must carry).
FRAMES = [
    ("", b"\xa0"), ("s" * 31, b"\xbf"), ("s" * 32, b"\xd9\x20"), ("s" * 255, b"\xd9\xff"),
    ("s" * 256, b"\xda\x01\x00"), ("s" * 65535, b"\xda\xff\xff"), ("s" * 65536, b"\xdb\x00\x01\x00\x00"),
    (b"", b"\xc4\x00"), (b"b" * 255, b"\xc4\xff"), (b"b" * 256, b"\xc5\x01\x00"), (b"b" * 65535, b"\xc5\xff\xff"),
    (b"b" * 65536, b"\xc6\x00\x01\x00\x00"), ("é" * 20, b"\xd9\x28"),
]


@pytest.mark.parametrize("value, header", FRAMES, ids=lambda v: f"{type(v).__name__}{len(v)}")
def test_str_and_bytes_carry_the_smallest_header_and_read_back(pool, value, header):
    """The slot holds exactly msgpack's framing of the value (smallest header), which
    msgpack-python reads back as the same value, and get() returns it."""
    h = pool.allocate(value)
    try:
        raw = bytes(pool.buffer(h))
        packed = msgpack.packb(value, use_bin_type=True)
        assert packed.startswith(header) and raw[:len(packed)] == packed
        assert pool.get(h) == value and type(pool.get(h)) is type(value)
    finally:
        pool.release(h)


def deep_list(depth: int) -> list:
    top = cur = []
    for _ in range(depth):
        cur.append([])
        cur = cur[0]
    return top


@pytest.mark.parametrize("value, words", [
    (deep_list(2000), "recursion limit"),
    (2**64, "out of range"),
    (-(2**63) - 1, "out of range"),
    ("\ud800", "surrogates not allowed"),
    ({1, 2}, "set"),
    ({(1, 2): "x"}, "tuple"),
    (object(), "object"),
], ids=["too-deep", "int-too-big", "int-too-small", "lone-surrogate", "set", "tuple-key", "object"])
def test_what_msgpack_cannot_store_is_a_serialization_error_and_takes_no_slot(pool, value, words):
    """allocate of a value msgpack cannot pack (or could not read back) raises
    SerializationError whose message says why; no slot is taken, and set() of such a value
    leaves the old one."""
    before = len(pool)
    with pytest.raises(SerializationError, match=words):
        pool.allocate(value)
    assert len(pool) == before
    h = pool.allocate("old")
    try:
        with pytest.raises(SerializationError):
            pool.set(h, value)
        assert pool.get(h) == "old"
    finally:
        pool.release(h)


def test_the_size_limit_is_the_slot_size_byte_exact(pool):
    """A value whose packed size is exactly slot_size fits; one byte more is ValueTooLarge
    naming the packed size; for str, bytes and a packed list alike."""
    fits = b"x" * (SLOT - 5)  # bin32 header: 5 bytes
    h = pool.allocate(fits)
    assert pool.get(h) == fits
    pool.release(h)
    with pytest.raises(ValueTooLarge, match=str(SLOT + 1)):
        pool.allocate(b"x" * (SLOT - 4))
    with pytest.raises(ValueTooLarge, match=str(SLOT + 1)):
        pool.allocate("x" * (SLOT - 4))
    big_list = ["y" * 1000] * 70
    with pytest.raises(ValueTooLarge):
        pool.allocate(big_list)
    assert len(pool) == 0


def test_a_packer_that_returns_no_bytes_is_a_type_error(pool_name, monkeypatch):
    """The core insists that the pool's packer returns bytes: a packer returning anything else
    makes allocate raise TypeError('pack() must return bytes') and take no slot."""
    real = _core.Core

    def with_bad_packer(*args, **kwargs):
        kwargs["pack"] = lambda value: 12345
        return real(*args, **kwargs)

    monkeypatch.setattr(pool_module._core, "Core", with_bad_packer)
    with FixedPool.create(pool_name, capacity=4) as bad:
        monkeypatch.setattr(pool_module._core, "Core", real)
        with pytest.raises(TypeError, match=r"pack\(\) must return bytes"):
            bad.allocate(object())
        assert len(bad) == 0 and bad.get(bad.allocate("str takes the C path")) == "str takes the C path"


def test_a_packer_raising_something_else_is_not_wrapped(pool_name, monkeypatch):
    """Only TypeError, ValueError and OverflowError from the packer mean 'cannot pack'
    (SerializationError); any other exception (a KeyboardInterrupt, a MemoryError) goes on as
    it is."""
    real = _core.Core

    def interrupting(value):
        raise KeyboardInterrupt("packing interrupted")

    def with_interrupting_packer(*args, **kwargs):
        kwargs["pack"] = interrupting
        return real(*args, **kwargs)

    monkeypatch.setattr(pool_module._core, "Core", with_interrupting_packer)
    with FixedPool.create(pool_name, capacity=4) as bad:
        monkeypatch.setattr(pool_module._core, "Core", real)
        with pytest.raises(KeyboardInterrupt, match="packing interrupted"):
            bad.allocate(object())
        assert len(bad) == 0

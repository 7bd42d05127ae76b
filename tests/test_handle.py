import pytest

from fastalloc_shm import InvalidHandle
from fastalloc_shm.handle import MAX_GENERATION, next_generation, pack, unpack


def test_pack_puts_generation_in_the_high_bits():
    assert pack(5, 3) == (3 << 32) | 5


def test_unpack_inverts_pack():
    assert unpack(pack(123456, 789)) == (123456, 789)


@pytest.mark.parametrize("bad", [0, -1, 1 << 64, 42, "7", 1.5, None])
def test_unpack_rejects_what_is_not_a_handle(bad):
    with pytest.raises(InvalidHandle):
        unpack(bad)


@pytest.mark.parametrize("index, generation", [(-1, 1), (1 << 32, 1), (0, 0), (0, 1 << 32)])
def test_pack_rejects_out_of_range_parts(index, generation):
    with pytest.raises(InvalidHandle):
        pack(index, generation)


def test_next_generation_skips_zero():
    assert next_generation(1) == 2
    assert next_generation(MAX_GENERATION) == 1

"""The handle module on its own; how pools use handles (and the 31-bit wrap) is in test_contract.py."""

import pytest

from fastalloc_shm import InvalidHandle
from fastalloc_shm.handle import MAX_GENERATION, pack, unpack


class Subclass(int):
    pass


def test_pack_puts_generation_in_the_high_bits():
    assert pack(5, 3) == (3 << 32) | 5


@pytest.mark.parametrize("index, generation", [(0, 1), (123456, 789), (2**32 - 1, 2**31 - 1)])
def test_unpack_inverts_pack_over_the_whole_range(index, generation):
    assert unpack(pack(index, generation)) == (index, generation)


def test_generations_are_31_bits_on_every_backend():
    assert MAX_GENERATION == 2**31 - 1


@pytest.mark.parametrize("bad", [0, -1, 1 << 64, 42, (2**31) << 32, ((2**32 - 1) << 32) | 1, "7", 1.5, None, True,
                                 Subclass(1 << 32)])
def test_unpack_rejects_what_is_not_a_handle(bad):
    with pytest.raises(InvalidHandle):
        unpack(bad)


@pytest.mark.parametrize("index, generation", [(-1, 1), (1 << 32, 1), (0, 0), (0, 2**31), (0, 1 << 32), (0, True),
                                               (1.0, 1), (0, Subclass(1))])
def test_pack_rejects_out_of_range_parts(index, generation):
    with pytest.raises(InvalidHandle):
        pack(index, generation)

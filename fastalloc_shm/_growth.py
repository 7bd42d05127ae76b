"""Adding an extent to a full pool: a new segment, recorded in the header last."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _fault, _names
from . import _layout as L
from . import _segment as seg
from ._extent import Extent
from .errors import PoolExhausted

if TYPE_CHECKING:
    from .pool import SharedPool


def add_extent_locked(pool: SharedPool) -> Extent | None:
    """Grow `pool` by its strategy (lock held); None when it may not grow any more.

    The header's extent count is the commit point: a grower killed before it
    leaves only an unrecorded segment, which the next grower replaces.
    """
    q = pool._q
    capacity = q[L.HDR_CAPACITY]
    number = q[L.HDR_EXTENTS]
    amount = pool.config.growth_amount(capacity)
    if amount <= 0:
        return None
    if number >= L.MAX_EXTENTS:
        raise PoolExhausted(
            f"pool {pool.name!r} has grown {L.MAX_EXTENTS - 1} times, the most it can; "
            "use a larger growth amount or a larger initial capacity"
        )
    posix_name = _names.extent(pool.name, number)
    seg.unlink_segment(posix_name)  # left by a grower that died before its commit
    geometry = L.ExtentGeometry(amount, pool._stride, pool.config.alignment)
    segment = seg.create_segment(posix_name, geometry.nbytes, pool.config.mode, f"pool {pool.name!r} growth")
    ext = Extent(number, capacity, segment, 0, memoryview(segment.mm).cast("I"), amount, pool._stride,
                 pool.config.alignment, owns_segment=True)
    ext.init_header()
    if pool.config.huge_pages:
        pool._advise_huge_pages(segment.mm)
    if _fault.ACTIVE:
        _fault.hit("grow.created")
    base_w, cap_w = L.extent_table_words(number)
    q[base_w], q[cap_w] = capacity, amount
    q[L.HDR_EXTENTS] = number + 1
    q[L.HDR_CAPACITY] = capacity + amount
    q[L.HDR_GROWTHS] += 1
    q[L.HDR_FREE_HINT] = number
    pool._extents.append(ext)
    pool._bases.append(capacity)
    return ext

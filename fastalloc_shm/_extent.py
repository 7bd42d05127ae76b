"""Typed views of one extent: the word indices the hot path needs, bound once."""

from __future__ import annotations

import mmap

from . import _layout as L
from ._segment import Segment


class Extent:
    """Slots [base, base + capacity) of a pool, in `segment` at byte `offset`.

    Extent 0 lives in the main segment after the header; extent k >= 1 has a
    segment of its own, which this object then owns.
    """

    __slots__ = ("number", "base", "cap", "stride", "u", "mm", "view", "top_w", "fresh_w", "meta_w", "fl_w", "data",
                 "segment", "owns_segment", "geometry", "offset")

    def __init__(self, number: int, base: int, segment: Segment, offset: int, u32: memoryview,
                 capacity: int, stride: int, alignment: int, owns_segment: bool) -> None:
        geometry = L.ExtentGeometry(capacity, stride, alignment)
        self.number = number
        self.base = base
        self.cap = capacity
        self.stride = stride
        self.segment = segment
        self.owns_segment = owns_segment
        self.geometry = geometry
        self.offset = offset
        self.mm: mmap.mmap = segment.mm
        self.view = memoryview(segment.mm)
        self.u = u32
        first = offset // 4
        self.top_w = first + L.EXT_TOP
        self.fresh_w = first + L.EXT_FRESH
        self.meta_w = (offset + geometry.meta) // 4
        self.fl_w = (offset + geometry.free_list) // 4
        self.data = offset + geometry.data

    def init_header(self) -> None:
        """Write a new extent's header: empty free list, nothing handed out yet."""
        first = self.offset // 4
        self.u[first + L.EXT_CAPACITY] = self.cap
        self.u[first + L.EXT_TOP] = 0
        self.u[first + L.EXT_FRESH] = 0
        self.u[first + L.EXT_MAGIC] = L.EXTENT_MAGIC

    def header_ok(self) -> bool:
        first = self.offset // 4
        return self.u[first + L.EXT_MAGIC] == L.EXTENT_MAGIC and self.u[first + L.EXT_CAPACITY] == self.cap

    def meta_bytes(self) -> memoryview:
        """The slot metadata as bytes (for bulk reads and writes)."""
        g = self.geometry
        return memoryview(self.mm)[self.offset + g.meta:self.offset + g.free_list]

    def free_list_bytes(self) -> memoryview:
        g = self.geometry
        return memoryview(self.mm)[self.offset + g.free_list:self.offset + g.free_list + 4 * self.cap]

    def close(self) -> None:
        """Drop the views; close the segment if this extent owns it."""
        self.view.release()
        if self.owns_segment:
            self.u.release()
            self.segment.close()

"""floor-py: the least a shared-memory pool written in Python can cost.

One POSIX shared-memory segment holds a small header, an int32 free-list stack, an int32
array of payload lengths and the slots; one posix_ipc semaphore guards the free list; a
value is msgpack-packed straight into its slot through a memoryview. Handles are bare slot
indices. Nothing else: no generations (a stale handle reads whatever is there), no torn-read
protection for ``get`` racing ``set``, no crash recovery, no statistics. That is exactly
what makes it a floor: any real pool (this project's included) pays for those, and the
benchmark reports how much.

Creation is lazy like the library's: a high-water mark hands out never-used slots, so no
free-list entry has to be written up front (filling one million int32s from Python costs
~40 ms, nearly the whole creation budget). The segment's pages are reserved with
``posix_fallocate`` because the project's contract requires it (a full /dev/shm must fail at
creation, not SIGBUS later), so creation ratios compare like with like.

Beside the compiled floor (floor_c.c) it says what the interpreter alone costs, and it stays
the reference for creation and growth, which the compiled floor does not measure.
"""

from __future__ import annotations

import mmap
import os
import struct

import msgpack
import posix_ipc

# Header: free-list top, high-water mark, capacity, slot size (all int32).
_HEADER = struct.Struct("4i")
PREFIX = "fabench-floor"


def _segment_size(capacity: int, slot_size: int) -> int:
    return _HEADER.size + 8 * capacity + capacity * slot_size


class FloorPool:
    """A minimal shared pool; ``create`` owns (and must ``unlink``) what it makes, ``attach`` does not."""

    _mmap = None
    _sem = None

    def __init__(self, name: str, shm: posix_ipc.SharedMemory, sem: posix_ipc.Semaphore, owner: bool):
        self.name = name
        self.owner = owner
        self._sem = sem
        self._mmap = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        buf = memoryview(self._mmap)
        self._hdr = buf[: _HEADER.size].cast("i")
        self.capacity = self._hdr[2]
        self.slot_size = self._hdr[3]
        off = _HEADER.size
        self._free = buf[off : off + 4 * self.capacity].cast("i")
        off += 4 * self.capacity
        self._lens = buf[off : off + 4 * self.capacity].cast("i")
        off += 4 * self.capacity
        self._data = buf[off:]
        self._views = (self._hdr, self._free, self._lens, self._data, buf)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, capacity: int, slot_size: int, *, initial: object = ...) -> FloorPool:
        """Create the segment (and semaphore); ``initial`` given = eager: every slot holds it."""
        size = _segment_size(capacity, slot_size)
        shm = posix_ipc.SharedMemory(f"/{PREFIX}-{name}", posix_ipc.O_CREX, mode=0o600, size=size)
        sem = pool = None
        try:
            os.posix_fallocate(shm.fd, 0, size)
            os.pwrite(shm.fd, _HEADER.pack(0, 0, capacity, slot_size), 0)
            sem = posix_ipc.Semaphore(f"/{PREFIX}-{name}", posix_ipc.O_CREX, mode=0o600, initial_value=1)
            pool = cls(name, shm, sem, owner=True)
            if initial is not ...:
                pool._fill(initial)
        except BaseException:
            if pool is not None:
                pool.close()
            else:
                shm.close_fd()
            posix_ipc.unlink_shared_memory(shm.name)
            if sem is not None:
                sem.unlink()
            raise
        return pool

    @classmethod
    def attach(cls, name: str) -> FloorPool:
        """Map an existing floor pool by name."""
        shm = posix_ipc.SharedMemory(f"/{PREFIX}-{name}")
        return cls(name, shm, posix_ipc.Semaphore(f"/{PREFIX}-{name}"), owner=False)

    def _fill(self, value: object) -> None:
        """Eager initialization: one bulk write of a packed template (the cheapest possible).

        The free list stays lazy (high-water mark): the slots hold the value, nothing else
        needs writing.
        """
        packed = msgpack.packb(value)
        n, cap, stride = len(packed), self.capacity, self.slot_size
        self._data[: cap * stride] = (packed + bytes(stride - n)) * cap
        self._lens[:] = memoryview(struct.pack("i", n) * cap).cast("i")

    def close(self) -> None:
        """Unmap in this process."""
        for view in reversed(getattr(self, "_views", ())):
            view.release()
        self._views = ()
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._sem is not None:
            self._sem.close()

    def unlink(self) -> None:
        """Remove the segment and semaphore from the system."""
        for unlink in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
            try:
                unlink(f"/{PREFIX}-{self.name}")
            except posix_ipc.ExistentialError:
                pass

    # -- hot path ----------------------------------------------------------------------------

    def _take(self) -> int:
        """Pop a free index (or the next never-used one); the caller holds the lock."""
        hdr = self._hdr
        top = hdr[0]
        if top:
            top -= 1
            hdr[0] = top
            return self._free[top]
        i = hdr[1]
        if i == self.capacity:
            raise MemoryError(f"floor pool {self.name!r} is full")
        hdr[1] = i + 1
        return i

    # _take is inlined below: a method call is ~10 % of a floor allocation.

    def allocate(self, value: object) -> int:
        data = msgpack.packb(value)
        n = len(data)
        if n > self.slot_size:
            raise ValueError(f"value of {n} bytes exceeds slot size {self.slot_size}")
        hdr = self._hdr
        sem = self._sem
        sem.acquire()
        try:
            top = hdr[0]
            if top:
                top -= 1
                hdr[0] = top
                i = self._free[top]
            else:
                i = hdr[1]
                if i == self.capacity:
                    raise MemoryError(f"floor pool {self.name!r} is full")
                hdr[1] = i + 1
        finally:
            sem.release()
        o = i * self.slot_size
        self._data[o : o + n] = data
        self._lens[i] = n
        return i

    def get(self, i: int) -> object:
        """Unpack the slot's value (a fresh object)."""
        o = i * self.slot_size
        return msgpack.unpackb(self._data[o : o + self._lens[i]])

    def set(self, i: int, value: object) -> None:
        """Overwrite in place (no torn-read protection: readers racing this may see a mix)."""
        data = msgpack.packb(value)
        n = len(data)
        if n > self.slot_size:
            raise ValueError(f"value of {n} bytes exceeds slot size {self.slot_size}")
        o = i * self.slot_size
        self._data[o : o + n] = data
        self._lens[i] = n

    def release(self, i: int) -> None:
        sem = self._sem
        sem.acquire()
        try:
            hdr = self._hdr
            top = hdr[0]
            self._free[top] = i
            hdr[0] = top + 1
        finally:
            sem.release()

    # -- batches: one lock round trip for the lot ----------------------------------------------

    def allocate_many(self, values: list) -> list[int]:
        packed = [msgpack.packb(v) for v in values]
        self._sem.acquire()
        try:
            take = self._take
            handles = [take() for _ in packed]
        finally:
            self._sem.release()
        self._write_all(handles, packed)
        return handles

    def _write_all(self, handles: list[int], packed: list[bytes]) -> None:
        data, lens, stride = self._data, self._lens, self.slot_size
        for i, b in zip(handles, packed, strict=True):
            o = i * stride
            data[o : o + len(b)] = b
            lens[i] = len(b)

    def release_many(self, handles: list[int]) -> None:
        self._sem.acquire()
        try:
            hdr, free = self._hdr, self._free
            top = hdr[0]
            for i in handles:
                free[top] = i
                top += 1
            hdr[0] = top
        finally:
            self._sem.release()


def grow_extent(name: str, slots: int, slot_size: int) -> None:
    """The floor of growth: map a new segment of ``slots`` slots and list them as free.

    A real pool also links the extent into the header and tells attachers; this is only the
    system work (shm_open, ftruncate, fallocate, mmap) plus writing the free indices. The
    extent is unlinked again right away; only the cost is of interest.
    """
    size = 4 * slots + slots * slot_size
    shm = posix_ipc.SharedMemory(f"/{PREFIX}-{name}", posix_ipc.O_CREX, mode=0o600, size=size)
    try:
        os.posix_fallocate(shm.fd, 0, size)
        m = mmap.mmap(shm.fd, size)
        shm.close_fd()
        free = memoryview(m)[: 4 * slots].cast("i")
        for k in range(slots):
            free[k] = k
        free.release()
        m.close()
    finally:
        posix_ipc.unlink_shared_memory(shm.name)

"""A pool's header: written once by its creator, read on attach (wait for the creator, refuse anything foreign).

Creation is exclusive (O_EXCL) and marks the header ready last, so an attacher
may meet a segment not yet sized, not yet written, or never finished because
its creator died; and a segment under a pool's name may not be a pool at all,
or one of another layout version.
"""

from __future__ import annotations

import os
import time

import msgpack

from . import _core, _names
from . import _layout as L
from . import _segment as seg
from .config import PoolConfig
from .errors import ConfigError, IncompatiblePool, PoolNotFound

# How long attach waits for a concurrent creator to finish.
READY_TIMEOUT = 5.0


class HalfCreated(PoolNotFound):
    """A segment whose creator died before marking it ready."""



def open_ready(name: str, trusted: frozenset[int]) -> tuple[seg.Segment, PoolConfig, str]:
    """Open the main segment (owned by a uid in `trusted`), wait for its creator to mark it ready, and validate it."""
    what = f"pool {name!r}"
    posix_name = _names.segment(name)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        segment = seg.open_segment(posix_name, what, trusted)
        try:
            verdict = check_header(segment, what)
        except BaseException:
            segment.close()
            raise
        if verdict is not None:
            return segment, *verdict
        creator_dead = segment.size >= L.HEADER_SIZE and not _core.byte_locked(segment.fd, L.CREATOR_BYTE)
        pid = creator_pid(segment)
        segment.close()
        if creator_dead and pid:
            raise HalfCreated(f"{what}: its creator (pid {pid}) died before finishing; unlink it and create it again")
        if time.monotonic() >= deadline:
            raise IncompatiblePool(f"{what}: not ready after {READY_TIMEOUT} s; is its creator stuck?")
        time.sleep(0.002)


def creator_pid(segment: seg.Segment) -> int:
    """The creator's pid as its header records it (0 before it wrote it); for messages only.

    Whether the creator lives is told by its lock on CREATOR_BYTE, which the
    kernel drops when it dies, whatever its PID namespace."""
    if segment.mm is None or segment.size < L.HEADER_SIZE:
        return 0
    q = memoryview(segment.mm).cast("Q")
    try:
        return q[L.HDR_CREATOR_PID]
    finally:
        q.release()


def check_header(segment: seg.Segment, what: str) -> tuple[PoolConfig, str] | None:
    """(config, kind) of a ready pool segment; None while it is being created."""
    if segment.size == 0:
        return None
    if segment.size < L.HEADER_SIZE or segment.size % 8:
        raise IncompatiblePool(f"{what}: {segment.posix_name} is {segment.size} bytes, not a fastalloc pool; remove it")
    q = memoryview(segment.mm).cast("Q")
    try:
        if q[L.HDR_MAGIC] == 0 and not q[L.HDR_READY]:
            return None
        if q[L.HDR_MAGIC] != L.MAGIC:
            raise IncompatiblePool(f"{what}: {segment.posix_name} is not a fastalloc pool (bad magic); remove it")
        if q[L.HDR_VERSION] != L.LAYOUT_VERSION:
            raise IncompatiblePool(
                f"{what}: layout version {q[L.HDR_VERSION]}, this library reads version {L.LAYOUT_VERSION}; "
                "use the fastalloc-shm version that created it"
            )
        if not q[L.HDR_READY]:
            return None
        kind = L.KIND_NAMES.get(q[L.HDR_KIND])
        length = q[L.HDR_CONFIG_LEN]
        if kind is None or not 0 < length <= L.MAX_CONFIG_BYTES or not q[L.HDR_POOL_ID]:
            raise IncompatiblePool(
                f"{what}: damaged header (kind {q[L.HDR_KIND]}, config length {length}, pool id {q[L.HDR_POOL_ID]})"
            )
        try:
            record = msgpack.unpackb(segment.mm[L.CONFIG_OFFSET:L.CONFIG_OFFSET + length], raw=False)
            cfg = PoolConfig.from_record(record)
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise IncompatiblePool(f"{what}: damaged config record ({exc})") from None
        stride = L.stride_for(cfg.slot_size, cfg.alignment)
        try:
            expected = L.main_segment_size(cfg.capacity, stride, cfg.alignment)
        except (ValueError, OverflowError):  # a geometry no memory holds: forged or damaged
            expected = -1
        if (segment.size != expected or q[L.HDR_SLOT_SIZE] != cfg.slot_size or q[L.HDR_STRIDE] != stride
                or not 1 <= q[L.HDR_EXTENTS] <= L.MAX_EXTENTS):
            raise IncompatiblePool(f"{what}: header does not match its segment ({segment.size} bytes); damaged")
        return cfg, kind
    finally:
        q.release()


def encode_config(cfg: PoolConfig) -> bytes:
    """The config record the header stores (ConfigError when it does not fit)."""
    record = msgpack.packb(cfg.to_record(), use_bin_type=True)
    if len(record) > L.MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {len(record)} bytes recorded, at most {L.MAX_CONFIG_BYTES} fit in the header")
    return record


def write_header(segment: seg.Segment, cfg: PoolConfig, record: bytes, kind_code: int, pool_id: int,
                 creator_start: int) -> None:
    """The fields a new pool's creator writes once, before the core and the ready flag."""
    q = memoryview(segment.mm).cast("Q")
    try:
        q[L.HDR_MAGIC] = L.MAGIC
        # Before the semaphore exists, so whoever finds the segment can name it (see unlink).
        q[L.HDR_POOL_ID] = pool_id
        q[L.HDR_CREATOR_PID] = os.getpid()
        q[L.HDR_CREATOR_START] = creator_start
        q[L.HDR_VERSION] = L.LAYOUT_VERSION
        q[L.HDR_KIND] = kind_code
        q[L.HDR_SLOT_SIZE] = cfg.slot_size
        q[L.HDR_STRIDE] = L.stride_for(cfg.slot_size, cfg.alignment)
        q[L.HDR_ALIGNMENT] = cfg.alignment
        q[L.HDR_CAPACITY] = cfg.capacity
        q[L.HDR_EXTENTS] = 1
        base_w, cap_w = L.extent_table_words(0)
        q[base_w], q[cap_w] = 0, cfg.capacity
        q[L.HDR_CONFIG_LEN] = len(record)
        segment.mm[L.CONFIG_OFFSET:L.CONFIG_OFFSET + len(record)] = record
    finally:
        q.release()

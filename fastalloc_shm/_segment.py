"""Create, open and remove the system objects of a pool: segments and the semaphore.

Segments are opened with posix_ipc rather than multiprocessing.shared_memory:
CPython 3.11's resource_tracker registers every SharedMemory it sees and
unlinks it when the registering process exits, even if other processes still
use it. Nothing here registers with the tracker, so a pool lives until
`unlink()`.

Creation reserves every page with posix_fallocate, so a full /dev/shm is an
error at create or grow time, never a SIGBUS on a later write.
"""

from __future__ import annotations

import errno
import mmap
import os

import posix_ipc

from . import _layout as L
from . import _names, _trust
from .errors import IncompatiblePool, PoolExistsError, PoolNotFound, SharedMemoryFull


class Segment:
    """One mapped shared-memory segment. Owns its mmap and file descriptor."""

    mm: mmap.mmap | None = None
    fd: int = -1

    def __init__(self, posix_name: str, fd: int, size: int) -> None:
        self.posix_name = posix_name
        self.fd = fd
        self.size = size
        # A size of 0 is a segment whose creator has not sized it yet: no mapping.
        self.mm = mmap.mmap(fd, size) if size else None

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def shm_free_bytes() -> int:
    """Bytes free in /dev/shm for an unprivileged writer."""
    st = os.statvfs(_names.SHM_DIR)
    return st.f_bavail * st.f_frsize


def _no_room(what: str, needed: int) -> SharedMemoryFull:
    return SharedMemoryFull(
        f"{what} needs {needed:,} bytes but /dev/shm has {shm_free_bytes():,} free; "
        "free space or give the container more (docker --shm-size, compose shm_size, "
        "a Kubernetes emptyDir with medium: Memory)"
    )


def create_segment(posix_name: str, size: int, mode: int, what: str) -> Segment:
    """Exclusively create a segment of `size` bytes with its pages reserved.

    Raises PoolExistsError when the name is taken, SharedMemoryFull when
    /dev/shm cannot hold it (the partial segment is removed).
    """
    if size > shm_free_bytes():
        raise _no_room(what, size)
    try:
        shm = posix_ipc.SharedMemory(posix_name, posix_ipc.O_CREX, mode=mode)
    except posix_ipc.ExistentialError as exc:
        raise PoolExistsError(f"{what}: {posix_name} exists already") from exc
    fd = shm.fd
    try:
        os.fchmod(fd, mode)  # exact mode, whatever the umask
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
        return Segment(posix_name, fd, size)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(posix_name)
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise _no_room(what, size) from exc
        raise


def open_segment(posix_name: str, what: str, trusted: frozenset[int]) -> Segment:
    """Map an existing segment at its current size, if a trusted uid owns it (checked before mapping)."""
    try:
        shm = posix_ipc.SharedMemory(posix_name)
    except posix_ipc.ExistentialError as exc:
        raise PoolNotFound(f"{what}: no segment {posix_name} (create the pool first, or check the name)") from exc
    except posix_ipc.PermissionsError as exc:
        raise PoolNotFound(f"{what}: {posix_name} exists but this user may not open it ({exc})") from exc
    fd = shm.fd
    try:
        st = os.fstat(fd)
        _trust.check_owner(st.st_uid, segment_path(posix_name), what, trusted)
        return Segment(posix_name, fd, st.st_size)
    except (OSError, ValueError) as exc:
        os.close(fd)
        raise IncompatiblePool(f"{what}: cannot map {posix_name} ({exc})") from exc
    except BaseException:
        os.close(fd)
        raise





def segment_path(posix_name: str) -> str:
    return os.path.join(_names.SHM_DIR, posix_name.lstrip("/"))


def _unlink_quietly(posix_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(posix_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def unlink_segment_with_id(posix_name: str) -> tuple[bool, int | None]:
    """Remove a main segment; (whether it existed, the pool id its header records or None).

    The id is read through an fd of the very file removed (if the name was
    replaced before the removal, nothing is removed), and read again after the
    removal: a creator still writing it writes the id before it makes the
    semaphore, and after making it checks that its name still stands, so either
    this read sees the id or the creator removes its own semaphore."""
    path = segment_path(posix_name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except OSError:
        return _unlink_quietly(posix_name), None  # not readable to us (or not a file): remove the name only
    try:
        inode = os.fstat(fd).st_ino
        try:
            if os.lstat(path).st_ino != inode:
                return False, None
        except FileNotFoundError:
            return False, None
        removed = _unlink_quietly(posix_name)
        return removed, _pool_id(fd)
    finally:
        os.close(fd)


def _pool_id(fd: int) -> int | None:
    """The pool id in the header behind `fd`, or None when there is no pool header (yet)."""
    words = os.pread(fd, 8 * (L.HDR_POOL_ID + 1), 0)
    if len(words) < 8 * (L.HDR_POOL_ID + 1):
        return None
    q = memoryview(words).cast("Q")
    return (q[L.HDR_POOL_ID] or None) if q[L.HDR_MAGIC] == L.MAGIC else None


def pool_id_now(posix_name: str) -> int | None:
    """The id word of the segment named `posix_name` now, whatever its magic; None if there is none."""
    try:
        fd = os.open(segment_path(posix_name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        words = os.pread(fd, 8 * (L.HDR_POOL_ID + 1), 0)
    finally:
        os.close(fd)
    if len(words) < 8 * (L.HDR_POOL_ID + 1):
        return None
    return memoryview(words).cast("Q")[L.HDR_POOL_ID]


def unlink_stray_semaphores(name: str) -> list[str]:
    """Remove every semaphore of pool `name` except the one of the segment under that name now, if any.

    For an unlink whose segment recorded no trustworthy id. The semaphores are
    listed before the current segment's id is read: a creator writes its id
    before it makes its semaphore, so a semaphore listed is either a stray or
    one whose id this read sees."""
    try:
        ids = _names.semaphore_ids(name, os.listdir(_names.SHM_DIR))
    except FileNotFoundError:
        return []
    ids.discard(pool_id_now(_names.segment(name)))
    removed = [_names.semaphore(name, pool_id) for pool_id in sorted(ids)]
    return [sem for sem in removed if unlink_semaphore(sem)]


def still_named(segment: Segment) -> bool:
    """True while `segment`'s name refers to the very segment mapped (not unlinked, not replaced)."""
    try:
        return os.lstat(segment_path(segment.posix_name)).st_ino == os.fstat(segment.fd).st_ino
    except FileNotFoundError:
        return False


def unlink_segment(posix_name: str) -> bool:
    """Remove a segment name; True if it existed."""
    return _unlink_quietly(posix_name)


def create_semaphore(posix_name: str, mode: int, initial: int) -> posix_ipc.Semaphore:
    """Create the pool's free-slot semaphore at `initial`. A stale one left by a creator
    that died is replaced: whoever holds the segment name owns this name."""
    try:
        sem = posix_ipc.Semaphore(posix_name, posix_ipc.O_CREX, mode=mode, initial_value=initial)
    except posix_ipc.ExistentialError:
        unlink_semaphore(posix_name)
        sem = posix_ipc.Semaphore(posix_name, posix_ipc.O_CREX, mode=mode, initial_value=initial)
    path = _names.semaphore_path(posix_name)
    if os.path.exists(path):
        os.chmod(path, mode)
    return sem


def open_semaphore(posix_name: str, what: str, trusted: frozenset[int]) -> posix_ipc.Semaphore:
    """Open the pool's lock if a trusted uid owns it (a semaphore has no fd: its file is checked)."""
    try:
        sem = posix_ipc.Semaphore(posix_name)
    except posix_ipc.ExistentialError as exc:
        raise IncompatiblePool(f"{what}: its lock {posix_name} is missing; unlink the pool and create it again") from exc
    except posix_ipc.PermissionsError as exc:
        raise PoolNotFound(f"{what}: this user may not open its lock ({exc})") from exc
    # Checked after opening: in the sticky /dev/shm nobody else can replace a file
    # we own, so the file checked is the semaphore opened.
    try:
        _trust.check_path(_names.semaphore_path(posix_name), f"{what}: lock", trusted)
    except BaseException:
        sem.close()
        raise
    return sem


def unlink_semaphore(posix_name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(posix_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def extent_names_on_disk(pool: str) -> list[str]:
    """POSIX names of every extent segment of `pool` present in /dev/shm."""
    prefix = f"{_names.PREFIX}{pool}.x"
    try:
        entries = os.listdir(_names.SHM_DIR)
    except FileNotFoundError:
        return []
    return ["/" + e for e in entries if e.startswith(prefix) and e[len(prefix):].isdigit()]

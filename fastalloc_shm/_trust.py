"""Who may have made a pool's system objects: the owner check on attach.

`/dev/shm` is world-writable (sticky, like /tmp), so anyone can create
`fastalloc.<name>` before the real creator does. What a segment holds is
read as data, and the callables its config record names would run in the
attacher, so a segment or semaphore is accepted only when its owner is
trusted: this process's effective uid, root, or a uid the caller names
(`trusted_uids=`, by default `$FASTALLOC_TRUSTED_UIDS`, comma-separated;
a deployment sets it to the daemon's uid).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable

from .errors import ConfigError, FastallocError

ENV = "FASTALLOC_TRUSTED_UIDS"


def trusted_uids(extra: Iterable[int] | None = None) -> frozenset[int]:
    """This process's euid, root, and `extra` (None: the uids in `$FASTALLOC_TRUSTED_UIDS`)."""
    if extra is None:
        extra = _from_env()
    uids = set()
    for uid in extra:
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise ConfigError(f"trusted_uids: expected uids (ints >= 0), got {uid!r}")
        uids.add(uid)
    return frozenset({os.geteuid(), 0, *uids})


def _from_env() -> list[int]:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{ENV}={text!r}: expected comma-separated numeric uids, e.g. {ENV}=998,1001") from None


def check_owner(uid: int, path: str, what: str, trusted: frozenset[int]) -> None:
    """FastallocError naming the owner and the way to trust it, unless `uid` is trusted."""
    if uid not in trusted:
        raise untrusted_error(uid, path, what)


def untrusted_error(uid: int, path: str, what: str) -> FastallocError:
    """The error for an object owned by an untrusted `uid`: who owns it, and how to trust them."""
    return FastallocError(
        f"{what}: {path} is owned by uid {uid}{_user(uid)}, not by this user (uid {os.geteuid()}) or root, so"
        f" it is not opened (another user may have created it first); if you trust uid {uid}, pass"
        f" trusted_uids=[{uid}] or set {ENV}={uid}, else remove it and create the pool again"
    )


def check_fd(fd: int, path: str, what: str, trusted: frozenset[int]) -> None:
    """The owner check on an open file: fstat, so the object checked is the one opened."""
    check_owner(os.fstat(fd).st_uid, path, what, trusted)


def check_path(path: str, what: str, trusted: frozenset[int]) -> None:
    """The owner check on a path (a semaphore has no fd to fstat); a missing path passes (open says so)."""
    try:
        uid = os.lstat(path).st_uid
    except FileNotFoundError:
        return
    check_owner(uid, path, what, trusted)


def _user(uid: int) -> str:
    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""

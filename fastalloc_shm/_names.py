"""Pool names and the names of every system object a pool owns.

All of them carry the prefix `fastalloc.` so that `fastalloc-shm ls` and leak
checks find them in `/dev/shm` (segments as `fastalloc.*`, Linux semaphores
as `sem.fastalloc.*`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from .errors import ConfigError

PREFIX = "fastalloc."
SHM_DIR = "/dev/shm"
# Linux: a /dev/shm entry is a file name (NAME_MAX 255). The semaphore's file
# is "sem." + PREFIX + name + "." + 16 hex digits of the pool id + ".lock" and
# an extent "PREFIX + name + .x<k>"; 200 leaves room for both.
MAX_NAME_LENGTH = 200
# macOS caps the whole POSIX IPC name (PSHMNAMLEN) at 31 bytes.
MACOS_MAX_IPC_NAME = 31
_VALID = re.compile(r"[A-Za-z0-9_.\-]+")
_RESERVED_SUFFIX = re.compile(r"\.(lock|x\d+)$")


def validate(name: str) -> str:
    """Return `name` if it is a valid pool name, else raise ConfigError."""
    if not isinstance(name, str) or not _VALID.fullmatch(name):
        raise ConfigError(f"name: {name!r} is not a pool name; use letters, digits, '_', '.', '-'")
    if name in (".", "..") or _RESERVED_SUFFIX.search(name):
        raise ConfigError(f"name: {name!r} is reserved (it looks like a lock or extent name)")
    limit = MAX_NAME_LENGTH
    if sys.platform == "darwin":
        limit = MACOS_MAX_IPC_NAME - len(semaphore("", 0))
    if len(name) > limit:
        raise ConfigError(
            f"name: {name!r} has {len(name)} characters; at most {limit} fit on {sys.platform}"
            " with the object prefix and suffixes"
        )
    return name


def segment(name: str) -> str:
    """POSIX name of the pool's main segment."""
    return f"/{PREFIX}{name}"


def extent(name: str, number: int) -> str:
    """POSIX name of growth extent `number` (1-based; extent 0 is the main segment)."""
    return f"{extent_prefix(name)}{number}"


def extent_prefix(name: str) -> str:
    """POSIX name of growth extent k is this followed by k."""
    return f"/{PREFIX}{name}.x"


def semaphore(name: str, pool_id: int) -> str:
    """POSIX name of the lock semaphore of the pool `name` whose header records `pool_id`.

    The id makes the semaphore of one incarnation of a pool distinct from that
    of the next: an unlinker removes only the one of the segment it removed."""
    return f"/{PREFIX}{name}.{pool_id:016x}.lock"


def semaphore_ids(name: str, entries: Iterable[str]) -> set[int]:
    """Pool ids of the semaphores of pool `name` among `/dev/shm` entries (exactly its pattern:
    another pool's name never matches, even one that starts with `name`)."""
    pattern = re.compile(rf"sem\.{re.escape(PREFIX + name)}\.([0-9a-f]{{16}})\.lock")
    return {int(m.group(1), 16) for m in map(pattern.fullmatch, entries) if m is not None}


def semaphore_path(posix_name: str) -> str:
    """Where Linux keeps a named semaphore."""
    return f"{SHM_DIR}/sem.{posix_name.lstrip('/')}"


def pool_of_entry(entry: str) -> str | None:
    """Pool name of a main-segment `/dev/shm` entry, or None for anything else."""
    if not entry.startswith(PREFIX):
        return None
    rest = entry[len(PREFIX):]
    return None if _RESERVED_SUFFIX.search(rest) else rest

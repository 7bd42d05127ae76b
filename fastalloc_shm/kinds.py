"""Every shared-memory pool kind by the name its header records (names from _layout.KIND_NAMES)."""

from __future__ import annotations

from .growing import GrowingPool
from .pool import FixedPool, SharedPool
from .threadlocal import ThreadLocalPool
from .threadsafe import ThreadSafePool

POOL_KINDS: dict[str, type[SharedPool]] = {
    cls._policy.name: cls for cls in (FixedPool, GrowingPool, ThreadLocalPool, ThreadSafePool)
}
DEFAULT_KIND = FixedPool._policy.name
"""The kind a pool gets when none is named (CLI, daemon)."""

"""Every shared-memory pool kind by the name its header records."""

from __future__ import annotations

from .growing import GrowingPool
from .pool import FixedPool, SharedPool
from .threadlocal import ThreadLocalPool
from .threadsafe import ThreadSafePool

POOL_KINDS: dict[str, type[SharedPool]] = {
    "fixed": FixedPool,
    "growing": GrowingPool,
    "threadlocal": ThreadLocalPool,
    "threadsafe": ThreadSafePool,
}

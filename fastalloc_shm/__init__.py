"""fastalloc-shm: a shared object pool for many processes on one machine.

A pool lives in a named POSIX shared-memory segment; any process that knows
its name attaches and allocates, reads and releases msgpack values through
integer handles. `RedisPool` runs the same API on Redis across hosts.
"""

from typing import TYPE_CHECKING, Any

from . import handle
from .channel import Channel
from .config import GrowthStrategy, PoolConfig
from .errors import (
    ChannelEmpty,
    ConfigError,
    FastallocError,
    IncompatiblePool,
    InvalidHandle,
    LockTimeout,
    PoolExhausted,
    PoolExistsError,
    PoolNotFound,
    SerializationError,
    SharedMemoryFull,
    StaleHandle,
    ValueTooLarge,
)
from .growing import GrowingPool
from .pool import FixedPool, attach, unlink
from .report import RecoveryReport
from .stats import ChannelStatistics, PoolStatistics
from .threadlocal import ThreadLocalPool
from .threadsafe import ThreadSafePool

if TYPE_CHECKING:  # for type checkers only: at run time RedisPool loads on first use (below)
    from .redis_pool import RedisPool


def __getattr__(name: str) -> Any:
    # RedisPool loads on first use: importing redis-py costs ~80 ms and ~10 MB,
    # which shared-memory users (every worker process) should not pay.
    if name == "RedisPool":
        from .redis_pool import RedisPool

        return RedisPool
    raise AttributeError(f"module 'fastalloc_shm' has no attribute {name!r}")


__all__ = [
    "FixedPool",
    "GrowingPool",
    "ThreadLocalPool",
    "ThreadSafePool",
    "RedisPool",
    "PoolConfig",
    "GrowthStrategy",
    "PoolStatistics",
    "ChannelStatistics",
    "RecoveryReport",
    "attach",
    "unlink",
    "handle",
    "Channel",
    "ChannelEmpty",
    "FastallocError",
    "PoolExhausted",
    "StaleHandle",
    "InvalidHandle",
    "ValueTooLarge",
    "SerializationError",
    "PoolNotFound",
    "PoolExistsError",
    "IncompatiblePool",
    "LockTimeout",
    "SharedMemoryFull",
    "ConfigError",
]

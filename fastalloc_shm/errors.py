"""The exceptions of fastalloc-shm: one family under `FastallocError`.

Every message says what happened and what to do about it, naming the pool.
"""

from __future__ import annotations

import queue


class FastallocError(Exception):
    """Base class of every error this library raises."""


class PoolExhausted(FastallocError):
    """No free slot, and the pool cannot (or may not) grow."""


class StaleHandle(FastallocError):
    """The handle's slot was released (its generation moved on)."""


class InvalidHandle(FastallocError):
    """The integer is not a handle of this pool (out of range or garbage)."""


class ValueTooLarge(FastallocError):
    """The packed value does not fit in one slot."""


class SerializationError(FastallocError):
    """The value cannot be packed with msgpack, or a stored value cannot be read."""


class PoolNotFound(FastallocError):
    """No pool of that name exists on this machine (or server)."""


class PoolExistsError(FastallocError):
    """`create` found a pool of that name already."""


class IncompatiblePool(FastallocError):
    """A segment (or key) of that name is not a pool of this layout version."""


class LockTimeout(FastallocError):
    """The pool lock was not acquired within `lock_timeout` seconds."""


class SharedMemoryFull(FastallocError):
    """`/dev/shm` has no room for the segment."""


class ConfigError(FastallocError, ValueError):
    """An invalid configuration value; the message names the field."""


class ChannelEmpty(FastallocError, queue.Empty):
    """A channel had no item within the timeout (a `queue.Empty` too, as `queue.Queue.get` raises)."""

"""The errors only RedisPool raises; `fastalloc_shm.redis_pool` re-exports them.

They join the `FastallocError` family and, where a standard exception says
the same thing, that one too, so `except ConnectionError` keeps working.
"""

from __future__ import annotations

from .errors import FastallocError

EXTRA_HINT = "pip install 'fastalloc-shm[redis]'"


class RedisNotInstalled(FastallocError, ImportError):
    """RedisPool was used without the optional `redis` package (the `redis` extra)."""


class RedisUnavailable(FastallocError, ConnectionError):
    """The Redis server (or cluster) is down, unreachable, slow past the timeout, or refused the login."""


class SharedMemoryOnly(FastallocError, NotImplementedError):
    """The operation needs a shared-memory pool (e.g. `buffer()`); a RedisPool has no local memory."""

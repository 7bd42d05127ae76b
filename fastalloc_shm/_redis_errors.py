"""The errors only RedisPool raises, and the mapping of script replies to exceptions.

The public ones (re-exported by `fastalloc_shm.redis_pool`) join the
`FastallocError` family and, where a standard exception says the same thing,
that one too, so `except ConnectionError` keeps working.
"""

from __future__ import annotations

from ._redis_scripts import INDEX_LIMIT, LAYOUT
from .errors import (
    FastallocError,
    IncompatiblePool,
    InvalidHandle,
    PoolExhausted,
    PoolNotFound,
    SerializationError,
    StaleHandle,
)
from .handle import INDEX_BITS

EXTRA_HINT = "pip install 'fastalloc-shm[redis]'"


class RedisNotInstalled(FastallocError, ImportError):
    """RedisPool was used without the optional `redis` package (the `redis` extra)."""


class RedisUnavailable(FastallocError, ConnectionError):
    """The Redis server (or cluster) is down, unreachable, slow past the timeout, or refused the login."""


class RedisResharding(RedisUnavailable):
    """A Redis Cluster slot kept redirecting or refusing a call (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) for
    longer than the call's timeout: a migration or failover is under way; the message names slot and node."""


class RedisNotDurable(RedisUnavailable):
    """A write the pool's `durability` asks to be confirmed (WAIT replicas, WAITAOF) was not confirmed
    within the call's timeout; it took effect on the primary, where a failover may still lose it."""


class RedisOutOfMemory(FastallocError):
    """The Redis server refused a write because it is at its `maxmemory` (an `OOM` reply); reads still work."""


class SharedMemoryOnly(FastallocError, NotImplementedError):
    """The operation needs a shared-memory pool (e.g. `buffer()`); a RedisPool has no local memory."""


class ScriptError(Exception):
    """A `FASTALLOC <CODE> <fields>` reply of a pool script; `pool_error` makes it a public error."""

    def __init__(self, code: str, rest: str) -> None:
        super().__init__(code, rest)
        self.code = code
        self.rest = rest
        self.fields = rest.split()
        # The node that replied (host:port), when the connection knows it better than its url does.
        self.where: str | None = None


def pool_error(name: str, where: str, exc: ScriptError) -> FastallocError:
    """The public exception for a script's `FASTALLOC <CODE>` reply, naming the node that gave it."""
    where = exc.where or where
    code, fields = exc.code, exc.fields
    if code == "STALE":
        index, generation, current = (int(f) for f in fields)
        handle = (generation << INDEX_BITS) | index
        if generation != current:
            return StaleHandle(
                f"handle {handle} of pool {name!r} is stale: slot {index} was released (generation {generation}"
                f" is now {current}); a handle must not be used after release"
            )
        return StaleHandle(
            f"handle {handle} of pool {name!r} names slot {index}, which is not allocated (never handed out, or"
            " listed twice in one release_many); use each handle a pool returned until its release, once"
        )
    if code == "LOST":
        index, generation, floor = (int(f) for f in fields)
        return StaleHandle(
            f"handle {(generation << INDEX_BITS) | index} of pool {name!r} is stale: the server lost writes it had"
            " acknowledged (it restarted from an older snapshot or AOF, or failed over to a replica that missed"
            " them), so the pool moved to a new epoch and every handle issued before is stale; allocate again"
            " (durability='replicas:N' or an AOF with appendfsync always makes losses rarer)"
        )
    if code == "INVALID":
        index, generation, capacity = (int(f) for f in fields)
        return InvalidHandle(
            f"{(generation << INDEX_BITS) | index} is not a handle of pool {name!r}: slot {index} is beyond its"
            f" {capacity} slots; pass a handle this pool returned"
        )
    if code == "EXHAUSTED":
        capacity, in_use, wanted, limit = (int(f) for f in fields)
        more = f" ({wanted} requested)" if wanted > 1 else ""
        ceiling = f" and is at max_capacity {limit}" if limit < INDEX_LIMIT and capacity + wanted > limit else ""
        return PoolExhausted(
            f"pool {name!r} is full ({in_use}/{capacity} slots in use{more}){ceiling}; release slots, or create"
            " it with a larger capacity or max_capacity and a growth strategy"
        )
    if code == "CHANNELS":
        return FastallocError(
            f"pool {name!r} on Redis at {where} has {fields[0]} channels, the most a pool can have; reuse one"
            " (a channel is opened by name), or use another pool"
        )
    if code == "NOPOOL":
        return PoolNotFound(
            f"no pool {name!r} on Redis at {where} (never created there, or unlinked); create it with"
            " RedisPool.create(), or check the name and url"
        )
    if code == "GONE":
        return PoolNotFound(
            f"pool {name!r} on Redis at {where} was unlinked and created again since this client attached;"
            " attach again to use the new pool (handles of the old one mean nothing there)"
        )
    if code == "DAMAGED":
        meta, *left = fields
        return IncompatiblePool(
            f"pool {name!r} on Redis at {where} is damaged: its key {meta!r} is gone while {', '.join(left)} remain"
            " (the server evicted or someone deleted it; RedisPool needs maxmemory-policy noeviction). Its slots"
            f" cannot be trusted: remove what is left with unlink_pool({name!r}, url) or"
            f" `fastalloc-shm rm {name} --url URL`, then create the pool again"
        )
    if code == "LAYOUT":
        return IncompatiblePool(
            f"pool {name!r} on Redis at {where} has layout {exc.rest!r}; this fastalloc-shm reads {LAYOUT!r}."
            " Use the fastalloc-shm version that created it, or unlink it"
        )
    if code == "FOREIGN":
        key, kind = fields
        return IncompatiblePool(
            f"key {key!r} on Redis at {where} is a {kind} that fastalloc-shm did not create, under the name"
            f" of pool {name!r}; pick another pool name or delete that key"
        )
    if code == "WRONGTYPE":
        return IncompatiblePool(
            f"a key of pool {name!r} on Redis at {where} was replaced by one of another type ({exc.rest});"
            " unlink the pool and create it again"
        )
    if code == "EMPTY":
        return SerializationError(
            f"slot {fields[0]} of pool {name!r} holds no value: the client that acquired it died before storing"
            " one; release the handle"
        )
    return FastallocError(f"pool {name!r} on Redis at {where}: unexpected script reply {code} {exc.rest}")

"""RedisPool: the pool API of the shared-memory kinds, on Redis or Redis Cluster.

A shared-memory pool is one machine by nature; when workers spread over
hosts, the same API runs on an existing distributed engine. Design:

* Every operation is one Lua script (`_redis_scripts`), loaded once and
  called by its SHA1, so Redis applies it atomically and a client killed at
  any point leaves no half state: the role the semaphore and ordered writes
  play in shared memory. Values are packed, and checked against slot_size,
  before any round trip, so bad input never reaches the server.
* All keys of a pool share the hash tag `{fastalloc.NAME}`: one pool lives
  on one cluster slot (its scripts may touch all its keys), many pools
  spread over the cluster.
* Liveness across hosts uses leases, as Redis-based locks do: on its first
  allocation a process registers a client id and keeps a key that expires
  after `lease_ttl` seconds, refreshed every `lease_ttl / 3` by a daemon
  thread. Allocations record their owner; `recover()` acts on owners whose
  lease expired, with the same orphan policy as shared memory. A forked
  child registers anew (the lease and thread are the parent's).
* Handles, errors, PoolConfig and PoolStatistics are those of the
  shared-memory kinds; growth follows the GrowthStrategy inside the script
  (a custom function runs in the client, which passes the amount together
  with the capacity it was computed from, so two clients never grow twice).

redis-py is an optional extra: this module imports without it, and
`RedisPool.create/attach` raise `RedisNotInstalled` naming the extra.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import msgpack
import msgspec

from . import _callables, _codec, _names
from ._base import Pool, build_config, check_same_config
from ._redis_channel import STATISTICS_FIELDS as CHANNEL_FIELDS
from ._redis_channel import RedisChannel
from ._redis_connection import AUTH_ENV, URL_ENV, Connection, mask_url, public_url, with_local_credentials
from ._redis_errors import (
    RedisNotDurable,
    RedisNotInstalled,
    RedisOutOfMemory,
    RedisResharding,
    RedisUnavailable,
    ScriptError,
    SharedMemoryOnly,
    pool_error,
)
from ._redis_scripts import (
    ABANDON,
    ALLOCATE,
    CHANNEL_OPEN,
    CHANNEL_REQUEUE,
    CHANNEL_RESET_STATISTICS,
    CHANNEL_STATISTICS,
    CREATE,
    DESCRIBE,
    GET,
    GOODBYE,
    INDEX_LIMIT,
    LAYOUT,
    MAX_BATCH,
    META_PATTERN,
    NEW_CLIENT,
    NEW_EPOCH,
    RECLAIM,
    RECOVER,
    RELEASE,
    RESET_STATISTICS,
    SET,
    STATISTICS,
    STATISTICS_FIELDS,
    TOUCH,
    UNLINK,
    Script,
    channel_keys,
    lease_key,
    pool_keys,
    pool_of_meta_key,
    queue_keys,
    record_prefix,
)
from ._value_types import difference, schema_of
from .channel import validate_name as validate_channel_name
from .config import ORPHAN_POLICIES, PoolConfig
from .errors import (
    ConfigError,
    FastallocError,
    IncompatiblePool,
    PoolExhausted,
    PoolExistsError,
    SerializationError,
    ValueTooLarge,
)
from .handle import INDEX_BITS, INDEX_MASK, unpack
from .report import RecoveryReport
from .stats import ChannelStatistics, PoolStatistics

__all__ = [
    "RedisPool",
    "list_pools",
    "unlink_pool",
    "RedisNotInstalled",
    "RedisUnavailable",
    "RedisResharding",
    "RedisNotDurable",
    "RedisOutOfMemory",
    "SharedMemoryOnly",
]

DEFAULT_LEASE_TTL = 10.0
# Script flags (no-writes, allow-oom) and RPOP with a count need it.
MIN_REDIS_VERSION = (7, 0)
# durability="aof" waits with WAITAOF, new in this version.
WAITAOF_VERSION = (7, 2)
# A call's reply is recorded under its request id for this long at least (a lease period if longer),
# so that a retry, or the settling of a call given up on, finds it (see _redis_scripts._ONCE).
MIN_RECORD_TTL = 60.0
# The lease is refreshed every ttl/3; a shorter ttl would keep a thread busy
# and expire on any scheduling hiccup.
MIN_LEASE_TTL = 0.1

_log = logging.getLogger(__name__)
_open_pools: weakref.WeakSet[RedisPool] = weakref.WeakSet()


# allocate(timeout=) polls a full pool this often, doubling from the first to the last.
_FIRST_PAUSE, _LAST_PAUSE = 0.001, 0.05


def _check_batch(method: str, count: int, what: str) -> None:
    """ValueError unless a batch of `count` fits one script call (MAX_BATCH)."""
    if count > MAX_BATCH:
        raise ValueError(f"{method}: {count} {what} in one call, more than the {MAX_BATCH} a RedisPool call may"
                         f" move (MAX_BATCH: each call is one script, and Redis serves no other client while it"
                         f" runs); pass at most {MAX_BATCH} a call")


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < float("inf"):
        raise ValueError(f"timeout: seconds, finite and >= 0 (or None), got {timeout!r}")
    return float(timeout)


class RedisPool(Pool):
    """A pool of msgpack values on a Redis server or Redis Cluster, shared by processes on any host.

    The creator owns the pool's keys on the server: `unlink()` (or leaving a
    `with RedisPool.create(...)` block) deletes them. Every instance owns one
    redis-py client and, once it allocates, a lease refreshed by a daemon
    thread; `close()` ends both and leaves the pool on the server.

    Differences from the shared-memory kinds: `buffer()` raises
    SharedMemoryOnly; the statistics' lock fields stay 0 (Redis runs each
    script atomically, no client takes a lock); the config fields alignment,
    huge_pages, lock_timeout, batch_size, mode and pre_initialize have no
    effect (there is no local memory to lay out or touch in advance); and
    `capacity` and `len()` ask the server (one round trip each). Needs
    Redis 7.0 or newer.

    >>> with RedisPool.create("jobs", url="redis://localhost:6379/0", capacity=1000) as pool:  # doctest: +SKIP
    ...     h = pool.allocate({"id": 1})
    ...     pool.get(h)
    {'id': 1}
    """

    # Most values or handles one allocate_many/release_many (or a channel's put_many/get_many) moves.
    MAX_BATCH = MAX_BATCH

    # Class-level defaults: repr() and close() work even if __init__ failed half-way.
    _name = ""
    _url = ""
    _cluster = False
    _slot_size = 0
    _creator = False
    _closed = True
    _client_id: int | None = None
    _farewell: weakref.finalize | None = None

    def __init__(
        self,
        name: str,
        url: str,
        cluster: bool,
        lease_ttl: float,
        config: PoolConfig,
        conn: Connection,
        incarnation: str,
        *,
        creator: bool,
        allow_eviction: bool = False,
        reset_unimportable: bool = False,
        durability: str | None = None,
        value_type: Any = None,
    ) -> None:
        """Private: use `RedisPool.create` or `RedisPool.attach`."""
        self._name = name
        self._codec = _codec.Codec(value_type)
        self._url = url
        self._cluster = cluster
        self._lease_ttl = lease_ttl
        self._config = config
        self._slot_size = config.slot_size
        self._conn: Connection | _ClosedConnection = conn
        self._keys = pool_keys(name)
        self._incarnation = incarnation
        self._creator = creator
        self._allow_eviction = allow_eviction
        self._durability = durability
        self._reset_unimportable = reset_unimportable
        self._register_lock = threading.Lock()
        self._record_ms = round(1000 * max(lease_ttl, MIN_RECORD_TTL))
        conn.require(durability)
        # Has the server lost acknowledged writes since the pool's last server saw it? Checked now
        # and first thing on every new connection (see _redis_scripts.NEW_EPOCH).
        try:
            conn.greet(NEW_EPOCH, self._keys, (incarnation,))
        except ScriptError as exc:
            raise pool_error(name, conn.address, exc) from None
        self._requests = itertools.count(1)
        self._new_lanes()
        self._closed = False
        _open_pools.add(self)

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        *,
        url: str,
        cluster: bool = False,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        capacity: int | None = None,
        slot_size: int | None = None,
        config: PoolConfig | None = None,
        exist_ok: bool = False,
        allow_eviction: bool = False,
        durability: str | None = None,
        username: str | None = None,
        password: str | None = None,
        value_type: Any = None,
        **overrides: Any,
    ) -> RedisPool:
        """Create pool `name` on the server at `url` (a cluster node if `cluster`).

        Give `capacity` (and `slot_size`, default 256 bytes) or a PoolConfig;
        keywords and `overrides` (PoolConfig fields) replace the config's
        values. With `exist_ok=True` an existing pool whose every config field
        is the same (callables by import path) is attached instead of
        raising PoolExistsError. Creation is atomic: of many concurrent
        creators exactly one creates.

        The server must run Redis >= 7.0 with `maxmemory-policy noeviction`
        (an evicting server drops pool keys and live clients' leases
        silently): ConfigError otherwise, unless `allow_eviction=True`.
        `durability="replicas:N"` returns from a write only once N replicas have it (WAIT),
        `"aof"` once the primary's AOF has it on disk (WAITAOF, Redis >= 7.2); RedisNotDurable if
        that is not confirmed within the call's timeout. A server that lost acknowledged writes
        anyway (restart, failover) is noticed, and handles from before it turn StaleHandle.
        `username`/`password` log in where the url carries none; like the
        url's, they never show in a pickle, repr, log line or error. `value_type` makes a typed
        pool, as for the shared-memory kinds.

        >>> pool = RedisPool.create("jobs", url="redis://cache:6379/0", capacity=10_000)  # doctest: +SKIP
        """
        _names.validate(name)
        _check_lease_ttl(lease_ttl)
        _check_durability(durability)
        config = build_config(capacity, slot_size, config, overrides)
        config = replace(config, value_schema=None if value_type is None else schema_of(value_type))
        if config.capacity > INDEX_LIMIT:
            raise ConfigError(f"capacity: {config.capacity} slots is more than a pool can index ({INDEX_LIMIT})")
        conn = Connection(url, cluster, username=username, password=password)
        try:
            _check_server(conn, allow_eviction, durability)
            strategy = config.growth_strategy
            max_capacity = -1 if config.max_capacity is None else min(config.max_capacity, INDEX_LIMIT)
            incarnation = secrets.token_hex(8)
            args = (incarnation, _pack_record(config.to_record()), config.capacity, config.slot_size, max_capacity,
                    strategy.kind, repr(float(strategy.value)), f"{round(1000 * MIN_RECORD_TTL)}/1")
            try:
                record = record_prefix(name) + "create:" + incarnation
                created = conn.run(CREATE, [*pool_keys(name), record], args) == b"CREATED"
            except ScriptError as exc:
                raise pool_error(name, conn.address, exc) from None
            if created:
                return cls(name, url, cluster, lease_ttl, config, conn, incarnation, creator=True,
                           allow_eviction=allow_eviction, durability=durability, value_type=value_type)
            if not exist_ok:
                raise PoolExistsError(
                    f"pool {name!r} already exists on Redis at {conn.address}; attach to it with"
                    " RedisPool.attach(), pass exist_ok=True, or unlink it first"
                )
            found, incarnation, reset_unimportable = _describe(conn, name)
            _check_value_type(name, found, value_type)
            check_same_config(f"pool {name!r} on Redis at {conn.address}", found, config,
                              "attach to it as it is (RedisPool.attach), or pick another name")
            return cls(name, url, cluster, lease_ttl, found, conn, incarnation, creator=False,
                       allow_eviction=allow_eviction, reset_unimportable=reset_unimportable, durability=durability,
                       value_type=value_type)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        url: str,
        cluster: bool = False,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        allow_eviction: bool = False,
        durability: str | None = None,
        username: str | None = None,
        password: str | None = None,
        value_type: Any = None,
    ) -> RedisPool:
        """Attach to the existing pool `name` on the server at `url`; PoolNotFound if there is none,
        IncompatiblePool if it is damaged (say, its meta key was evicted). The server is checked as
        by `create` (Redis >= 7.0, maxmemory-policy noeviction unless `allow_eviction=True`);
        `durability` as for `create`; `value_type` as for the shared-memory kinds' attach.

        >>> other = RedisPool.attach("jobs", url="redis://cache:6379/0")  # doctest: +SKIP
        """
        _names.validate(name)
        _check_lease_ttl(lease_ttl)
        _check_durability(durability)
        conn = Connection(url, cluster, username=username, password=password)
        try:
            _check_server(conn, allow_eviction, durability)
            config, incarnation, reset_unimportable = _describe(conn, name)
            _check_value_type(name, config, value_type)
            return cls(name, url, cluster, lease_ttl, config, conn, incarnation, creator=False,
                       allow_eviction=allow_eviction, reset_unimportable=reset_unimportable, durability=durability,
                       value_type=value_type)
        except BaseException:
            conn.close()
            raise

    # -- values -------------------------------------------------------------------------

    def allocate(self, value: Any, timeout: float | None = None) -> int:
        """Store `value` in a free slot and return its handle; PoolExhausted when full at max_capacity,
        or, with `timeout`, when no slot was released within that many seconds.

        >>> h = pool.allocate({"id": 1, "tags": [1, 2]})  # doctest: +SKIP
        """
        self._check_open()
        payload = (self._pack(value),)
        deadline = None if timeout is None else time.monotonic() + _check_timeout(timeout)
        pause = _FIRST_PAUSE
        while True:
            try:
                reply = self._allocate(1, payload)
                return (reply[2] << INDEX_BITS) | reply[1]
            except PoolExhausted:
                # The server has no blocking pop for a slot: poll, backing off, until the deadline.
                if deadline is None or time.monotonic() >= deadline:
                    raise
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, _LAST_PAUSE)

    def allocate_many(self, values: Iterable[Any]) -> list[int]:
        """Store every value, in one round trip; all or none (PoolExhausted allocates nothing).

        At most MAX_BATCH (1,000) values a call, else ValueError before anything is sent: the call is
        one script, and Redis serves no other client while a script runs. Not split into several
        scripts, which would make the batch no longer all or nothing: allocate in batches of at most
        MAX_BATCH, each all or nothing by itself."""
        self._check_open()
        values = list(values)
        _check_batch("allocate_many", len(values), "values")
        payloads = [self._pack(value) for value in values]
        if not payloads:
            return []
        reply = self._allocate(len(payloads), payloads)
        return [(generation << INDEX_BITS) | index for index, generation in zip(reply[1::2], reply[2::2], strict=True)]

    def get(self, handle: int) -> Any:
        """The value in the handle's slot (a fresh Python object); StaleHandle after release."""
        self._check_open()
        index, generation = unpack(handle)
        return self._unpack(self._run(GET, (index, generation)), index)

    def set(self, handle: int, value: Any) -> None:
        """Replace the value in the handle's slot."""
        self._check_open()
        index, generation = unpack(handle)
        self._once(SET, [index, generation, self._pack(value)])

    def release(self, handle: int) -> None:
        """Return the slot to the free list; `handle` is stale from now on (a second release raises)."""
        self._check_open()
        self._once(RELEASE, [*unpack(handle)])

    def release_many(self, handles: Iterable[int]) -> None:
        """Release every handle, in one round trip; if any is stale or invalid, none is released.

        At most MAX_BATCH (1,000) handles a call, else ValueError before anything is sent (one script
        each, as allocate_many; split, a stale handle in one part would not stop the others)."""
        self._check_open()
        args: list[int] = []
        for handle in handles:
            args.extend(unpack(handle))
        _check_batch("release_many", len(args) // 2, "handles")
        if args:
            self._once(RELEASE, args)

    # -- acquire()'s steps (its policy is Pool.acquire): two round trips, take the slot, then store

    def _take_slot(self) -> tuple[int, bytes | None]:
        reply = self._allocate(1, ())
        return (reply[2] << INDEX_BITS) | reply[1], reply[3]

    def _decode_previous(self, slot: int, payload: bytes) -> Any:
        return self._unpack(payload, slot & INDEX_MASK)

    def _fill_slot(self, slot: int, value: Any) -> int:
        self.set(slot, value)
        return slot

    def _keep_slot(self, slot: int, previous: Any) -> int:
        return slot

    def _return_slot(self, slot: int) -> None:
        with contextlib.suppress(FastallocError):
            self.release(slot)

    def channel(self, name: str) -> RedisChannel[Any]:
        """The pool's channel `name` on the server (created if the pool has none of that name; up to 64
        per pool): the shared-memory Channel's API and semantics, from any host. An item a consumer took
        with get_handle goes back to the head of its channel once the consumer's lease expires.

        >>> todo = pool.channel("todo"); todo.put({"id": 1}); todo.get()  # doctest: +SKIP
        {'id': 1}
        """
        self._check_open()
        name = validate_channel_name(name)
        return RedisChannel(self, name, int(self._once(CHANNEL_OPEN, [name], channel_keys(self._name)[:1])))

    def buffer(self, handle: int) -> memoryview:
        """Shared-memory pools only: raises SharedMemoryOnly."""
        self._check_open()
        raise SharedMemoryOnly(
            f"buffer(): pool {self._name!r} is a RedisPool; its values live on the Redis server, so there are"
            " no raw bytes to map here. Use get()/set(), or a shared-memory pool (FixedPool) for zero-copy access"
        )

    # -- state ---------------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """The pool's counters, shared by all its clients (lock_* fields stay 0 on Redis)."""
        self._check_open()
        values = dict(zip(STATISTICS_FIELDS, self._run(STATISTICS, ()), strict=True))
        return PoolStatistics(
            capacity=values["capacity"],
            current_usage=values["in_use"],
            peak_usage=values["peak"],
            total_allocations=values["total_allocations"],
            total_deallocations=values["total_deallocations"],
            allocation_failures=values["allocation_failures"],
            growth_count=values["growth_count"],
            recoveries=values["recoveries"],
            channels=self._channel_statistics(),
        )

    def _channel_statistics(self) -> dict[str, ChannelStatistics]:
        numbers = range(_channel_count(self._conn, self._name))
        if not numbers:
            return {}
        names = self._command("HMGET", channel_keys(self._name)[0], *(f"{n}:name" for n in numbers))
        values = self._run(CHANNEL_STATISTICS, numbers, _all_channel_keys(self._name, len(numbers)))
        width = len(CHANNEL_FIELDS)
        return {name.decode(): ChannelStatistics(**dict(zip(CHANNEL_FIELDS, values[n * width:(n + 1) * width],
                                                            strict=True)))
                for n, name in zip(numbers, names, strict=True)}

    def reset_statistics(self) -> None:
        """Zero every counter, as the crate's reset does; capacity and current usage stay true and
        the peak restarts at the current usage."""
        self._check_open()
        self._run(RESET_STATISTICS, ())
        if count := _channel_count(self._conn, self._name):
            self._run(CHANNEL_RESET_STATISTICS, range(count), _all_channel_keys(self._name, count))

    def recover(self, orphan_policy: str | None = None) -> RecoveryReport:
        """Act on slots owned by clients whose lease expired (the client died or lost the server).

        "keep" (default: the config's orphan_policy) leaves them allocated, since
        a producer may die after handing a handle on, and counts them;
        "reclaim" frees them (their handles turn stale).
        """
        self._check_open()
        policy = self._config.orphan_policy if orphan_policy is None else orphan_policy
        if policy not in ORPHAN_POLICIES:
            raise ConfigError(f"orphan_policy: {policy!r} is not one of {ORPHAN_POLICIES}")
        # The script can only touch keys it is given, so the leases to check are named first;
        # a client registering meanwhile is alive anyway.
        clients = sorted(int(c) for c in self._command("SMEMBERS", self._keys[6]))
        # First the items dead consumers took from channels: back at the head, not kept or freed.
        requeued = _requeue(self._conn, self._name, self._incarnation, clients, self._lane(),
                            lambda: f"{self._record_ms}/{next(self._requests)}")
        leases = [lease_key(self._name, c) for c in clients]
        kept, reclaimed, *dead = self._run(RECOVER, (policy, *clients), leases)
        if policy == "reclaim" and dead:
            # Freed by cursor, a bounded batch per script: a big pool never holds the server long.
            dead_clients = [int(c) for c in dead]
            dead_leases = [lease_key(self._name, c) for c in dead_clients]
            cursor: Any = 0
            while True:
                cursor, freed = self._once(RECLAIM, [cursor, reclaimed, *dead_clients], dead_leases)
                reclaimed += freed
                if int(cursor) == 0:
                    break
        return RecoveryReport(
            pool=self._name,
            orphan_policy=policy,
            dead_clients=tuple(sorted(int(c) for c in dead)),
            orphans_kept=kept,
            orphans_reclaimed=reclaimed,
            requeued=requeued,
        )

    def __len__(self) -> int:
        """Slots in use now (one round trip)."""
        self._check_open()
        return self._run(STATISTICS, ())[1]

    @property
    def name(self) -> str:
        """The pool's name."""
        return self._name

    @property
    def capacity(self) -> int:
        """Slots the pool has now, grown or not (one round trip)."""
        self._check_open()
        return self._run(STATISTICS, ())[0]

    @property
    def slot_size(self) -> int:
        """Largest packed value, in bytes."""
        return self._slot_size

    @property
    def config(self) -> PoolConfig:
        """The configuration the pool was created with (attachers: callables as import paths)."""
        return self._config

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """End this instance's lease and connection; the pool stays on the server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _open_pools.discard(self)
        conn = self._conn
        self._conn = _ClosedConnection(self._name)
        if self._farewell is not None:
            self._farewell()  # stops the lease thread, then deletes the lease and the registry entry
            self._farewell = None
        self._client_id = None
        conn.close()

    def unlink(self) -> None:
        """Delete the pool's keys on the server; every client's next call raises PoolNotFound.

        Only this pool: if it was unlinked and created again meanwhile, the new one stays.
        """
        if not self._closed:
            _unlink(self._conn, self._name, self._incarnation)
            return
        conn = Connection(self._url, self._cluster)
        try:
            _unlink(conn, self._name, self._incarnation)
        finally:
            conn.close()

    def __reduce__(self) -> tuple[Callable[..., RedisPool], tuple[Any, ...]]:
        # Pickles as "attach by name": the url travels without credentials (a pickle
        # is easily logged, queued or stored); the receiver logs in with its own.
        return _attach_pickled, (self._name, public_url(self._url), self._cluster, self._lease_ttl,
                                 self._allow_eviction, self._durability, self.value_type)

    def __repr__(self) -> str:
        where = mask_url(self._url) + (" (cluster)" if self._cluster else "")
        role = "creator" if self._creator else "attached"
        state = ", closed" if self._closed else ""
        return f"<RedisPool {self._name!r} at {where}, slot_size={self._slot_size}, {role}{state}>"

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FastallocError(f"pool {self._name!r} is closed in this process; attach again to use it")

    def _allocate(self, count: int, payloads: tuple[bytes, ...] | list[bytes]) -> list[Any]:
        """Run ALLOCATE, answering the script's requests for a custom growth amount."""
        client = self._client_id or self._register()
        if self._abandoned:
            _settle(self._conn, self._keys, self._incarnation, self._abandoned)
        grow_from, grow_by = -1, 0
        lane = self._lane()
        request = f"{self._record_ms}/{next(self._requests)}"
        while True:
            try:
                return self._conn.run(
                    ALLOCATE, [*self._keys, lane],
                    (self._incarnation, client, count, grow_from, grow_by, *payloads, request),
                )
            except ScriptError as exc:
                if exc.code != "GROW":
                    raise pool_error(self._name, self._conn.address, exc) from None
                grow_from = int(exc.fields[0])
                grow_by = self._custom_growth(grow_from)
            except RedisUnavailable:
                # The script may have run, its reply lost: the slots would be this live client's with
                # no handle held. The lane is left to the record; the next call, or the lease thread,
                # frees them (ABANDON), and a new lane serves this thread from now on.
                self._abandoned.append((lane, request))
                self._lanes.key = None
                raise

    def _lane(self) -> str:
        """This thread's record key (see _redis_scripts._ONCE): a thread's calls come one at a time."""
        lane = getattr(self._lanes, "key", None)
        if lane is None:
            lane = self._lanes.key = f"{self._lane_prefix}{next(self._lane_ids)}"
        return lane

    def _new_lanes(self) -> None:
        self._lane_prefix = f"{record_prefix(self._name)}{secrets.token_hex(6)}:"
        self._lanes = threading.local()
        self._lane_ids = itertools.count(1)
        self._abandoned: list[tuple[str, str]] = []

    def _once(self, script: Script, args: list[Any], extra_keys: list[str] | None = None) -> Any:
        """Run a mutating script under a request id (a retry is answered from its record)."""
        keys = [*self._keys, *(extra_keys or ()), self._lane()]
        try:
            return self._conn.run(script, keys, (self._incarnation, *args, f"{self._record_ms}/{next(self._requests)}"))
        except ScriptError as exc:
            raise pool_error(self._name, self._conn.address, exc) from None

    def _run(self, script: Script, args: Iterable[Any], extra_keys: list[str] | None = None) -> Any:
        keys = self._keys if extra_keys is None else [*self._keys, *extra_keys]
        try:
            return self._conn.run(script, keys, (self._incarnation, *args))
        except ScriptError as exc:
            raise pool_error(self._name, self._conn.address, exc) from None

    def _command(self, *args: Any) -> Any:
        try:
            return self._conn.command(*args)
        except ScriptError as exc:
            raise pool_error(self._name, self._conn.address, exc) from None

    def _pack(self, value: Any) -> bytes:
        try:
            payload = self._codec.pack(value)
        except (TypeError, ValueError, OverflowError) as exc:  # msgspec's errors are ValueErrors too
            raise SerializationError(f"pool {self._name!r}: {_codec.pack_error(value, exc)}") from None
        if len(payload) > self._slot_size:
            raise ValueTooLarge(
                f"value packs to {len(payload)} bytes but pool {self._name!r} has slot_size {self._slot_size};"
                " store less, or create the pool with a larger slot_size"
            )
        return payload

    def _unpack(self, payload: bytes, index: int) -> Any:
        try:
            return self._codec.unpack(payload)
        except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
            if isinstance(exc, msgspec.ValidationError):
                raise SerializationError(f"slot {index} of pool {self._name!r} holds a value not of its value_type "
                                         f"({exc}); set() it again") from None
            raise SerializationError(
                f"slot {index} of pool {self._name!r} holds bytes msgpack cannot read ({exc});"
                " something other than fastalloc-shm wrote them"
            ) from None

    @property
    def value_type(self) -> Any:
        """The type values come back as in this attachment (None: plain msgpack values)."""
        codec = getattr(self, "_codec", None)  # None if __init__ failed half-way
        return None if codec is None else codec.value_type

    def _register(self) -> int:
        """Register this process as a client of the pool and start refreshing its lease."""
        with self._register_lock:
            if self._client_id is None:
                client = int(self._run(NEW_CLIENT, ()))
                keys = [*self._keys, lease_key(self._name, client)]
                ttl_ms = max(1, round(self._lease_ttl * 1000))
                self._run(TOUCH, (client, ttl_ms), keys[len(self._keys):])
                stop = threading.Event()
                thread = threading.Thread(
                    target=_keep_lease,
                    args=(self._conn, self._name, keys, (self._incarnation, client, ttl_ms), self._lease_ttl / 3,
                          stop, self._abandoned),
                    name=f"fastalloc-lease-{self._name}",
                    daemon=True,
                )
                thread.start()
                # Runs once: at close(), when the pool is garbage, or at interpreter exit (finalize's
                # atexit), so a process that never calls close() leaves no lease or registry entry.
                self._farewell = weakref.finalize(self, _farewell, os.getpid(), self._conn, keys, self._abandoned,
                                                  (self._incarnation, client), stop, thread)
                self._client_id = client
            return self._client_id

    def _forget_client(self) -> None:
        """In a forked child: the lease and its thread are the parent's; register anew when allocating."""
        self._client_id = None
        if self._farewell is not None:
            self._farewell.detach()  # the parent's to say, not this child's
            self._farewell = None
        self._register_lock = threading.Lock()
        self._new_lanes()  # the parent's records and abandoned calls are the parent's

    def _custom_growth(self, capacity: int) -> int:
        if self._config.growth_strategy.fn is None:
            raise ConfigError(
                f"growth_strategy: pool {self._name!r} grows by a custom function that cannot be imported in"
                " this process (it was a lambda or local function); give a module-level function or"
                " 'module:qualname' when creating the pool"
            )
        return self._config.growth_amount(capacity)

    def _callable(self, fn: Callable[..., Any] | str, field_name: str) -> Callable[..., Any]:
        return _callables.as_callable(fn, field_name)

    def _reset_callables(self) -> tuple[Callable[[], Any], Callable[[Any], Any] | None]:
        if self._config.reset is None and self._reset_unimportable:
            raise ConfigError(
                f"reset: pool {self._name!r} was created with reset functions that cannot be imported in this"
                " process (a lambda or local function); give module-level functions or 'module:qualname' strings"
            )
        return super()._reset_callables()


class _ClosedConnection:
    """Stands in for the connection of a closed pool: every call says so."""

    address = "(closed)"

    def __init__(self, name: str) -> None:
        self._name = name

    def _refuse(self, *args: Any) -> Any:
        raise FastallocError(f"pool {self._name!r} is closed in this process; attach again to use it")

    run = command = _refuse

    def close(self) -> None:
        """Nothing left to close."""


def list_pools(url: str, cluster: bool = False) -> list[str]:
    """Names of the pools on the server (all primaries of a cluster) at `url`, sorted."""
    conn = Connection(url, cluster)
    try:
        names = set()
        for key in conn.scan(META_PATTERN):
            name = pool_of_meta_key(key.decode(errors="replace"))
            if name and conn.command("HGET", key, "layout") == LAYOUT.encode():
                names.add(name)
        return sorted(names)
    finally:
        conn.close()


def unlink_pool(name: str, url: str, cluster: bool = False) -> bool:
    """Delete pool `name` on the server at `url`; False if there was none."""
    _names.validate(name)
    conn = Connection(url, cluster)
    try:
        return _unlink(conn, name, "")
    finally:
        conn.close()


def _unlink(conn: Connection | _ClosedConnection, name: str, incarnation: str) -> bool:
    """Delete pool `name` if it is of `incarnation` ('': whichever exists); True if deleted."""
    keys = pool_keys(name)
    try:
        try:
            leases = [lease_key(name, client.decode()) for client in conn.command("SMEMBERS", keys[6])]
        except ScriptError as exc:
            if exc.code != "WRONGTYPE":
                raise
            # The registry was replaced by a key of another type: a damaged pool is unlinked all the same,
            # its leases found by name.
            leases = [key.decode() for key in conn.scan(lease_key(name, "*"), kind="string")]
        records = [key.decode() for key in conn.scan(record_prefix(name) + "*", kind="string")]
        channels = [*channel_keys(name), *_all_channel_keys(name, _channel_count(conn, name))[2:]]
        return bool(conn.run(UNLINK, [*keys, *leases, *records, *channels], (incarnation,)))
    except ScriptError as exc:
        raise pool_error(name, conn.address, exc) from None


def _check_value_type(name: str, config: PoolConfig, value_type: Any) -> None:
    """An attacher naming a type must find that type's schema recorded (as SharedPool.attach)."""
    if value_type is not None and (wanted := schema_of(value_type)) != config.value_schema:
        raise IncompatiblePool(f"pool {name!r}: {difference(config.value_schema, wanted)}")


def _attach_pickled(name: str, url: str, cluster: bool, lease_ttl: float, allow_eviction: bool = False,
                    durability: str | None = None, value_type: Any = None) -> RedisPool:
    full_url, source = with_local_credentials(url)
    try:
        return RedisPool.attach(name, url=full_url, cluster=cluster, lease_ttl=lease_ttl,
                                allow_eviction=allow_eviction, durability=durability, value_type=value_type)
    except RedisUnavailable as exc:
        if source is not None:
            raise
        raise RedisUnavailable(
            f"{exc}. A pickled RedisPool carries no credentials and this process has none of its own: set"
            f" {URL_ENV}=redis://user:password@host:port/db or {AUTH_ENV}=password in its environment"
        ) from None


# The lease thread prunes the registry once per this many refreshes (about one lease period).
_PRUNE_EVERY = 3


def _keep_lease(
    conn: Connection, name: str, keys: list[str], args: tuple[str, int, int], interval: float,
    stop: threading.Event, abandoned: list[tuple[str, str]],
) -> None:
    """Body of a lease thread: refresh until stopped, or until the pool is gone; about once a lease
    period also drop registry entries of clients whose lease expired and who own nothing (processes
    killed before they could say goodbye), so the registry holds the live clients, those that died
    within one lease period, and the dead that own slots (for recover())."""
    refreshes = 0
    # The requeue steps' record key and request ids: this thread's own (see _redis_scripts._ONCE).
    lane = f"{record_prefix(name)}{secrets.token_hex(6)}:lease"
    requests = itertools.count(1)
    record_ms = round(1000 * max(3 * interval, MIN_RECORD_TTL))
    while not stop.wait(interval):
        try:
            if not conn.run(TOUCH, keys, args):
                return
            if abandoned:
                _settle(conn, keys[:-1], args[0], abandoned)
            refreshes += 1
            if refreshes % _PRUNE_EVERY == 0 and not stop.is_set():
                _prune(conn, name, keys[:-1], args[0], lane, lambda: f"{record_ms}/{next(requests)}")
        except ScriptError:
            return
        except FastallocError as exc:
            _log.warning("fastalloc-shm: lease refresh failed, retrying in %.2f s: %s", interval, exc)


def _prune(conn: Connection, name: str, keys: list[str], incarnation: str, lane: str,
           request: Callable[[], str]) -> None:
    """Put the items that clients of pool `name` whose lease expired took from channels back at their
    heads, then unregister those that own no slot (RECOVER, keeping)."""
    clients = sorted(int(c) for c in conn.command("SMEMBERS", keys[6]))
    if clients:
        _requeue(conn, name, incarnation, clients, lane, request)
        conn.run(RECOVER, [*keys, *(lease_key(name, c) for c in clients)], (incarnation, "keep", *clients))


def _channel_count(conn: Connection | _ClosedConnection, name: str) -> int:
    """How many channels pool `name` has (one round trip)."""
    return int(conn.command("HGET", channel_keys(name)[0], "#count") or 0)


def _all_channel_keys(name: str, count: int) -> list[str]:
    """The channel table, the taken slots, then the keys of channels 0..count-1 (queue_keys)."""
    return [*channel_keys(name), *(key for number in range(count) for key in queue_keys(name, number))]


def _requeue(conn: Connection, name: str, incarnation: str, clients: list[int], lane: str,
             request: Callable[[], str]) -> int:
    """Put the slots that clients of `clients` whose lease expired took from channels of pool `name`
    (get_handle) and still hold back at the head of their channels, by cursor (CHANNEL_REQUEUE
    steps); the count put back. `lane`/`request`: the caller's record key and request ids."""
    count = _channel_count(conn, name) if clients else 0
    if not count:
        return 0
    keys = [*pool_keys(name), *_all_channel_keys(name, count), *(lease_key(name, c) for c in clients), lane]
    cursor: Any = 0
    total = 0
    while True:
        try:
            cursor, moved = conn.run(CHANNEL_REQUEUE, keys, (incarnation, cursor, count, *clients, request()))
        except ScriptError as exc:
            raise pool_error(name, conn.address, exc) from None
        total += moved
        if int(cursor) == 0:
            return total


def _settle(conn: Connection, keys: list[str], incarnation: str, abandoned: list[tuple[str, str]]) -> None:
    """Free the slots of allocations given up on (RedisUnavailable) whose script ran all the same:
    nobody holds their handles. Kept for later while the server cannot be reached."""
    for lane, request in list(abandoned):
        with contextlib.suppress(ScriptError):  # the pool is gone: nothing left to free
            conn.run(ABANDON, [*keys, lane], (incarnation, request))
        with contextlib.suppress(ValueError):  # another thread settled it meanwhile
            abandoned.remove((lane, request))


def _farewell(pid: int, conn: Connection, keys: list[str], abandoned: list[tuple[str, str]], args: tuple[str, int],
              stop: threading.Event, thread: threading.Thread) -> None:
    """A client leaves: stop its lease thread, delete its lease and (if it owns no slot: one that does
    stays registered, so recover() can act on its slots) its registry entry. Only in the process that
    registered it: a forked child inherits the finalizer, not the client."""
    stop.set()
    if os.getpid() != pid:
        return
    if thread is not threading.current_thread():
        thread.join(timeout=1.0)
    with contextlib.suppress(ScriptError, FastallocError):
        if abandoned:
            _settle(conn, keys[:-1], args[0], abandoned)
        conn.run(GOODBYE, keys, args)


def _after_fork_in_child() -> None:
    for pool in list(_open_pools):
        pool._forget_client()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_durability(durability: str | None) -> None:
    kind, colon, count = (durability or "").partition(":")
    if durability is None or durability == "aof" or (kind == "replicas" and colon and count.isdigit() and int(count) > 0):
        return
    raise ConfigError(f"durability: expected None, 'aof' or 'replicas:N' (N >= 1), got {durability!r}")


def _check_server(conn: Connection, allow_eviction: bool, durability: str | None = None) -> None:
    """Refuse a server older than MIN_REDIS_VERSION, one that may evict pool keys (unless allowed),
    or one too old for the durability asked (WAITAOF needs Redis >= 7.2)."""
    minimum = ".".join(map(str, MIN_REDIS_VERSION))
    for where, info in conn.server_info():
        version = str(info.get("redis_version", ""))
        try:
            parsed: tuple[int, ...] = tuple(int(p) for p in version.split(".")[:2])
        except ValueError:
            parsed = MIN_REDIS_VERSION  # a fork with its own numbering: its scripts will say what they lack
        too_old = parsed < MIN_REDIS_VERSION
        if too_old:
            raise ConfigError(
                f"server: Redis at {where} is version {version}; RedisPool needs Redis >= {minimum}"
                " (script flags keep reads working at maxmemory); upgrade the server"
            )
        if durability == "aof" and parsed < WAITAOF_VERSION:
            raise ConfigError(
                f"durability: 'aof' waits with WAITAOF, which Redis at {where} (version {version}) lacks: it needs"
                f" Redis >= {'.'.join(map(str, WAITAOF_VERSION))}. Upgrade the server, or use durability='replicas:N'"
                " with replicas (or appendfsync always on the server, which makes every write wait for the disk)"
            )
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction" and not allow_eviction:
            raise ConfigError(
                f"maxmemory-policy: Redis at {where} runs with maxmemory-policy {policy}, so under memory pressure"
                " it may silently evict a pool's keys or a live client's lease (and recover() would then free"
                " slots still in use). Set `maxmemory-policy noeviction` (redis.conf, or CONFIG SET"
                " maxmemory-policy noeviction), or pass allow_eviction=True if you accept that risk"
            )


def _check_lease_ttl(lease_ttl: float) -> None:
    if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)) or not (
        MIN_LEASE_TTL <= lease_ttl < math.inf
    ):
        raise ConfigError(f"lease_ttl: expected seconds >= {MIN_LEASE_TTL}, got {lease_ttl!r}")


def _pack_record(record: dict[str, Any]) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def _describe(conn: Connection, name: str) -> tuple[PoolConfig, str, bool]:
    """The pool's stored config, its incarnation, and whether its reset functions could not be recorded."""
    try:
        incarnation, blob = conn.run(DESCRIBE, pool_keys(name), ("",))
    except ScriptError as exc:
        raise pool_error(name, conn.address, exc) from None
    try:
        incarnation = incarnation.decode()
        record = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        config = PoolConfig.from_record(record)
    except Exception as exc:  # a damaged header fails in msgpack or in PoolConfig, in many ways
        raise IncompatiblePool(
            f"pool {name!r} on Redis at {conn.address} has a config record this version cannot read ({exc});"
            " unlink the pool and create it again"
        ) from None
    reset = record.get("reset")
    return config, incarnation, bool(reset) and None in reset



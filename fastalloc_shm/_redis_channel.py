"""RedisPool's channels: FIFOs of the pool's slots on Redis, with the shared-memory Channel's API.

`RedisPool.channel(name)` returns a RedisChannel: the same methods, signatures,
exceptions and semantics as `channel.Channel` (FIFO per channel, each item to
exactly one consumer, waits as `queue.Queue`'s, at-least-once delivery of items
taken with `get_handle`), so a job moves from one host to several unchanged.

Design:

* A channel is a Redis list of slot indices under the pool's hash tag (keys in
  `_redis_scripts`), so on a cluster it lives on the pool's node and one script
  may touch the pool and the channel together. A put is one script round trip
  (take free slots, store the payloads, queue them at the tail: all or nothing
  for `put_many`), a get another (pop from the head, read the payloads, free the
  slots; or, for `get_handle`, hand the slots to the consumer's client id and
  record that in `T:taken`). Every one carries a request id like the pool's other
  mutating scripts, so a retry after a lost reply is answered from its record and
  takes effect once.
* At-least-once: a slot taken with `get_handle` is owned by the consumer's client
  (the one whose lease the pool refreshes) until it is released or put on. Once
  that lease expires (the process died, or lost the server for a lease period),
  `recover()` and the lease threads of the pool's other clients put the slot back
  at the head of its channel under a new generation (the dead consumer's handle is
  stale). A put is never lost; a get given up on (RedisUnavailable: no reply within
  the call's timeout plus the connect timeout, retries included) may have taken
  its items.
* Waiting without busy polling: a consumer that finds the channel empty registers
  as waiting *in the same script* (a sorted set of waiters with the time their
  wait ends), then blocks in BLPOP on the channel's wake list, outside any script,
  for a slice of its timeout. A put pushes one token per waiter (up to its item
  count), so no wake-up falls between the look and the wait, and a woken consumer
  takes its item one round trip later: a put wakes a waiter within about two
  round trips, where polling with a backoff capped at C ms would leave it up to C
  ms late, and would cost every idle consumer a script every C ms. The slice
  (at most `WAKE_SLICE`, and half the socket timeout) bounds what a waiter that
  dies leaves behind: a registration that ends by itself, tokens that expire.
  `put` waits for a free slot by polling with a backoff (1 ms doubling to 50 ms),
  as `RedisPool.allocate(timeout=)` does: the pool's free list has no wake-up.
* asyncio: one helper thread per (event loop, channel) blocks in that wait while
  any task of the loop waits, and wakes as many tasks as the channel has items;
  each takes its item in the loop, at once (a round trip), so a cancelled task
  takes nothing. No thread per waiting task.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import Any

from ._async import AsyncChannel
from ._redis_errors import ScriptError, pool_error
from ._redis_scripts import (
    CHANNEL_GET,
    CHANNEL_PUT,
    CHANNEL_PUT_HANDLE,
    CHANNEL_STATISTICS,
    CHANNEL_WAIT,
    MAX_BATCH,
    Script,
    channel_keys,
    queue_keys,
)
from ._value_types import V
from .errors import ChannelEmpty, PoolExhausted, SerializationError
from .handle import INDEX_BITS, unpack

# The RedisPool a channel belongs to, named without importing redis_pool (which imports this module).
RedisPool = Any

# Seconds a waiter blocks in one BLPOP at most (and at most half the socket timeout, which must
# outlast it); it then looks at the channel again and renews its registration.
WAKE_SLICE = 1.0
# A waiter's registration outlives its BLPOP by this much (ms): a put meanwhile still wakes it.
_REGISTRATION_MARGIN_MS = 1000
# put(timeout=) polls a full pool this often, doubling from the first to the last (seconds).
_FIRST_PAUSE, _LAST_PAUSE = 0.001, 0.05
STATISTICS_FIELDS = ("length", "puts", "gets", "requeued", "waiting")


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < float("inf"):
        raise ValueError(f"timeout: seconds, finite and >= 0 (or None), got {timeout!r}")
    return float(timeout)


class RedisChannel(AsyncChannel[V]):
    """A named FIFO of RedisPool `pool`'s slots on the server. Get one with `pool.channel(name)`.

    >>> todo = pool.channel("todo"); todo.put({"id": 1}); todo.get()  # doctest: +SKIP
    {'id': 1}
    """

    def __init__(self, pool: RedisPool, name: str, number: int) -> None:
        self._pool = pool
        self._name = name
        self._number = number
        queue = queue_keys(pool.name, number)
        # Every script's keys but the caller's record key (appended per call: one per thread).
        self._keys = [*pool._keys, *channel_keys(pool.name), *queue]
        self._wake_key, self._waiters_key = queue[1], queue[2]
        self._wakers = weakref.WeakKeyDictionary()  # _async.AsyncChannel's helpers, one per event loop

    @property
    def name(self) -> str:
        return self._name

    @property
    def pool(self) -> RedisPool:
        return self._pool

    def __repr__(self) -> str:
        return f"RedisChannel({self._pool.name!r}, {self._name!r})"

    def __reduce__(self):
        # The pool pickles as "attach by name + url, without credentials"; the channel reopens by name.
        return (_reopen, (self._pool, self._name))

    def __len__(self) -> int:
        """Items waiting in the channel now (one round trip)."""
        return self.statistics()["length"]

    # -- values ---------------------------------------------------------------------------

    def put(self, value: V, timeout: float | None = None) -> None:
        """Allocate a slot for `value` and queue it (waits for a free slot as `queue.Queue.put`)."""
        self._put([self._pool._pack(value)], timeout)

    def get(self, timeout: float | None = None) -> V:
        """Wait for an item, read it and release its slot; ChannelEmpty when `timeout` runs out."""
        return self._decode(self._take(1, "value", timeout)[0])

    def put_many(self, values: Iterable[V], timeout: float | None = None) -> None:
        """Queue every value in one round trip once their slots are free; all or nothing.

        At most MAX_BATCH (1,000) values a call, else ValueError before anything is sent, as
        RedisPool.allocate_many (one script; split, it would no longer be all or nothing)."""
        pack = self._pool._pack
        values = list(values)
        if len(values) > MAX_BATCH:
            raise ValueError(f"put_many: {len(values)} values in one call, more than the {MAX_BATCH} a RedisPool"
                             f" call may move (MAX_BATCH: each call is one script, and Redis serves no other client"
                             f" while it runs); pass at most {MAX_BATCH} a call")
        payloads = [pack(value) for value in values]
        if payloads:
            self._put(payloads, timeout)

    def get_many(self, max_items: int, timeout: float | None = None) -> list[V]:
        """Wait for at least one item, then take up to `max_items` in one round trip: up to MAX_BATCH
        (1,000) of them, whatever `max_items` says (one script; call again for more)."""
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items: a count >= 1, got {max_items!r}")
        decode = self._decode
        return [decode(payload) for payload in self._take(min(max_items, MAX_BATCH), "value", timeout)]

    # -- handles ----------------------------------------------------------------------------

    def put_handle(self, handle: int) -> None:
        """Queue a slot you hold (zero copy); the channel owns it now and `handle` is stale."""
        self._call(CHANNEL_PUT_HANDLE, unpack(handle))

    def get_handle(self, timeout: float | None = None) -> int:
        """Take the next item: its handle is yours until you release it or put it on. If this
        client's lease expires first (the process died), recovery puts the item back at the head."""
        index, generation = self._take(1, "handle", timeout)
        return (generation << INDEX_BITS) | index

    def statistics(self) -> dict[str, Any]:
        """The channel's name and counters (length, puts, gets, requeued, waiting), as a dict; the
        same counters as `pool.statistics().channels[name]`, a ChannelStatistics, where each is described."""
        values = self._pool._run(CHANNEL_STATISTICS, (self._number,), self._keys[len(self._pool._keys):])
        return {"name": self._name, **dict(zip(STATISTICS_FIELDS, values, strict=True))}

    # -- asyncio (get_async, get_handle_async, put_async: _async.AsyncChannel) -----------------

    def _wait_context(self) -> Any:
        return self._pool._lane()  # the helper thread's own connection

    # -- internals -----------------------------------------------------------------------

    def _call(self, script: Script, args: Iterable[Any]) -> Any:
        """Run a mutating channel script under a new request id (see _redis_scripts._ONCE)."""
        pool = self._pool
        pool._check_open()
        request = f"{pool._record_ms}/{next(pool._requests)}"
        try:
            return pool._conn.run(script, [*self._keys, pool._lane()],
                                  (pool._incarnation, self._number, *args, request))
        except ScriptError as exc:
            raise self._error(exc) from None

    def _error(self, exc: ScriptError) -> Exception:
        return pool_error(self._pool.name, self._pool._conn.address, exc)

    def _put(self, payloads: list[bytes], timeout: float | None) -> None:
        deadline = None if (t := _check_timeout(timeout)) is None else time.monotonic() + t
        pause = _FIRST_PAUSE
        while True:
            try:
                self._queue(payloads)
                return
            except PoolExhausted:
                # The server has no blocking pop for a free slot: poll, backing off, until the deadline.
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, _LAST_PAUSE)

    def _queue(self, payloads: list[bytes]) -> None:
        """One CHANNEL_PUT, answering the script's requests for a custom growth amount."""
        pool = self._pool
        pool._check_open()
        keys = [*self._keys, pool._lane()]
        request = f"{pool._record_ms}/{next(pool._requests)}"
        grow_from, grow_by = -1, 0
        while True:
            try:
                pool._conn.run(CHANNEL_PUT, keys, (pool._incarnation, self._number, len(payloads), grow_from, grow_by,
                                                   *payloads, request))
                return
            except ScriptError as exc:
                if exc.code != "GROW":
                    raise self._error(exc) from None
                grow_from = int(exc.fields[0])
                grow_by = pool._custom_growth(grow_from)

    def _take(self, most: int, mode: str, timeout: float | None) -> list[Any]:
        """Up to `most` items ('value': payloads; 'handle': index, generation pairs), waiting up to
        `timeout` for the first; ChannelEmpty if none came."""
        pool = self._pool
        pool._check_open()
        client = (pool._client_id or pool._register()) if mode == "handle" else 0
        deadline = None if (t := _check_timeout(timeout)) is None else time.monotonic() + t
        waiter = ""
        while True:
            wait = self._slice() if deadline is None else min(self._slice(), max(0.0, deadline - time.monotonic()))
            if wait > 0:
                waiter = pool._lane()  # unique to this thread: the waiters' set holds it once
            reply = self._call(CHANNEL_GET, (most, mode, client, waiter if wait > 0 else "",
                                             round(wait * 1000) + _REGISTRATION_MARGIN_MS))
            if reply:
                return reply
            if wait <= 0:
                if waiter:  # registered by an earlier look: no longer waiting
                    pool._command("ZREM", self._waiters_key, waiter)
                raise self._empty(timeout)
            pool._command("BLPOP", self._wake_key, max(wait, 0.001))  # 0 would block forever

    def _wait_for_items(self, waiter: str) -> int:
        """For the asyncio helper: the channel's length, or 0 after waiting up to a slice for a put."""
        pool = self._pool
        wait = self._slice()
        try:
            length = pool._conn.run(CHANNEL_WAIT, [*self._keys], (pool._incarnation, self._number, waiter,
                                                                  round(wait * 1000) + _REGISTRATION_MARGIN_MS))
        except ScriptError as exc:
            raise self._error(exc) from None
        if not length:
            pool._command("BLPOP", self._wake_key, wait)
        return length

    def _slice(self) -> float:
        self._pool._check_open()
        return min(WAKE_SLICE, self._pool._conn.timeout / 2)

    def _empty(self, timeout: float | None) -> ChannelEmpty:
        return ChannelEmpty(f"pool {self._pool.name!r}: channel {self._name!r} has no item"
                            + ("" if not timeout else f" within {timeout:g} s"))

    def _decode(self, payload: bytes) -> Any:
        try:
            return self._pool._codec.unpack(payload)
        except Exception as exc:  # msgpack raises several types; msgspec its ValidationError
            raise SerializationError(f"an item of channel {self._name!r} of pool {self._pool.name!r} cannot be"
                                     f" read as the pool's values ({exc}); its slot is released") from None


def _reopen(pool: RedisPool, name: str) -> RedisChannel:
    return pool.channel(name)

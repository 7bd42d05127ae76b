"""Channels: FIFOs of a pool's slots, from producers to consumers in any processes.

A channel lives in the pool's header (up to 64 per pool, by name); its items
are the pool's own slots, so a value travels once, into shared memory, and a
put or a get is one lock round trip in the compiled core (`_core/channels.c`).
`put` waits only for a free slot (backpressure is the pool's capacity); `get`
waits for an item. Waits follow `queue.Queue`: `timeout=None` waits as long
as it takes, `0` never waits; `put` raises PoolExhausted and `get`
ChannelEmpty only when the timeout runs out. An item taken with
`get_handle` is its consumer's until it releases it or puts it on; if the
consumer dies first, recovery puts it back at the head of its channel.

>>> todo = pool.channel("todo")  # doctest: +SKIP
>>> todo.put({"id": 1}); todo.get()  # doctest: +SKIP
{'id': 1}
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from . import _names
from ._async import AsyncChannel
from ._value_types import V
from .errors import ChannelEmpty

if TYPE_CHECKING:
    pass  # imported when a coroutine first runs: every worker would pay ~40 ms at import otherwise


class _ChannelPool(Protocol):
    """What a channel needs of its pool (a shared-memory pool: pool.py imports this module)."""

    @property
    def name(self) -> str: ...

    _core: Any

    def _check_open(self) -> None: ...

# The asyncio helper thread (one per event loop and channel) sleeps in the core's wait this long at a time.
_WAKE_SLICE = 0.05


class Channel(AsyncChannel[V]):
    """A named FIFO of pool `pool`'s slots. Get one with `pool.channel(name)`."""

    def __init__(self, pool: _ChannelPool, name: str, number: int) -> None:
        self._pool = pool
        self._name = name
        self._number = number
        self._wakers = weakref.WeakKeyDictionary()  # _async.AsyncChannel's helpers, one per event loop

    @property
    def name(self) -> str:
        return self._name

    @property
    def pool(self) -> _ChannelPool:
        return self._pool

    def __repr__(self) -> str:
        return f"Channel({self._pool.name!r}, {self._name!r})"

    def __reduce__(self):
        return (_reopen, (type(self._pool), self._pool.name, self._name))

    def __len__(self) -> int:
        """Items waiting in the channel now."""
        return self._core().channel_stats(self._number)["length"]

    def _core(self):
        self._pool._check_open()
        return self._pool._core

    # -- values ---------------------------------------------------------------------------

    def put(self, value: V, timeout: float | None = None) -> None:
        """Allocate a slot for `value` and queue it (waits for a free slot as `queue.Queue.put`)."""
        self._core().channel_put(self._number, value, timeout)

    def get(self, timeout: float | None = None) -> V:
        """Wait for an item, read it and release its slot; ChannelEmpty when `timeout` runs out."""
        return self._core().channel_get(self._number, timeout)

    def put_many(self, values: Iterable[V], timeout: float | None = None) -> None:
        """Queue every value under one lock acquisition once their slots are free; all or nothing."""
        self._core().channel_put_many(self._number, values, timeout)

    def get_many(self, max_items: int, timeout: float | None = None) -> list[V]:
        """Wait for at least one item, then take up to `max_items` under one lock acquisition."""
        return self._core().channel_get_many(self._number, max_items, timeout)

    # -- handles ----------------------------------------------------------------------------

    def put_handle(self, handle: int) -> None:
        """Queue a slot you hold (zero copy); the channel owns it now and `handle` is stale."""
        self._core().channel_put_handle(self._number, handle)

    def get_handle(self, timeout: float | None = None) -> int:
        """Take the next item: its handle is yours until you release it or put it on. If this
        process dies first, recovery puts the item back at the head of the channel."""
        return self._core().channel_get_handle(self._number, timeout)

    def statistics(self) -> dict[str, Any]:
        """The channel's name and counters (length, puts, gets, requeued, waiting), as a dict; the
        same counters as `pool.statistics().channels[name]`, a ChannelStatistics, where each is described."""
        return self._core().channel_stats(self._number)

    # -- asyncio (get_async, get_handle_async, put_async: _async.AsyncChannel) -----------------

    def _empty(self, timeout: float | None) -> ChannelEmpty:
        return ChannelEmpty(f"pool {self._pool.name!r}: channel {self._name!r} has no item"
                            + ("" if not timeout else f" within {timeout:g} s"))

    def _wait_for_items(self, context: Any) -> int:
        """For the asyncio helper: the items there now, or after sleeping up to a slice in the
        core's futex wait, which returns at a put (a peek that takes nothing)."""
        core = self._core()
        length = core.channel_stats(self._number)["length"]
        if not length:
            core.channel_wait(self._number, _WAKE_SLICE)
            length = core.channel_stats(self._number)["length"]
        return length


def _reopen(pool_class, pool_name: str, channel_name: str) -> Channel:
    return pool_class.attach(pool_name).channel(channel_name)


def validate_name(name: str) -> str:
    """A channel's name follows a pool's rules and fits the header's 31 bytes."""
    name = _names.validate(name)
    if len(name.encode()) > 31:
        from .errors import ConfigError

        raise ConfigError(f"channel name {name!r}: at most 31 bytes")
    return name

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

import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol

from . import _names
from ._base import V
from .errors import ChannelEmpty

if TYPE_CHECKING:
    import asyncio  # imported when a coroutine first runs: every worker would pay ~40 ms at import otherwise


class _ChannelPool(Protocol):
    """What a channel needs of its pool (a shared-memory pool: pool.py imports this module)."""

    @property
    def name(self) -> str: ...

    _core: Any

    def _check_open(self) -> None: ...

# An asyncio waiter polls the channel without blocking the loop: one helper thread per
# (event loop, channel) sleeps in the core's wait and wakes the loop's waiting tasks.
_WAKE_SLICE = 0.05


class Channel(Generic[V]):
    """A named FIFO of pool `pool`'s slots. Get one with `pool.channel(name)`."""

    def __init__(self, pool: _ChannelPool, name: str, number: int) -> None:
        self._pool = pool
        self._name = name
        self._number = number
        self._wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker] = weakref.WeakKeyDictionary()

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

    # -- asyncio ------------------------------------------------------------------------------

    async def get_async(self, timeout: float | None = None) -> V:
        """`get` for asyncio: never blocks the event loop, costs no thread per waiting task.

        A cancelled wait takes no item (it is taken only when the task runs)."""
        return await self._await(lambda: self.get(0), timeout)

    async def get_handle_async(self, timeout: float | None = None) -> int:
        return await self._await(lambda: self.get_handle(0), timeout)

    async def put_async(self, value: V, timeout: float | None = None) -> None:
        """`put` for asyncio: waits for a free slot without blocking the event loop."""
        from ._async import retry_until
        from .errors import PoolExhausted

        return await retry_until(lambda: self.put(value, 0), PoolExhausted, timeout)

    async def _await(self, attempt, timeout: float | None):
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waker = self._waker(loop)
        while True:
            try:
                return attempt()
            except ChannelEmpty:
                if deadline is not None and loop.time() >= deadline:
                    raise ChannelEmpty(f"pool {self._pool.name!r}: channel {self._name!r} has no item "
                                       f"within {timeout:g} s") from None
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await waker.wait(remaining)

    def _waker(self, loop: asyncio.AbstractEventLoop) -> _Waker:
        waker = self._wakers.get(loop)
        if waker is None:
            waker = self._wakers[loop] = _Waker(self, loop)
        return waker


class _Waker:
    """One helper thread per (event loop, channel): it sleeps in the core's wait for an item
    while tasks of the loop wait, and wakes them all when one may be there."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        self._channel = channel
        self._loop = loop
        self._waiters = 0
        self._event = asyncio.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def wait(self, timeout: float | None) -> None:
        import asyncio

        self._event.clear()
        with self._lock:
            self._waiters += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=f"fastalloc-{self._channel.name}", daemon=True)
                self._thread.start()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters -= 1

    def _watch(self) -> None:
        stats = self._channel.statistics
        while True:
            with self._lock:
                if not self._waiters:
                    self._thread = None
                    return
            try:
                if stats()["length"]:
                    self._loop.call_soon_threadsafe(self._event.set)
                    threading.Event().wait(0.0002)  # let the tasks take what is there
                    continue
                # Sleep in the core's futex wait: returns at a put (a peek that takes nothing).
                self._channel._core().channel_wait(self._channel._number, _WAKE_SLICE)
            except Exception:  # noqa: BLE001 - the pool closed: wake the tasks, they raise themselves
                with self._lock:
                    self._thread = None
                if not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(self._event.set)
                return


def _reopen(pool_class, pool_name: str, channel_name: str) -> Channel:
    return pool_class.attach(pool_name).channel(channel_name)


def validate_name(name: str) -> str:
    """A channel's name follows a pool's rules and fits the header's 31 bytes."""
    name = _names.validate(name)
    if len(name.encode()) > 31:
        from .errors import ConfigError

        raise ConfigError(f"channel name {name!r}: at most 31 bytes")
    return name

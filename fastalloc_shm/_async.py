"""asyncio for pools and channels, every backend: waiting without blocking the event loop.

A free slot comes back when some process releases one, which no event of this
loop announces; so a task waiting for one (allocate_async, put_async) retries
a non-blocking attempt after a pause that doubles up to `LAST_PAUSE`. An item
is announced: a channel's `get_async` sleeps on a future that one helper thread
per (event loop, channel) completes when items arrive (`_Waker`), so a
thousand waiting tasks cost one thread. Either way a task is cancelled at a
pause, never inside an attempt, so a cancellation never takes a slot or an
item nobody then holds.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._value_types import V
from .errors import ChannelEmpty, PoolExhausted

if TYPE_CHECKING:
    import asyncio  # imported when a coroutine first runs: every worker would pay ~40 ms at import otherwise

T = TypeVar("T")

FIRST_PAUSE = 0.0005
LAST_PAUSE = 0.05  # seconds: a waiting task notices a released slot this late at most
WOKEN_RUN = 0.0005  # seconds the helper thread lets woken tasks run before it looks again


async def retry_until(attempt: Callable[[], T], refused: type[Exception], timeout: float | None) -> T:
    """`attempt()` until it does not raise `refused`, for up to `timeout` s (None: as long as it takes)."""
    import asyncio  # imported when a coroutine first runs: every worker would pay ~40 ms at import otherwise

    check_timeout(timeout)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause = FIRST_PAUSE
    while True:
        try:
            return attempt()
        except refused:
            if deadline is not None and loop.time() >= deadline:
                raise
        remaining = LAST_PAUSE if deadline is None else max(0.0, deadline - loop.time())
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, LAST_PAUSE)


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not 0 <= float(timeout) < math.inf:
        raise ValueError("timeout: seconds, finite and >= 0 (or None)")  # the core's words for its own waits


class AsyncChannel(Generic[V]):
    """The asyncio side of a channel, one for every backend: get_async, get_handle_async, put_async.

    A backend's channel supplies `get(timeout)`, `get_handle(timeout)`, `put(value, timeout)`,
    `_empty(timeout)` (the ChannelEmpty to raise), `_wait_context()` (what its helper thread waits
    with) and `_wait_for_items(context)` (in that thread: the items there now, or 0 after waiting
    up to a slice for a put), and sets `self._wakers = weakref.WeakKeyDictionary()`.
    """

    _wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker]
    name: str

    def get(self, timeout: float | None = None) -> V:
        raise NotImplementedError

    def get_handle(self, timeout: float | None = None) -> int:
        raise NotImplementedError

    def put(self, value: V, timeout: float | None = None) -> None:
        raise NotImplementedError

    def _empty(self, timeout: float | None) -> ChannelEmpty:
        raise NotImplementedError

    def _wait_context(self) -> Any:
        return None

    def _wait_for_items(self, context: Any) -> int:
        raise NotImplementedError

    async def get_async(self, timeout: float | None = None) -> V:
        """`get` for asyncio: never blocks the event loop on a wait, costs no thread per waiting task.

        A cancelled wait takes no item (it is taken only when the task runs)."""
        return await self._await(lambda: self.get(0), timeout)

    async def get_handle_async(self, timeout: float | None = None) -> int:
        """`get_handle` for asyncio, as `get_async`."""
        return await self._await(lambda: self.get_handle(0), timeout)

    async def put_async(self, value: V, timeout: float | None = None) -> None:
        """`put` for asyncio: waits for a free slot without blocking the event loop."""
        return await retry_until(lambda: self.put(value, 0), PoolExhausted, timeout)

    async def _await(self, attempt: Callable[[], T], timeout: float | None) -> T:
        import asyncio

        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waker = self._waker(loop)
        while True:
            try:
                return attempt()
            except ChannelEmpty:
                if deadline is not None and loop.time() >= deadline:
                    raise self._empty(timeout) from None
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await waker.wait(remaining)

    def _waker(self, loop: asyncio.AbstractEventLoop) -> _Waker:
        waker = self._wakers.get(loop)
        if waker is None:
            waker = self._wakers[loop] = _Waker(self, loop)
        return waker


class _Waker:
    """One helper thread per (event loop, channel): it waits for items (the channel's
    `_wait_for_items`) while tasks of the loop wait, and wakes as many of them, oldest first, as
    there are items. A task takes its item itself, in the loop, so a cancelled one takes nothing."""

    def __init__(self, channel: AsyncChannel[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._loop = loop
        self._sleepers: collections.deque[asyncio.Future[None]] = collections.deque()  # the loop's thread only
        self._woken = 0  # sleepers woken whose task has not run yet (the loop's thread only)
        self._waiting = 0  # under _lock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def wait(self, timeout: float | None) -> None:
        import asyncio

        future = self._loop.create_future()
        self._sleepers.append(future)
        with self._lock:
            self._waiting += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=f"fastalloc-{self._channel.name}",
                                                daemon=True)
                self._thread.start()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiting -= 1
            if future.done() and not future.cancelled():
                self._woken -= 1
            else:
                future.cancel()
                try:
                    self._sleepers.remove(future)
                except ValueError:
                    pass

    def _wake(self, items: int) -> None:
        """In the loop: wake sleepers for `items` items, less those woken and not yet run."""
        want = items - self._woken
        while want > 0 and self._sleepers:
            future = self._sleepers.popleft()
            if not future.done():
                future.set_result(None)
                self._woken += 1
                want -= 1

    def _watch(self) -> None:
        try:
            context = self._channel._wait_context()  # this thread's own
        except Exception:  # noqa: BLE001 - the pool closed: the tasks raise themselves
            context = None
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None
                    return
            try:
                items = self._channel._wait_for_items(context)
                if items:
                    self._loop.call_soon_threadsafe(self._wake, items)
                    time.sleep(WOKEN_RUN)  # let the woken tasks take what is there
            except Exception:  # noqa: BLE001 - the pool closed or its server is gone: the tasks raise themselves
                with self._lock:
                    self._thread = None
                if not self._loop.is_closed():
                    try:
                        self._loop.call_soon_threadsafe(self._wake, 1 << 30)
                    except RuntimeError:  # the loop closed meanwhile
                        pass
                return

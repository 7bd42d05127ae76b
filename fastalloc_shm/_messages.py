"""What the compiled core's error codes mean to a user: one exception per code, with a message that says what to do.

The core raises by calling `PoolErrors(code, *args)`: it knows what went
wrong, this module knows how to say it, so every message lives here. The
codes are the core's (`_core.ERRORS`, name -> code); each name is answered by
the method of the same name in lower case, so no code is written here.

A pool's core holds its PoolErrors, so PoolErrors holds the pool only weakly:
a pool dropped without close() is then freed by reference counting alone (and
its `__del__` closes it); a message asked for after that leaves out the
pool's live figures.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import _codec, _core, _trust
from . import _layout as L
from .config import PoolConfig
from .errors import (
    ChannelEmpty,
    FastallocError,
    InvalidHandle,
    LockTimeout,
    PoolExhausted,
    SerializationError,
    StaleHandle,
    ValueTooLarge,
)

_MASK = 0xFFFFFFFF
# Each of the core's error codes -> the PoolErrors method that words it.
_METHOD_OF = {code: name.lower() for name, code in _core.ERRORS.items()}


class Described(Protocol):
    """What the messages read of a live pool (SharedPool provides it)."""

    @property
    def capacity(self) -> int: ...

    def __len__(self) -> int: ...


class PoolErrors:
    """The `errors` callable of one pool's core."""

    def __init__(self, name: str, config: PoolConfig, pool: Described) -> None:
        self._name = name
        self._config = config
        self._pool = weakref.ref(pool)

    def __call__(self, code: int, *args: Any) -> FastallocError:
        method: Callable[..., FastallocError] = getattr(self, _METHOD_OF[code])
        return method(*args)

    def _usage(self) -> tuple[int, int] | None:
        """(slots in use, capacity) of the pool, None once it is gone or closed."""
        pool = self._pool()
        try:
            return (len(pool), pool.capacity) if pool is not None else None
        except FastallocError:
            return None

    def pack(self, value: Any, exc: Exception) -> SerializationError:
        return _codec.pack_error(value, exc)

    def unpack(self, handle: int, exc: Exception) -> SerializationError:
        return _codec.unpack_error(handle, exc)

    def os(self, message: str) -> FastallocError:
        return FastallocError(f"pool {self._name!r}: {message}")

    def closed(self) -> FastallocError:
        return FastallocError(f"pool {self._name!r} is closed in this process; attach it again")

    def invalid(self, handle: Any) -> InvalidHandle:
        if type(handle) is int and 0 < handle >> 32 <= L.MAX_SLOT_GENERATION:
            usage = self._usage()
            beyond = f"beyond capacity {usage[1]}" if usage else "beyond the pool's capacity"
            return InvalidHandle(f"pool {self._name!r}: handle {handle:#x} has index {handle & _MASK}, {beyond}")
        return InvalidHandle(f"pool {self._name!r}: {handle!r} is not a handle (an int from allocate())")

    def stale(self, handle: int) -> StaleHandle:
        return StaleHandle(
            f"pool {self._name!r}: handle {handle:#x} (slot {handle & _MASK}, generation {handle >> 32}) was released; "
            "do not use a handle after release()"
        )

    def duplicate(self, handle: int) -> StaleHandle:
        return StaleHandle(
            f"pool {self._name!r}: handle {handle:#x} appears twice in one batch (its second release would be stale); "
            "nothing was released"
        )

    def channel_empty(self, channel: str, timeout: float) -> ChannelEmpty:
        waited = f"within {timeout:g} s" if timeout else "now"
        return ChannelEmpty(f"pool {self._name!r}: channel {channel!r} has no item {waited}")

    def channel_limit(self, message: str) -> FastallocError:
        return FastallocError(f"pool {self._name!r}: {message}; reuse a channel's name")

    def untrusted(self, number: int, path: str, uid: int) -> FastallocError:
        return _trust.untrusted_error(uid, path, f"pool {self._name!r} extent {number}")

    def torn(self, handle: int, pid: int) -> SerializationError:
        return SerializationError(
            f"pool {self._name!r}: the value of handle {handle:#x} was torn when its writer (pid {pid or 'unknown'}) "
            "died while overwriting it; set() it again or release it"
        )

    def exhausted(self, wanted: int) -> PoolExhausted:
        hint = "raise max_capacity" if self._config.growth_strategy.kind != "none" else "raise capacity or use GrowingPool"
        usage = self._usage()
        in_use = f"{usage[0]}/{usage[1]} slots in use, " if usage else ""
        return PoolExhausted(f"pool {self._name!r} is full ({in_use}{wanted} wanted); {hint}")

    def too_large(self, size: int) -> ValueTooLarge:
        return ValueTooLarge(
            f"pool {self._name!r}: value packs to {size} bytes but slots hold {self._config.slot_size}; "
            "store less or create the pool with a larger slot_size"
        )

    def lock_timeout(self, holder: int, seconds: float) -> LockTimeout:
        # Alive: the kernel marks a dead holder's mutex, and its next locker repairs it.
        who = f"held by pid {holder} (alive)" if holder else "its holder is not recorded"
        return LockTimeout(
            f"pool {self._name!r}: lock not acquired within {seconds:g} s ({who}); "
            "raise lock_timeout, or look at that process (stopped? in a debugger?)"
        )

    def damaged(self, message: str) -> FastallocError:
        return FastallocError(f"pool {self._name!r}: {message}")

    def busy_read(self, handle: int) -> SerializationError:
        return SerializationError(
            f"pool {self._name!r}: handle {handle:#x} was being overwritten during every read attempt; "
            "if its writer died, run recover()"
        )


_unanswered = sorted(name for name in _METHOD_OF.values() if not callable(getattr(PoolErrors, name, None)))
if _unanswered:
    raise ImportError(f"the core raises error codes {_unanswered} that PoolErrors has no message for")

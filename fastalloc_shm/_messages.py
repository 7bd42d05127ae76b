"""What the compiled core's error codes mean to a user: one exception per code, with a message that says what to do.

The core raises by calling `PoolErrors(code, *args)`: it knows what went
wrong, this module knows how to say it, so every message lives here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _codec, _core, _trust
from . import _layout as L
from .errors import (
    FastallocError,
    InvalidHandle,
    LockTimeout,
    PoolExhausted,
    SerializationError,
    StaleHandle,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from .pool import SharedPool

_CODE = _core.ERRORS
_MASK = 0xFFFFFFFF


class PoolErrors:
    """The `errors` callable of one pool's core."""

    def __init__(self, pool: SharedPool) -> None:
        self._pool = pool
        self._name = pool._name
        self._table = {
            _CODE["CLOSED"]: self.closed,
            _CODE["INVALID"]: self.invalid,
            _CODE["STALE"]: self.stale,
            _CODE["TORN"]: self.torn,
            _CODE["EXHAUSTED"]: self.exhausted,
            _CODE["TOO_LARGE"]: self.too_large,
            _CODE["PACK"]: lambda value, exc: _codec.pack_error(value, exc),
            _CODE["UNPACK"]: lambda handle, exc: _codec.unpack_error(handle, exc),
            _CODE["LOCK_TIMEOUT"]: self.lock_timeout,
            _CODE["DAMAGED"]: self.damaged,
            _CODE["BUSY_READ"]: self.busy_read,
            _CODE["OS"]: lambda message: FastallocError(f"pool {self._name!r}: {message}"),
            _CODE["DUPLICATE"]: self.duplicate,
            _CODE["UNTRUSTED"]: self.untrusted,
        }

    def __call__(self, code: int, *args: Any) -> FastallocError:
        return self._table[code](*args)

    def closed(self) -> FastallocError:
        return FastallocError(f"pool {self._name!r} is closed in this process; attach it again")

    def invalid(self, handle: Any) -> InvalidHandle:
        if type(handle) is int and 0 < handle >> 32 <= L.MAX_SLOT_GENERATION:
            capacity = self._pool.capacity
            return InvalidHandle(
                f"pool {self._name!r}: handle {handle:#x} has index {handle & _MASK}, beyond capacity {capacity}"
            )
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

    def untrusted(self, number: int, path: str, uid: int) -> FastallocError:
        return _trust.untrusted_error(uid, path, f"pool {self._name!r} extent {number}")

    def torn(self, handle: int, pid: int) -> SerializationError:
        return SerializationError(
            f"pool {self._name!r}: the value of handle {handle:#x} was torn when its writer (pid {pid or 'unknown'}) "
            "died while overwriting it; set() it again or release it"
        )

    def exhausted(self, wanted: int) -> PoolExhausted:
        pool = self._pool
        hint = "raise max_capacity" if pool.config.growth_strategy.kind != "none" else "raise capacity or use GrowingPool"
        return PoolExhausted(
            f"pool {self._name!r} is full ({len(pool)}/{pool.capacity} slots in use, {wanted} wanted); {hint}"
        )

    def too_large(self, size: int) -> ValueTooLarge:
        return ValueTooLarge(
            f"pool {self._name!r}: value packs to {size} bytes but slots hold {self._pool.slot_size}; "
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

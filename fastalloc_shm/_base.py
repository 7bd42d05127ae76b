"""What every pool backend shares: `Pool`, the methods built on the primitives, and the config rules.

The shared-memory kinds (`pool.SharedPool`) and `RedisPool` differ in where a
slot lives and how one is taken; what a user sees on top of that is one thing,
written once here: `try_allocate`, `borrowed`, the context manager, `acquire`'s
policy (which of create/reset/keep fills a slot), building a config from
keywords, and the `exist_ok` comparison. A backend supplies the primitives
(allocate, release, ...) and the three steps of acquire (take a slot with its
previous bytes, fill it, give it back).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Self

from ._value_types import V
from .config import PoolConfig
from .errors import ConfigError, IncompatiblePool, PoolExhausted

NOTHING: Any = object()
"""A slot's previous value when it holds none (never used, or unreadable)."""





class Pool(abc.ABC, Generic[V]):
    """The pool API every backend offers (see DESIGN.md); the shared parts are implemented here."""

    _name = ""
    _creator = False

    # -- the primitives (each backend's own) ---------------------------------------------

    @abc.abstractmethod
    def allocate(self, value: V, timeout: float | None = None) -> int:
        """Store `value` in a free slot and return its handle (PoolExhausted when full)."""

    @abc.abstractmethod
    def get(self, handle: int) -> V:
        """The value stored under `handle` (a fresh Python object)."""

    @abc.abstractmethod
    def set(self, handle: int, value: V) -> None:
        """Replace the value under `handle` in place."""

    @abc.abstractmethod
    def release(self, handle: int) -> None:
        """Give the slot back; `handle` is stale from now on."""

    @abc.abstractmethod
    def allocate_many(self, values: Iterable[V]) -> list[int]:
        """Allocate one slot per value in one step; all or nothing."""

    @abc.abstractmethod
    def release_many(self, handles: Iterable[int]) -> None:
        """Release every handle in one step; if any is stale or invalid, none is released."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of the pool in this process; it stays for others."""

    @abc.abstractmethod
    def unlink(self) -> None:
        """Remove the pool for everyone."""

    @property
    @abc.abstractmethod
    def config(self) -> PoolConfig:
        """The configuration the pool was created with."""

    @abc.abstractmethod
    def _check_open(self) -> None:
        """Raise FastallocError when the pool is closed in this process."""

    @abc.abstractmethod
    def _callable(self, fn: Callable[..., Any] | str, field_name: str) -> Callable[..., Any]:
        """A callable named in the config (`field_name`), ready to call in this process."""

    @abc.abstractmethod
    def _take_slot(self) -> tuple[int, bytes | None]:
        """acquire()'s first step: a slot taken for this process, and the bytes it held (None if never used)."""

    @abc.abstractmethod
    def _decode_previous(self, slot: int, payload: bytes) -> Any:
        """The value `payload` holds, or NOTHING when it counts as none."""

    @abc.abstractmethod
    def _fill_slot(self, slot: int, value: Any) -> int:
        """Store `value` in the taken slot and hand it out: its handle."""

    @abc.abstractmethod
    def _keep_slot(self, slot: int, previous: Any) -> int:
        """Hand out the taken slot with the value it holds (`previous`): its handle."""

    @abc.abstractmethod
    def _return_slot(self, slot: int) -> None:
        """Give back a slot taken by `_take_slot` whose filling failed."""

    # -- built on them --------------------------------------------------------------------

    def try_allocate(self, value: V, timeout: float | None = None) -> int | None:
        """Like allocate(), but None instead of PoolExhausted."""
        try:
            return self.allocate(value, timeout=timeout)
        except PoolExhausted:
            return None

    async def allocate_async(self, value: V, timeout: float | None = None) -> int:
        """`allocate` for asyncio: waits up to `timeout` s for a released slot (None: does not
        wait, as `allocate`) without blocking the event loop.

        >>> h = await pool.allocate_async({"id": 1}, timeout=2.0)  # doctest: +SKIP
        """
        from ._async import retry_until

        return await retry_until(lambda: self.allocate(value, 0), PoolExhausted, 0 if timeout is None else timeout)

    @contextmanager
    def borrowed(self, value: V) -> Iterator[int]:
        """Allocate `value` for the duration of a with-block; released on exit.

        >>> with pool.borrowed({"job": 7}) as h:  # doctest: +SKIP
        ...     pool.get(h)
        {'job': 7}
        """
        self._check_open()
        handle = self.allocate(value)
        try:
            yield handle
        finally:
            self.release(handle)

    def acquire(self) -> int:
        """A slot holding a ready object, from the config's `reset_fn(create, reset)`.

        A slot never used holds `create()`; a reused one `reset(previous)`, or
        the previous value mutated in place when reset returns None. With only
        an `initializer`, a never-used slot holds `initializer()` and a reused
        one keeps its value.
        """
        self._check_open()
        make, reset = self._reset_callables()
        slot, payload = self._take_slot()
        try:
            previous = NOTHING if payload is None else self._decode_previous(slot, payload)
            if previous is NOTHING:
                value = make()
            elif reset is None:
                return self._keep_slot(slot, previous)
            else:
                result = reset(previous)
                value = previous if result is None else result
            return self._fill_slot(slot, value)
        except BaseException:
            # A failing create/reset or a value too large must not leak the slot.
            self._return_slot(slot)
            raise

    def _reset_callables(self) -> tuple[Callable[[], Any], Callable[[Any], Any] | None]:
        """(make, reset) for acquire(): make() fills a never-used slot; reset is None with only an initializer."""
        cfg = self.config
        if cfg.reset is not None:
            return self._callable(cfg.reset[0], "reset"), self._callable(cfg.reset[1], "reset")
        if cfg.initializer is not None:
            return self._callable(cfg.initializer, "initializer"), None
        raise ConfigError(
            f"reset: acquire() on pool {self._name!r} needs the config's reset_fn(create, reset) or an"
            " initializer to make the object; add one, or call allocate(value)"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """The creator removes the pool on exit; anyone else closes it."""
        try:
            if self._creator:
                self.unlink()
        finally:
            self.close()


def build_config(capacity: int | None, slot_size: int | None, config: PoolConfig | None,
                 overrides: dict[str, Any]) -> PoolConfig:
    """The config of a create() call: `config` or PoolConfig's defaults, with the keywords given replacing fields."""
    changes = {k: v for k, v in (("capacity", capacity), ("slot_size", slot_size)) if v is not None}
    changes.update(overrides)
    if config is not None:
        if not isinstance(config, PoolConfig):
            raise ConfigError(f"config: expected a PoolConfig, got {type(config).__name__}")
        return config.with_overrides(**changes) if changes else config
    if capacity is None:
        raise ConfigError("capacity: required (pass capacity=N or config=PoolConfig(...))")
    try:
        return PoolConfig(**changes)
    except TypeError as exc:
        raise ConfigError(f"{exc}; see PoolConfig for the fields") from None


def check_same_config(what: str, found: PoolConfig, wanted: PoolConfig, fix: str) -> None:
    """create(exist_ok=True) found `what`: every config field must match; IncompatiblePool names the first difference."""
    difference = found.first_difference(wanted)
    if difference is not None:
        raise IncompatiblePool(f"{what} exists with {difference}; {fix}")

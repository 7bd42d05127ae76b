"""PoolConfig, its builder, and GrowthStrategy.

Configuration is a frozen value object validated once, at construction
(attrs/msgspec style): every invalid value raises ConfigError naming the field.
The builder mirrors the Rust crate's `PoolConfig::builder()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from . import _callables
from .errors import ConfigError

DEFAULT_SLOT_SIZE = 256
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_BATCH_SIZE = 32
MIN_ALIGNMENT = 8
MAX_ALIGNMENT = 4096
ORPHAN_POLICIES = ("keep", "reclaim")


@dataclass(frozen=True)
class GrowthStrategy:
    """How a GrowingPool grows when full: the number of slots to add.

    >>> GrowthStrategy.exponential(2.0).amount(100)
    100
    """

    kind: str = "none"
    value: float = 0.0
    fn: Callable[[int], int] | str | None = field(default=None, compare=False)

    @classmethod
    def none(cls) -> GrowthStrategy:
        """Never grow."""
        return cls("none")

    @classmethod
    def linear(cls, amount: int) -> GrowthStrategy:
        """Add `amount` slots each time."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise ConfigError(f"growth_strategy: linear amount must be an int >= 1, got {amount!r}")
        return cls("linear", amount)

    @classmethod
    def exponential(cls, factor: float) -> GrowthStrategy:
        """Grow to `floor(capacity * factor)` (at least one slot more)."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1.0 or math.isinf(factor):
            raise ConfigError(f"growth_strategy: exponential factor must be a finite number > 1, got {factor!r}")
        return cls("exponential", float(factor))

    @classmethod
    def custom(cls, fn: Callable[[int], int] | str) -> GrowthStrategy:
        """Add `fn(capacity)` slots; give an importable function or "module:qualname"."""
        _callables.as_callable(fn, "growth_strategy")
        return cls("custom", 0.0, fn)

    def amount(self, capacity: int) -> int:
        """Slots to add to a full pool of `capacity` slots (0: do not grow)."""
        if self.kind == "linear":
            return int(self.value)
        if self.kind == "exponential":
            return max(1, math.floor(capacity * self.value) - capacity)
        if self.kind == "custom":
            if self.fn is None:
                raise ConfigError(
                    "growth_strategy: the pool's custom growth function could not be recorded by import path, "
                    "so this process cannot grow it; give it as a module-level function or 'module:qualname'"
                )
            added = _callables.as_callable(self.fn, "growth_strategy")(capacity)
            if isinstance(added, bool) or not isinstance(added, int) or added < 0:
                raise ConfigError(f"growth_strategy: custom function returned {added!r}; it must return an int >= 0")
            return added
        return 0

    def to_record(self) -> dict[str, Any]:
        """A msgpack-able description; a custom function only by import path."""
        record: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.kind == "custom":
            record["fn"] = _callables.import_path(self.fn)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GrowthStrategy:
        if record["kind"] == "custom":
            return cls("custom", 0.0, record.get("fn"))
        return cls(record["kind"], record["value"])


@dataclass(frozen=True)
class PoolConfig:
    """Everything that shapes a pool; validated on construction.

    >>> PoolConfig.builder().capacity(1000).slot_size(128).build().capacity
    1000
    """

    capacity: int
    slot_size: int = DEFAULT_SLOT_SIZE
    max_capacity: int | None = None
    growth_strategy: GrowthStrategy = field(default_factory=GrowthStrategy.none)
    alignment: int = MIN_ALIGNMENT
    pre_initialize: bool = False
    initializer: Callable[[], Any] | str | None = None
    reset: tuple[Callable[[], Any] | str, Callable[[Any], Any] | str] | None = None
    huge_pages: bool = False
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    orphan_policy: str = "keep"
    batch_size: int = DEFAULT_BATCH_SIZE
    mode: int = 0o600
    value_schema: str | None = None  # set by create(value_type=...): _value_types.schema_of

    def __post_init__(self) -> None:
        _check_int("capacity", self.capacity, 1)
        _check_int("slot_size", self.slot_size, 1)
        if self.max_capacity is not None:
            _check_int("max_capacity", self.max_capacity, self.capacity)
        if not isinstance(self.growth_strategy, GrowthStrategy):
            raise ConfigError(f"growth_strategy: expected a GrowthStrategy, got {self.growth_strategy!r}")
        _check_int("alignment", self.alignment, MIN_ALIGNMENT)
        if self.alignment > MAX_ALIGNMENT or self.alignment & (self.alignment - 1):
            raise ConfigError(f"alignment: {self.alignment} is not a power of two in {MIN_ALIGNMENT}..{MAX_ALIGNMENT}")
        if not isinstance(self.pre_initialize, bool):
            raise ConfigError(f"pre_initialize: expected a bool, got {self.pre_initialize!r}")
        if self.initializer is not None:
            _callables.as_callable(self.initializer, "initializer")
        if self.reset is not None:
            if not isinstance(self.reset, tuple) or len(self.reset) != 2:
                raise ConfigError("reset: expected a pair (create, reset) of callables")
            _callables.as_callable(self.reset[0], "reset")
            _callables.as_callable(self.reset[1], "reset")
        if not isinstance(self.huge_pages, bool):
            raise ConfigError(f"huge_pages: expected a bool, got {self.huge_pages!r}")
        if (isinstance(self.lock_timeout, bool) or not isinstance(self.lock_timeout, (int, float))
                or not 0 < self.lock_timeout < math.inf):
            raise ConfigError(f"lock_timeout: expected a finite number of seconds > 0, got {self.lock_timeout!r}")
        if self.orphan_policy not in ORPHAN_POLICIES:
            raise ConfigError(f"orphan_policy: {self.orphan_policy!r} is not one of {ORPHAN_POLICIES}")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("mode", self.mode, 0)
        if self.mode > 0o777:
            raise ConfigError(f"mode: {oct(self.mode)} is not a permission mode (0..0o777)")
        if self.value_schema is not None and not isinstance(self.value_schema, str):
            raise ConfigError(f"value_schema: expected a schema string (set by value_type=), got {self.value_schema!r}")

    @staticmethod
    def builder() -> PoolConfigBuilder:
        """Start a builder: `PoolConfig.builder().capacity(100).build()`."""
        return PoolConfigBuilder()

    def with_overrides(self, **overrides: Any) -> PoolConfig:
        """A copy with some fields replaced (validated again)."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: not a PoolConfig field")
        return replace(self, **overrides)

    def growth_amount(self, capacity: int) -> int:
        """Slots to add to a full pool of `capacity`, clamped to max_capacity."""
        added = self.growth_strategy.amount(capacity)
        if self.max_capacity is not None:
            added = min(added, self.max_capacity - capacity)
        return max(0, added)

    def to_record(self) -> dict[str, Any]:
        """What the segment header stores: callables by import path only."""
        reset = None
        if self.reset is not None:
            reset = [_callables.import_path(self.reset[0]), _callables.import_path(self.reset[1])]
        return {
            "capacity": self.capacity,
            "slot_size": self.slot_size,
            "max_capacity": self.max_capacity,
            "growth_strategy": self.growth_strategy.to_record(),
            "alignment": self.alignment,
            "pre_initialize": self.pre_initialize,
            "initializer": None if self.initializer is None else _callables.import_path(self.initializer),
            "reset": reset,
            "huge_pages": self.huge_pages,
            "lock_timeout": self.lock_timeout,
            "orphan_policy": self.orphan_policy,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "value_schema": self.value_schema,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PoolConfig:
        """Rebuild a config read from a header or a request. Callables stay import paths and
        are not imported here: a record is data, and importing a module can run its code."""
        values = dict(record)
        values["growth_strategy"] = GrowthStrategy.from_record(values["growth_strategy"])
        reset = values.get("reset")
        reset = tuple(reset) if reset and None not in reset else None
        initializer = values.get("initializer")
        for field_name, path in (("initializer", initializer), *(("reset", p) for p in reset or ())):
            if path is not None and (not isinstance(path, str) or ":" not in path):
                raise ConfigError(f"{field_name}: {path!r} is not of the form 'module:qualname'")
        pre_initialize = values["pre_initialize"]
        values.update(initializer=None, reset=None, pre_initialize=False)
        config = cls(**values)
        if not isinstance(pre_initialize, bool):
            raise ConfigError(f"pre_initialize: expected a bool, got {pre_initialize!r}")
        object.__setattr__(config, "initializer", initializer)
        object.__setattr__(config, "reset", reset)
        object.__setattr__(config, "pre_initialize", pre_initialize)
        return config

    def first_difference(self, other: PoolConfig) -> str | None:
        """The first field (in declaration order) where `other` differs, as "field=X, not Y"; None if none.

        Fields compare as a pool records them, so a callable compares by its import path."""
        mine, theirs = self.to_record(), other.to_record()
        for key, value in mine.items():
            if theirs.get(key) != value:
                if key == "value_schema":
                    from ._value_types import difference

                    return f"another value_type: {difference(value, theirs.get(key))}"
                return f"{key}={value!r}, not {theirs.get(key)!r}"
        return None


class PoolConfigBuilder:
    """Fluent builder for PoolConfig; `build()` validates."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def _set(self, name: str, value: Any) -> PoolConfigBuilder:
        self._values[name] = value
        return self

    def capacity(self, capacity: int) -> PoolConfigBuilder:
        return self._set("capacity", capacity)

    def max_capacity(self, max_capacity: int | None) -> PoolConfigBuilder:
        return self._set("max_capacity", max_capacity)

    def growth_strategy(self, strategy: GrowthStrategy) -> PoolConfigBuilder:
        return self._set("growth_strategy", strategy)

    def alignment(self, alignment: int) -> PoolConfigBuilder:
        return self._set("alignment", alignment)

    def slot_size(self, slot_size: int) -> PoolConfigBuilder:
        return self._set("slot_size", slot_size)

    def pre_initialize(self, pre_initialize: bool = True) -> PoolConfigBuilder:
        return self._set("pre_initialize", pre_initialize)

    def initializer(self, fn: Callable[[], Any] | str) -> PoolConfigBuilder:
        return self._set("initializer", fn)

    def reset_fn(self, create: Callable[[], Any] | str, reset: Callable[[Any], Any] | str) -> PoolConfigBuilder:
        return self._set("reset", (create, reset))

    def huge_pages(self, huge_pages: bool = True) -> PoolConfigBuilder:
        return self._set("huge_pages", huge_pages)

    def lock_timeout(self, seconds: float) -> PoolConfigBuilder:
        return self._set("lock_timeout", seconds)

    def orphan_policy(self, policy: str) -> PoolConfigBuilder:
        return self._set("orphan_policy", policy)

    def batch_size(self, batch_size: int) -> PoolConfigBuilder:
        return self._set("batch_size", batch_size)

    def mode(self, mode: int) -> PoolConfigBuilder:
        return self._set("mode", mode)

    def build(self) -> PoolConfig:
        if "capacity" not in self._values:
            raise ConfigError("capacity: required (call .capacity(n) before .build())")
        return PoolConfig(**self._values)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {value!r}")

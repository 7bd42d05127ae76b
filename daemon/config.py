"""The daemon's configuration: pools declared in a TOML file, or the embedded default.

```toml
[pools.jobs]
kind = "growing"            # fixed (default) | growing | threadlocal | threadsafe
capacity = 1000
slot_size = 512
max_capacity = 10000
growth = { strategy = "exponential", factor = 2.0 }   # or { strategy = "linear", amount = 500 }
persist = true              # keep the pool when the daemon stops
```

Every other PoolConfig field is accepted under its own name (alignment,
pre_initialize, initializer = "module:qualname", reset = ["mod:create",
"mod:reset"], huge_pages, lock_timeout, orphan_policy, batch_size, mode).
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Any

from fastalloc_shm import GrowthStrategy, PoolConfig, _names, _protocol
from fastalloc_shm.errors import ConfigError
from fastalloc_shm.kinds import POOL_KINDS

_CONFIG_FIELDS = ("capacity", "slot_size", "max_capacity", "alignment", "pre_initialize", "initializer",
                  "huge_pages", "lock_timeout", "orphan_policy", "batch_size", "mode")
_POOL_KEYS = frozenset(_CONFIG_FIELDS) | {"kind", "persist", "growth", "reset"}
_GROWTH_KEYS = {"none": set(), "linear": {"amount"}, "exponential": {"factor"}, "custom": {"function"}}


@dataclass(frozen=True)
class PoolSpec:
    """One declared pool: its kind, its PoolConfig, and whether it outlives the daemon."""

    name: str
    kind: str
    config: PoolConfig
    persist: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    """The pools to run; `source` is the file they came from (None: the embedded default)."""

    pools: dict[str, PoolSpec] = field(default_factory=dict)
    source: str | None = None


EMBEDDED_DEFAULT = DaemonConfig({"default": PoolSpec("default", "fixed", PoolConfig(capacity=1024, slot_size=256))})


def load(path: str) -> DaemonConfig:
    """Read and validate a TOML config file; ConfigError names the file, pool and key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse(data, path)


def parse(data: dict[str, Any], source: str) -> DaemonConfig:
    """Validate the parsed TOML document `data`."""
    unknown = set(data) - {"pools"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {sorted(unknown)[0]!r}; pools go in [pools.NAME] tables")
    tables = data.get("pools", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: 'pools' must be a table of [pools.NAME] tables")
    pools = {}
    for name, table in tables.items():
        try:
            pools[name] = pool_spec(name, table)
        except ConfigError as exc:
            raise ConfigError(f"{source}: [pools.{name}]: {exc}") from None
    return DaemonConfig(pools, source)


def pool_spec(name: str, table: Any) -> PoolSpec:
    """A PoolSpec from one `[pools.NAME]` table."""
    _names.validate(name)
    if not isinstance(table, dict):
        raise ConfigError("expected a table of pool settings")
    unknown = set(table) - _POOL_KEYS
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key; known keys are {', '.join(sorted(_POOL_KEYS))}")
    kind = table.get("kind", "fixed")
    if kind not in POOL_KINDS:
        raise ConfigError(f"kind: {kind!r} is not one of {', '.join(POOL_KINDS)}")
    persist = table.get("persist", False)
    if not isinstance(persist, bool):
        raise ConfigError(f"persist: expected true or false, got {persist!r}")
    if "capacity" not in table:
        raise ConfigError("capacity: required")
    values = {key: table[key] for key in _CONFIG_FIELDS if key in table}
    if "growth" in table:
        values["growth_strategy"] = growth_strategy(table["growth"])
    if "reset" in table:
        reset = table["reset"]
        if not isinstance(reset, list) or len(reset) != 2 or not all(isinstance(r, str) for r in reset):
            raise ConfigError('reset: expected ["module:create", "module:reset"]')
        values["reset"] = tuple(reset)
    return PoolSpec(name, kind, PoolConfig(**values), persist)


def growth_strategy(table: Any) -> GrowthStrategy:
    """A GrowthStrategy from `{strategy = "linear", amount = N}` and its kin."""
    if not isinstance(table, dict) or table.get("strategy") not in _GROWTH_KEYS:
        raise ConfigError(f"growth: expected {{strategy = one of {', '.join(_GROWTH_KEYS)}, ...}}, got {table!r}")
    strategy = table["strategy"]
    expected = _GROWTH_KEYS[strategy]
    unknown = set(table) - expected - {"strategy"}
    missing = expected - set(table)
    if unknown or missing:
        raise ConfigError(f"growth: strategy {strategy!r} takes {sorted(expected) or 'no other keys'}")
    if strategy == "linear":
        return GrowthStrategy.linear(table["amount"])
    if strategy == "exponential":
        return GrowthStrategy.exponential(table["factor"])
    if strategy == "custom":
        return GrowthStrategy.custom(table["function"])
    return GrowthStrategy.none()


def choose_socket_path() -> str:
    """The first usable default socket location (see `_protocol.socket_candidates`)."""
    candidates = _protocol.socket_candidates()
    for path in candidates[:-1]:
        directory = os.path.dirname(path)
        if os.access(directory, os.W_OK) or os.access(os.path.dirname(directory), os.W_OK):
            return path
    return candidates[-1]


def prepare_socket_dir(path: str) -> None:
    """Create the socket's directory (0700); refuse a temp-dir one that another user could own."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.dirname(directory) == tempfile.gettempdir():
        st = os.lstat(directory)
        if st.st_uid != os.getuid() or not os.path.isdir(directory) or os.path.islink(directory):
            raise ConfigError(f"socket directory {directory} is not a directory owned by this user; remove it")
        os.chmod(directory, 0o700)

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
Pools with callables are declared here only: no request over the socket may
name a function for the daemon to import.

Who may use the control socket (top-level keys; the daemon's own uid and root always may):

```toml
allowed_uids = [1001, 1002]     # peers by uid (SO_PEERCRED)
allowed_gids = [998]            # peers by primary or supplementary group
socket_group = "fastalloc"      # socket directory 0750 and socket 0660, of this group (also allowed)
max_connections_per_uid = 16
frame_deadline = 10.0           # seconds for a whole request frame to arrive
```
"""

from __future__ import annotations

import grp
import os
import stat
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Any

from fastalloc_shm import GrowthStrategy, PoolConfig, _admin, _protocol
from fastalloc_shm.errors import ConfigError
from fastalloc_shm.kinds import DEFAULT_KIND, POOL_KINDS

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
class Access:
    """Who may talk to the control socket, and the bounds on what each peer may hold."""

    allowed_uids: frozenset[int] = frozenset()
    allowed_gids: frozenset[int] = frozenset()
    socket_group: str | int | None = None
    max_connections_per_uid: int = 16
    frame_deadline: float = 10.0

    def allows(self, uid: int, gids: set[int]) -> bool:
        """The daemon's own uid, root, an allowed uid, or a member of an allowed group (the socket's included)."""
        group = self.socket_gid()
        allowed_gids = self.allowed_gids | ({group} if group is not None else set())
        return uid in (os.getuid(), 0) or uid in self.allowed_uids or bool(gids & allowed_gids)

    def socket_gid(self) -> int | None:
        """The socket group's gid, looked up when the daemon starts (the file may name a group of another host)."""
        group = self.socket_group
        if group is None or isinstance(group, int):
            return group
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"socket_group: no group {group!r} on this system") from None


@dataclass(frozen=True)
class DaemonConfig:
    """The pools to run; `source` is the file they came from (None: the embedded default)."""

    pools: dict[str, PoolSpec] = field(default_factory=dict)
    source: str | None = None
    access: Access = field(default_factory=Access)


EMBEDDED_DEFAULT = DaemonConfig({"default": PoolSpec("default", DEFAULT_KIND, PoolConfig(capacity=1024, slot_size=256))})


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
    unknown = set(data) - {"pools"} - set(_ACCESS_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {sorted(unknown)[0]!r}; pools go in [pools.NAME] tables,"
                          f" and the top-level keys are {', '.join(_ACCESS_KEYS)}")
    try:
        access = access_settings(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    tables = data.get("pools", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: 'pools' must be a table of [pools.NAME] tables")
    pools = {}
    for name, table in tables.items():
        try:
            pools[name] = pool_spec(name, table)
        except ConfigError as exc:
            raise ConfigError(f"{source}: [pools.{name}]: {exc}") from None
    return DaemonConfig(pools, source, access)


_ACCESS_KEYS = ("allowed_uids", "allowed_gids", "socket_group", "max_connections_per_uid", "frame_deadline")


def access_settings(data: dict[str, Any]) -> Access:
    """The top-level access keys of a config document."""
    ids = {}
    for key in ("allowed_uids", "allowed_gids"):
        values = data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                   for v in values):
            raise ConfigError(f"{key}: expected a list of numeric ids, got {values!r}")
        ids[key] = frozenset(values)
    group = data.get("socket_group")
    if group is not None and (isinstance(group, bool) or not isinstance(group, (int, str)) or group == ""):
        raise ConfigError(f"socket_group: expected a group name or gid, got {group!r}")
    cap = data.get("max_connections_per_uid", Access.max_connections_per_uid)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"max_connections_per_uid: expected an int >= 1, got {cap!r}")
    deadline = data.get("frame_deadline", Access.frame_deadline)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 600:
        raise ConfigError(f"frame_deadline: expected seconds in (0, 600], got {deadline!r}")
    return Access(ids["allowed_uids"], ids["allowed_gids"], group, cap, float(deadline))


def pool_spec(name: str, table: Any) -> PoolSpec:
    """A PoolSpec from one `[pools.NAME]` table."""
    _admin.validate_name(name)
    if not isinstance(table, dict):
        raise ConfigError("expected a table of pool settings")
    unknown = set(table) - _POOL_KEYS
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key; known keys are {', '.join(sorted(_POOL_KEYS))}")
    kind = table.get("kind", DEFAULT_KIND)
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


def prepare_socket_dir(path: str, group: int | None = None) -> None:
    """Create the socket's directory: 0700, or 0750 of `group` so its members can reach the socket.

    A directory that already exists must be ours and not a symlink (clients
    check the same before they send), else someone else may have made it first."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if st.st_uid != os.getuid() or not os.path.isdir(directory) or os.path.islink(directory):
        raise ConfigError(f"socket directory {directory} is not a directory owned by this user; remove it")
    if group is not None:
        os.chown(directory, -1, group)
        os.chmod(directory, 0o750)
    elif os.path.dirname(directory) == tempfile.gettempdir():
        os.chmod(directory, 0o700)
    elif stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError(f"socket directory {directory} is writable by group or others; chmod go-w it")

"""DaemonClient: talk to fastalloc-shmd over its control socket.

Each call opens a connection, sends one request frame and reads one reply
(see `_protocol`), all within `timeout` seconds, so a client never hangs on a
stuck daemon and survives a daemon restart. Pools themselves are used
directly through shared memory; the daemon only creates, watches and repairs
them.

Before sending, a client checks that it talks to the daemon it trusts: the
socket's directory belongs to a trusted uid (this user, root, or one in
`trusted_uids=` / `$FASTALLOC_TRUSTED_UIDS`: set it to the daemon's uid), is
not a symlink and is not writable by group or others, and the listening
process (SO_PEERCRED) runs as a trusted uid. Anyone can create a directory
in /tmp first.

>>> client = DaemonClient()                       # doctest: +SKIP
>>> pool = client.ensure("jobs", capacity=1000)   # doctest: +SKIP
>>> client.register(["jobs"])                     # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from . import _protocol, _trust, errors
from .config import PoolConfig
from .errors import ConfigError, FastallocError
from .pool import attach


class DaemonUnavailable(FastallocError):
    """fastalloc-shmd is not running, not reachable, or did not answer in time."""


class DaemonError(FastallocError):
    """The daemon refused a request for a reason that has no library exception of its own."""


class DaemonClient:
    """A connection-per-call client of fastalloc-shmd; every call takes at most `timeout` seconds."""

    def __init__(self, socket_path: str | None = None, timeout: float = 2.0,
                 trusted_uids: Iterable[int] | None = None) -> None:
        self._trusted_arg = None if trusted_uids is None else list(trusted_uids)
        self._trusted = _trust.trusted_uids(self._trusted_arg)
        if socket_path is None:
            candidates = _protocol.socket_candidates()
            socket_path = next((p for p in candidates if os.path.exists(p)), candidates[0])
        self.socket_path = socket_path
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"DaemonClient({self.socket_path!r}, timeout={self.timeout})"

    def ping(self) -> dict[str, Any]:
        """The daemon's pid, version, uptime, pool count and metrics address."""
        return self.call("ping")

    def list(self) -> list[dict[str, Any]]:
        """The pools the daemon manages: name, kind, capacity, slot_size, in_use, owned, persist."""
        return self.call("list")

    def create(
        self,
        name: str,
        kind: str = "fixed",
        *,
        config: PoolConfig | None = None,
        persist: bool = False,
        exist_ok: bool = False,
        **overrides: Any,
    ) -> Any:
        """Have the daemon create pool `name` (it owns it), then attach to it here.

        Takes a PoolConfig and/or its fields as keywords, as `FixedPool.create`
        does. `persist=True` keeps the pool when the daemon stops.
        """
        if config is None:
            config = PoolConfig(**overrides)
        elif overrides:
            config = config.with_overrides(**overrides)
        for field in ("initializer", "reset"):
            if getattr(config, field) is not None:
                raise ConfigError(
                    f"{field}: the daemon calls no function named in a request; declare a pool with callables in"
                    " the daemon's config file ([pools.NAME] in its TOML)"
                )
        if config.growth_strategy.kind == "custom":
            raise ConfigError("growth_strategy: a custom growth function is declared in the daemon's config file, not"
                              " sent in a request")
        self.call("create", name=name, kind=kind, config=config.to_record(), persist=persist, exist_ok=exist_ok)
        return attach(name, trusted_uids=self._trusted_arg)

    def ensure(self, name: str, kind: str = "fixed", **kwargs: Any) -> Any:
        """`create(..., exist_ok=True)`: the pool, created by the daemon if it did not exist."""
        return self.create(name, kind, exist_ok=True, **kwargs)

    def destroy(self, name: str) -> None:
        """Unlink pool `name` from the system (PoolNotFound when there is none)."""
        self.call("destroy", name=name)

    def stats(self, name: str | None = None) -> dict[str, Any]:
        """Statistics of one pool, or `{name: statistics}` of every managed pool."""
        return self.call("stats") if name is None else self.call("stats", name=name)

    def register(self, pools: Iterable[str] | str, pid: int | None = None) -> dict[str, Any]:
        """Tell the daemon that `pid` (default: this process) uses `pools`, so it repairs them if `pid` dies."""
        names = [pools] if isinstance(pools, str) else list(pools)
        return self.call("register", pid=os.getpid() if pid is None else pid, pools=names)

    def recover(self, name: str | None = None, orphan_policy: str | None = None) -> Any:
        """Have the daemon run `recover()` on one pool (a report dict) or on all it manages (a list)."""
        args: dict[str, Any] = {}
        if name is not None:
            args["name"] = name
        if orphan_policy is not None:
            args["orphan_policy"] = orphan_policy
        return self.call("recover", **args)

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result; raise the daemon's error as an exception."""
        deadline = time.monotonic() + self.timeout
        why = _protocol.check_socket(self.socket_path, self._trusted)
        if why is not None:
            raise DaemonUnavailable(f"not talking to {self.socket_path}: {why}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                pid, uid, _ = _protocol.peer_credentials(sock)
                if uid not in self._trusted:
                    raise DaemonUnavailable(
                        f"not talking to {self.socket_path}: the process listening there (pid {pid}) runs as uid {uid},"
                        f" not a trusted uid; if that is the daemon's user, set {_trust.ENV}={uid}"
                    )
                try:
                    _protocol.send_frame(sock, {"op": op, **args})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the daemon refused this peer at once: its reason may wait in the socket
                body = _protocol.recv_frame(sock, deadline)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(
                f"fastalloc-shmd is not running: nothing listens on {self.socket_path} ({exc.strerror}); start it"
                " with `fastalloc-shmd` (or `make run`, or `systemctl start fastalloc-shmd`), or pass"
                f" socket_path= or set {_protocol.SOCKET_ENV} to the socket it printed at start"
            ) from None
        except PermissionError:
            raise DaemonUnavailable(
                f"no permission to connect to {self.socket_path}: the socket is mode 0600, so run as the"
                " daemon's user (or root)"
            ) from None
        except TimeoutError:
            raise DaemonUnavailable(
                f"fastalloc-shmd at {self.socket_path} did not answer {op!r} within {self.timeout} s"
            ) from None
        except OSError as exc:
            raise DaemonUnavailable(f"cannot talk to fastalloc-shmd at {self.socket_path}: {exc}") from None
        if body is None:
            raise DaemonUnavailable(f"fastalloc-shmd at {self.socket_path} closed the connection without a reply")
        reply = _protocol.decode(body, request=False)
        if reply.get("ok") is True:
            return reply.get("result")
        raise _exception(reply.get("error"))


def _exception(error: Any) -> FastallocError:
    """The library exception a daemon error names (PoolNotFound, ConfigError, ...), else DaemonError."""
    if not isinstance(error, dict):
        return DaemonError(f"malformed error reply from fastalloc-shmd: {error!r}")
    kind, message = str(error.get("type")), str(error.get("message"))
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, FastallocError):
        return cls(message)
    return DaemonError(f"{kind}: {message}")


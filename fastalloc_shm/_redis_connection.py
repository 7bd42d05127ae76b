"""One connection to Redis (a server or a cluster) for RedisPool.

It owns what redis-py leaves to the caller: the optional import, timeouts on
every call, script loading (SCRIPT LOAD once, EVALSHA after, reload on
NOSCRIPT after a restart or SCRIPT FLUSH) and turning redis-py's exceptions
into this library's. Messages name the server as host:port and never carry
a password; `mask_url` is what reprs show.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._redis_errors import EXTRA_HINT, RedisNotInstalled, RedisUnavailable, ScriptError
from ._redis_scripts import Script
from .errors import ConfigError, FastallocError

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.exceptions import (
        AuthenticationError,
        ClusterDownError,
        NoScriptError,
        RedisClusterException,
        RedisError,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
except ImportError:  # the `redis` extra is optional: RedisPool says so when used
    redis = None

# Seconds. A down host fails at connect, a hung server at the socket timeout:
# both within a few seconds, never a hang. A url's own ?socket_timeout=... and
# ?socket_connect_timeout=... win over these (redis-py gives query options precedence).
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
_PASSWORD_IN_QUERY = re.compile(r"(password=)[^&]*", re.IGNORECASE)


def require_redis() -> None:
    """Raise RedisNotInstalled, naming the extra, when redis-py is missing."""
    if redis is None:
        raise RedisNotInstalled(f"RedisPool needs the redis package, an optional extra: {EXTRA_HINT}")


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`, for reprs and messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc, query=_PASSWORD_IN_QUERY.sub(r"\1***", parts.query)))


def address(url: str) -> str:
    """`host:port` (or the socket path) that `url` points at."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    return f"[{host}]:{parts.port or 6379}" if ":" in host else f"{host}:{parts.port or 6379}"


class Connection:
    """A redis-py client (`Redis` or `RedisCluster`) with this library's timeouts and errors."""

    def __init__(self, url: str, cluster: bool) -> None:
        require_redis()
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"url: expected redis://, rediss:// or unix://..., got {url!r:.60}")
        if cluster and url.startswith("unix://"):
            raise ConfigError("url: a Redis Cluster is reached over TCP; give redis:// or rediss://host:port")
        self.address = address(url)
        self._password = urlsplit(url).password
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            # No silent retries: retrying a script whose reply was lost could
            # allocate twice, and redis-py's default backoff turns a refused
            # connection into a wait of several seconds.
            "retry": Retry(NoBackoff(), 0),
        }
        try:
            # RedisCluster connects here (to read the slot map); Redis on first use.
            self._client = RedisCluster.from_url(url, **options) if cluster else redis.Redis.from_url(url, **options)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self.unavailable(exc) from None

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA `script` (loading it on NOSCRIPT); ScriptError for a pool error reply."""
        with self._translated():
            try:
                return self._client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                self._client.script_load(script.source)
                return self._client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def command(self, *args: Any) -> Any:
        """One plain Redis command, with this library's errors."""
        with self._translated():
            return self._client.execute_command(*args)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """redis-py's exceptions as this library's, naming the server, never a password."""
        try:
            yield
        except ResponseError as exc:
            raise self._response_error(exc) from None
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError) as exc:
            raise self.unavailable(exc) from None
        except RedisError as exc:
            raise FastallocError(f"Redis at {self.address} failed: {self._scrub(exc)}") from None

    def scan(self, pattern: str) -> Iterator[bytes]:
        """Keys matching `pattern` on every primary (SCAN, so the server never blocks)."""
        try:
            yield from self._client.scan_iter(match=pattern, count=1000, _type="hash")
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError) as exc:
            raise self.unavailable(exc) from None
        except RedisError as exc:
            raise FastallocError(f"Redis at {self.address} failed: {self._scrub(exc)}") from None

    def close(self) -> None:
        """Close the client's sockets; errors while closing do not matter any more."""
        try:
            self._client.close()
        except (RedisError, RedisClusterException, OSError):
            pass

    def unavailable(self, exc: BaseException) -> RedisUnavailable:
        """The error for a server that is down, unreachable, too slow or refusing the login."""
        if isinstance(exc, ClusterDownError):
            hint = "the cluster is down or not all slots are served; check `redis-cli cluster info`"
        elif isinstance(exc, AuthenticationError):
            hint = "check the user name and password in the url"
        else:
            hint = "check that the server is up, reachable from this host, and that the url is right"
        return RedisUnavailable(f"Redis at {self.address} is unavailable ({self._scrub(exc)}); {hint}")

    def _response_error(self, exc: ResponseError) -> Exception:
        message = str(exc)
        if message.startswith("FASTALLOC "):
            _, code, rest = (message + " ").split(" ", 2)
            return ScriptError(code, rest.strip())
        if isinstance(exc, ClusterDownError):
            return self.unavailable(exc)
        if message.startswith("WRONGTYPE"):
            return ScriptError("WRONGTYPE", message)
        return FastallocError(f"Redis at {self.address} refused the command: {self._scrub(exc)}")

    def _scrub(self, exc: BaseException) -> str:
        """The exception's text without the password, in case a layer below quoted it."""
        text = str(exc).strip() or type(exc).__name__
        return text.replace(self._password, "***") if self._password else text

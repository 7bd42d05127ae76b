"""One connection to Redis (a server or a cluster) for RedisPool.

It owns what redis-py leaves to the caller: the optional import, timeouts on
every call, script loading (SCRIPT LOAD once, EVALSHA after, reload on
NOSCRIPT after a restart or SCRIPT FLUSH) and turning redis-py's exceptions
into this library's. Messages name the server as host:port and never carry
a password or a user name (a token is often given as one); `mask_url` is what
reprs show, `public_url` what travels in a pickle, and `with_local_credentials`
how a receiving process logs in with its own.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

from ._redis_errors import EXTRA_HINT, RedisNotInstalled, RedisOutOfMemory, RedisUnavailable, ScriptError
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
        OutOfMemoryError,
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
# A query option whose name (percent-decoded, as redis-py reads it: `?pass%77ord=` is a password)
# says credential: password, username, ssl_password, a token, ... Matched anywhere in the name.
_SECRET_NAME = re.compile(r"pass|user|token|secret|auth|cred|key_?phrase", re.IGNORECASE)
URL_ENV = "FASTALLOC_REDIS_URL"
AUTH_ENV = "REDISCLI_AUTH"
_SCHEMES = ("redis://", "rediss://", "unix://")


def require_redis() -> None:
    """Raise RedisNotInstalled, naming the extra, when redis-py is missing."""
    if redis is None:
        raise RedisNotInstalled(f"RedisPool needs the redis package, an optional extra: {EXTRA_HINT}")


def _option_name(part: str) -> str:
    """The name of one `name=value` query part as redis-py (parse_qs) decodes it."""
    return unquote_plus(part.partition("=")[0])


def _is_secret_option(part: str) -> bool:
    return bool(_SECRET_NAME.search(_option_name(part)))


def _unsplit(parts: Any) -> str:
    """urlunsplit, except that `unix://` keeps its two slashes when there is no netloc
    (urlunsplit writes `unix:/path`, which is no redis url)."""
    if parts.scheme == "unix" and not parts.netloc:
        query = f"?{parts.query}" if parts.query else ""
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return f"unix://{parts.path}{query}{fragment}"
    return urlunsplit(parts)


def _strip(url: str, replacement: str | None) -> str:
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = (f"{replacement}@{hostport}" if replacement else hostport) if at else parts.netloc
    kept = []
    for part in parts.query.split("&"):
        if not part:
            continue
        if _is_secret_option(part):
            if replacement:
                kept.append(f"{part.partition('=')[0]}={replacement}")
        else:
            kept.append(part)
    return _unsplit(parts._replace(netloc=netloc, query="&".join(kept), fragment=""))


def mask_url(url: str) -> str:
    """`url` with its user name and password (in the netloc or the query) shown as `***`, for reprs."""
    return _strip(url, "***")


def public_url(url: str) -> str:
    """`url` without any credentials: what may travel to another process (a pickle)."""
    return _strip(url, None)


def with_local_credentials(url: str) -> tuple[str, str | None]:
    """`url` (credential-free) with this process's own credentials: the user and password of
    `$FASTALLOC_REDIS_URL` (when it names the same server), else the password `$REDISCLI_AUTH`.
    Also says where they came from (None: this process has none)."""
    env_url = os.environ.get(URL_ENV)
    if env_url:
        try:
            same = address(env_url) == address(url)
        except ConfigError:
            same = False
        if same:
            userinfo, at, _ = urlsplit(env_url).netloc.rpartition("@")
            if at:
                parts = urlsplit(url)
                return _unsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}")), URL_ENV
    password = os.environ.get(AUTH_ENV)
    if password:
        parts = urlsplit(url)
        return _unsplit(parts._replace(netloc=f":{quote(password, safe='')}@{parts.netloc}")), AUTH_ENV
    return url, None


def address(url: str) -> str:
    """`host:port` (or the socket path) that `url` points at; ConfigError, echoing nothing, if it has none."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        raise ConfigError("url: its port is not a number (the url is not repeated here: it may hold a password)") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _secrets_of(url: str, username: str | None, password: str | None) -> list[str]:
    """Every string of `url` and the keywords that is a credential, as given and as decoded, so that
    no layer's quoting of it survives `_scrub`. A user name too (a token is often given as one),
    unless too short to scrub safely."""
    parts = urlsplit(url)
    found = [v for v in (parts.password, password) if v]
    found += [v for v in (parts.username, username) if v and len(v) > 2]
    for part in parts.query.split("&"):
        if _is_secret_option(part):
            value = part.partition("=")[2]
            found += [value, unquote_plus(value)]
    spelled = set()
    for value in found:
        spelled.update((value, unquote(value), unquote_plus(value), quote(value, safe=""),
                        quote(unquote(value), safe="")))
    return sorted((v for v in spelled if len(v) > 2 or v in (password, parts.password)), key=len, reverse=True)


def _describe_bad_url(url: object) -> str:
    """What a malformed url looks like, without any of it that could be a secret."""
    if not isinstance(url, str):
        return f"a {type(url).__name__}"
    scheme, sep, _ = url.partition("://")
    return f"a url of scheme {scheme!r}" if sep and scheme.isalnum() and len(scheme) <= 10 else "a string without a scheme"


class Connection:
    """A redis-py client (`Redis` or `RedisCluster`) with this library's timeouts and errors."""

    def __init__(self, url: str, cluster: bool, *, username: str | None = None,
                 password: str | None = None) -> None:
        require_redis()
        if not isinstance(url, str) or not url.startswith(_SCHEMES):
            raise ConfigError(f"url: expected redis://, rediss:// or unix://..., got {_describe_bad_url(url)}")
        if cluster and url.startswith("unix://"):
            raise ConfigError("url: a Redis Cluster is reached over TCP; give redis:// or rediss://host:port")
        self.address = address(url)
        self._cluster = cluster
        self._secrets = _secrets_of(url, username, password)
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            # No silent retries: retrying a script whose reply was lost could
            # allocate twice, and redis-py's default backoff turns a refused
            # connection into a wait of several seconds.
            "retry": Retry(NoBackoff(), 0),
        }
        # Keyword credentials; the url's own, when it has them, win (redis-py's rule for from_url).
        if username is not None:
            options["username"] = username
        if password is not None:
            options["password"] = password
        try:
            # RedisCluster connects here (to read the slot map); Redis on first use.
            self._client = RedisCluster.from_url(url, **options) if cluster else redis.Redis.from_url(url, **options)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self.unavailable(exc) from None
        except (ValueError, TypeError) as exc:  # redis-py's url parser: its message may quote the url
            raise ConfigError(f"url: redis-py cannot read it ({self._scrub(exc)})") from None

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

    def server_info(self) -> list[tuple[str, dict[str, Any]]]:
        """`INFO` of the server, or of every primary of a cluster, as (address, fields) pairs.
        INFO, not CONFIG GET: ACLs that forbid CONFIG (as hosted Redis does) still allow it."""
        with self._translated():
            if not self._cluster:
                return [(self.address, self._client.info())]
            reply = self._client.info(target_nodes=RedisCluster.PRIMARIES)
        if "redis_version" in reply:  # a single primary: redis-py returns its reply as is
            return [(self.address, reply)]
        return sorted(reply.items())

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
        elif isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            hint = (f"check the user name and password in the url (a pickled pool takes them from {URL_ENV} or"
                    f" {AUTH_ENV} in the process that unpickles it)")
        else:
            hint = "check that the server is up, reachable from this host, and that the url is right"
        return RedisUnavailable(f"Redis at {self.address} is unavailable ({self._scrub(exc)}); {hint}")

    def _response_error(self, exc: ResponseError) -> Exception:
        message = str(exc)
        if message.startswith("FASTALLOC "):
            _, code, rest = (message + " ").split(" ", 2)
            return ScriptError(code, rest.strip())
        if isinstance(exc, ClusterDownError) or message.startswith(("NOAUTH", "WRONGPASS")):
            return self.unavailable(exc)
        if message.startswith("WRONGTYPE"):
            return ScriptError("WRONGTYPE", message)
        if isinstance(exc, OutOfMemoryError) or message.startswith("OOM"):
            return RedisOutOfMemory(
                f"Redis at {self.address} refused the write for lack of memory (OOM {self._scrub(exc)}): it is at its"
                " maxmemory with maxmemory-policy noeviction. Reads still work; release or unlink pools, delete"
                " other keys, or raise the server's maxmemory"
            )
        return FastallocError(f"Redis at {self.address} refused the command: {self._scrub(exc)}")

    def _scrub(self, exc: BaseException) -> str:
        """The exception's text without the password or user name, in case a layer below quoted them."""
        text = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

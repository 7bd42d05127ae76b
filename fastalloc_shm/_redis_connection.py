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
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

from ._redis_errors import (
    EXTRA_HINT,
    RedisNotDurable,
    RedisNotInstalled,
    RedisOutOfMemory,
    RedisResharding,
    RedisUnavailable,
    ScriptError,
)
from ._redis_scripts import Script
from .errors import ConfigError, FastallocError

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.crc import key_slot
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
# A call that failed before its reply came is sent again, the same request id and all (the
# scripts make that safe, see _redis_scripts._ONCE), until it has taken its timeout plus the
# connect timeout. Waits between tries double from the first to the last (seconds); a
# redirection (MOVED, ASK) or a script to load is followed at once.
_FIRST_PAUSE, _LAST_PAUSE = 0.01, 0.2
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
        self._url = url
        # Run before anything else on each new connection, once a pool says what (see greet()).
        self._greeting: tuple[Script, list[str], tuple[Any, ...]] | None = None
        # The command that confirms a mutating script's writes (WAIT, WAITAOF), and how many confirm them.
        self._wait: tuple[Any, ...] | None = None
        self._wanted = 0
        self._options = {**options, "redis_connect_func": self._greet}
        # Scripts on a cluster go to the node serving their keys' slot through a plain client of
        # ours per node (no cluster client's own retries, on any redis-py version); the cluster
        # client only knows the slot map. Routes learnt from MOVED replies win over it.
        self._nodes: dict[str, Any] = {}
        self._routes: dict[str, str] = {}
        self._nodes_lock = threading.Lock()
        try:
            # RedisCluster connects here (to read the slot map); Redis on first use.
            self._client = RedisCluster.from_url(url, **options) if cluster else redis.Redis.from_url(url, **self._options)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self.unavailable(exc) from None
        except (ValueError, TypeError) as exc:  # redis-py's url parser: its message may quote the url
            raise ConfigError(f"url: redis-py cannot read it ({self._scrub(exc)})") from None
        # The call's timeout: the socket timeout (a url's ?socket_timeout= wins over ours).
        if not cluster:
            self.timeout = float(self._client.connection_pool.connection_kwargs.get("socket_timeout") or SOCKET_TIMEOUT)
        else:
            self.timeout = float(_query_seconds(url, "socket_timeout") or SOCKET_TIMEOUT)

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA `script` on the node serving `keys`; ScriptError for a pool error reply.

        Sent again (a script to load, a redirection, a node busy resharding, loading or out
        of reach) until the call has taken its timeout plus the connect timeout; then
        RedisResharding or RedisUnavailable naming the node (and the slot). Every script is
        safe to send again: reads and idempotent steps as they are, the rest by request id.
        """
        started = time.monotonic()
        where = self._route(keys[0]) if self._cluster else self.address
        client = self._node(where) if self._cluster else self._client
        if self._wait is not None and script.once:
            return self._run_durably(client, script, keys, args, started, where)
        try:
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            return self._again(script, keys, args, exc, started, where)

    def require(self, durability: str | None) -> None:
        """Confirm every mutating script's writes as `durability` says: "replicas:N" (WAIT N), "aof"
        (WAITAOF 1 0: fsynced to the primary's AOF), None (no confirmation)."""
        # The server gives up waiting a little before the socket would: its count is the answer.
        milliseconds = max(1, round(self.timeout * 800))
        if durability is None:
            self._wait, self._wanted = None, 0
        elif durability == "aof":
            self._wait, self._wanted = ("WAITAOF", 1, 0, milliseconds), 1
        else:
            self._wanted = int(durability.partition(":")[2])
            self._wait = ("WAIT", self._wanted, milliseconds)

    def _run_durably(self, client: Any, script: Script, keys: Sequence[str], args: Sequence[Any], started: float,
                     where: str) -> Any:
        """The script and its confirmation (WAIT/WAITAOF) on one connection: they wait for what it wrote."""
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        pipe.execute_command(*self._wait)
        try:
            reply, confirmed = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            return self._again(script, keys, args, exc, started, where)
        if isinstance(reply, Exception):
            return self._again(script, keys, args, reply, started, where)
        self._confirm(confirmed, where)
        return reply

    def _confirm(self, confirmed: Any, where: str) -> None:
        if isinstance(confirmed, Exception):
            raise self._final(confirmed, where)
        count = confirmed[0] if isinstance(confirmed, list) else confirmed
        if count < self._wanted:
            what = "its AOF fsync" if self._wait[0] == "WAITAOF" else f"{self._wanted} replicas"
            raise RedisNotDurable(
                f"Redis at {where} applied the write but {what} did not confirm it within {self._wait[-1] / 1000:.1f} s"
                f" ({count} did): a failover may lose it. Check the replicas (INFO replication) or the AOF"
            )

    def greet(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run `script` now, and first thing on every connection made from now on (a reconnect
        after a restart or failover included): how a pool checks that the server it finds is
        one that kept its writes. Returns the script's reply."""
        self._greeting = (script, list(keys), tuple(args))
        return self.run(script, keys, args)

    def _greet(self, connection: Any) -> None:
        """redis-py's hook for a new connection: its own setup (login, db), then the greeting."""
        connection.on_connect()
        greeting = self._greeting
        if greeting is None:
            return
        script, keys, args = greeting
        for _ in range(2):
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                connection.read_response()
                return
            except NoScriptError:
                connection.send_command("SCRIPT", "LOAD", script.source)
                connection.read_response()
            except ResponseError:
                return  # a replica, a slot moved away: the call that follows says what it needs to

    def _route(self, key: str) -> str:
        where = self._routes.get(key)
        if where is None:
            try:
                where = self._client.get_node_from_key(key).name
            except (RedisError, RedisClusterException, OSError) as exc:
                raise self.unavailable(exc) from None
            self._routes[key] = where
        return where

    def _node(self, where: str) -> Any:
        """Our own client of cluster node `where` ("host:port"), with this library's options."""
        client = self._nodes.get(where)
        if client is None:
            with self._nodes_lock:
                client = self._nodes.get(where)
                if client is None:
                    host, _, port = where.rpartition(":")
                    parts = urlsplit(self._url)
                    userinfo, at, _ = parts.netloc.rpartition("@")
                    netloc = f"{userinfo}@{host}:{port}" if at else f"{host}:{port}"
                    client = redis.Redis.from_url(_unsplit(parts._replace(netloc=netloc)), **self._options)
                    self._nodes[where] = client
        return client

    def _again(self, script: Script, keys: Sequence[str], args: Sequence[Any], exc: BaseException,
               started: float, where: str) -> Any:
        """The slow path of `run`: send the call again, each try on a fresh connection whose
        timeouts are what is left of the call's, until it answers or the time is up."""
        deadline = started + self.timeout + CONNECT_TIMEOUT
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        pause, asking = _FIRST_PAUSE, False
        while True:
            kind, target = _retry_kind(exc)
            if kind is None:
                raise self._final(exc, where) from None
            wait = 0.0
            if kind == "moved":
                where, asking = target, False
                self._routes[keys[0]] = where
            elif kind == "ask":
                asking = True
            elif kind != "noscript":
                wait, pause = pause, min(pause * 2, _LAST_PAUSE)
            # A server that refuses or drops connections is given the connect timeout, not more: one
            # that is down fails within it, one that restarted or failed over is back within it.
            until = started + CONNECT_TIMEOUT if kind == "down" and not isinstance(exc, RedisTimeoutError) else deadline
            left = until - time.monotonic() - wait
            if left <= 0.001:
                raise self._gave_up(kind, exc, target if kind == "ask" else where, keys[0], started) from None
            time.sleep(wait)
            try:
                return self._attempt(target if kind == "ask" else where, command, asking, script, left)
            except RedisNotDurable:
                raise  # the write was applied, only unconfirmed: sending it again cannot confirm it sooner
            except (RedisError, OSError) as again:
                exc = again
            finally:
                if kind == "ask":
                    asking = False

    def _attempt(self, where: str, command: tuple[Any, ...], asking: bool, script: Script, left: float) -> Any:
        """One try on a connection of its own, its connect and reply timeouts within `left` seconds."""
        client = self._node(where) if self._cluster else self._client
        pool = client.connection_pool
        options = dict(pool.connection_kwargs)
        options.update(socket_timeout=left, socket_connect_timeout=min(CONNECT_TIMEOUT, left))
        connection = pool.connection_class(**options)
        end = time.monotonic() + left
        try:
            connection.connect()
            connection._sock.settimeout(max(0.001, end - time.monotonic()))
            connection.send_command("SCRIPT", "LOAD", script.source)
            connection.read_response()
            if asking:
                connection.send_command("ASKING")
                connection.read_response()
            connection.send_command(*command)
            reply = connection.read_response()
            if self._wait is not None and script.once:
                connection.send_command(*self._wait)
                self._confirm(connection.read_response(), where)
            return reply
        finally:
            connection.disconnect()

    def _final(self, exc: BaseException, where: str) -> Exception:
        if isinstance(exc, ResponseError) and not isinstance(exc, AuthenticationError):
            error = self._response_error(exc, where)
            if isinstance(error, ScriptError):
                error.where = where
            return error
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)):
            return self.unavailable(exc, where)
        return FastallocError(f"Redis at {where} failed: {self._scrub(exc)}")

    def _gave_up(self, kind: str, exc: BaseException, where: str, key: str, started: float) -> Exception:
        spent = time.monotonic() - started
        if kind in ("moved", "ask", "tryagain") or (kind == "busy" and self._cluster):
            slot = key_slot(key.encode())
            return RedisResharding(
                f"Redis Cluster slot {slot} (key {key!r}) at {where} still answered {_CODE_OF_KIND.get(kind, 'CLUSTERDOWN')}"
                f" ({self._scrub(exc)}) after"
                f" {spent:.1f} s of retries: the slot is being migrated or the cluster is failing over. Retry later,"
                f" or finish the migration (`redis-cli --cluster fix`)"
            )
        if kind == "busy":
            return RedisUnavailable(f"Redis at {where} is busy ({self._scrub(exc)}) after {spent:.1f} s; retry later")
        return self.unavailable(exc, where, spent)

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

    def scan(self, pattern: str, kind: str = "hash") -> Iterator[bytes]:
        """Keys of type `kind` matching `pattern` on every primary (SCAN, so the server never blocks)."""
        try:
            yield from self._client.scan_iter(match=pattern, count=1000, _type=kind)
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError) as exc:
            raise self.unavailable(exc) from None
        except RedisError as exc:
            raise FastallocError(f"Redis at {self.address} failed: {self._scrub(exc)}") from None

    def close(self) -> None:
        """Close the clients' sockets; errors while closing do not matter any more."""
        for client in (self._client, *self._nodes.values()):
            try:
                client.close()
            except (RedisError, RedisClusterException, OSError):
                pass

    def unavailable(self, exc: BaseException, where: str | None = None, spent: float | None = None) -> RedisUnavailable:
        """The error for a server that is down, unreachable, too slow or refusing the login."""
        where = where or self.address
        took = "" if spent is None else f" for {spent:.1f} s"
        if isinstance(exc, ClusterDownError):
            hint = "the cluster is down or not all slots are served; check `redis-cli cluster info`"
        elif isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            hint = (f"check the user name and password in the url (a pickled pool takes them from {URL_ENV} or"
                    f" {AUTH_ENV} in the process that unpickles it)")
        else:
            hint = "check that the server is up, reachable from this host, and that the url is right"
        return RedisUnavailable(f"Redis at {where} is unavailable{took} ({self._scrub(exc)}); {hint}")

    def _response_error(self, exc: ResponseError, where: str | None = None) -> Exception:
        where = where or self.address
        message = str(exc)
        if message.startswith("FASTALLOC "):
            _, code, rest = (message + " ").split(" ", 2)
            return ScriptError(code, rest.strip())
        if isinstance(exc, ClusterDownError) or message.startswith(("NOAUTH", "WRONGPASS")):
            return self.unavailable(exc, where)
        if message.startswith("WRONGTYPE"):
            return ScriptError("WRONGTYPE", message)
        if isinstance(exc, OutOfMemoryError) or message.startswith("OOM"):
            return RedisOutOfMemory(
                f"Redis at {where} refused the write for lack of memory (OOM {self._scrub(exc)}): it is at its"
                " maxmemory with maxmemory-policy noeviction. Reads still work; release or unlink pools, delete"
                " other keys, or raise the server's maxmemory"
            )
        return FastallocError(f"Redis at {where} refused the command: {self._scrub(exc)}")

    def _scrub(self, exc: BaseException) -> str:
        """The exception's text without the password or user name, in case a layer below quoted them."""
        text = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def _query_seconds(url: str, name: str) -> float | None:
    for part in urlsplit(url).query.split("&"):
        key, _, value = part.partition("=")
        if unquote_plus(key) == name:
            try:
                return float(value)
            except ValueError:
                return None
    return None


# Replies that say the call did not run, and what to do about them.
_REDIRECTIONS = {"MOVED": "moved", "ASK": "ask", "TRYAGAIN": "tryagain", "CLUSTERDOWN": "busy",
                 "LOADING": "busy", "MASTERDOWN": "busy"}
_CODE_OF_KIND = {"moved": "MOVED", "ask": "ASK", "tryagain": "TRYAGAIN"}
_CODE_OF_CLASS = {"MovedError": "MOVED", "AskError": "ASK", "TryAgainError": "TRYAGAIN", "ClusterDownError": "CLUSTERDOWN",
                  "BusyLoadingError": "LOADING", "MasterDownError": "MASTERDOWN"}


def _retry_kind(exc: BaseException) -> tuple[str | None, str]:
    """("noscript" | "moved" | "ask" | "tryagain" | "busy" | "down" | None, node of a redirection);
    None: final. redis-py 5 leaves a redirection a ResponseError with the reply's code in its
    text; later versions raise MovedError etc. with the code stripped: both count."""
    if isinstance(exc, NoScriptError):
        return "noscript", ""
    if isinstance(exc, AuthenticationError):
        return None, ""
    text = str(exc)
    code = _CODE_OF_CLASS.get(type(exc).__name__)
    if code is None and isinstance(exc, ResponseError):
        first = text.split(" ", 1)[0]
        if first in _REDIRECTIONS:
            code, text = first, text[len(first) + 1:]
    if code is not None:
        kind = _REDIRECTIONS[code]
        return kind, (text.split()[-1] if kind in ("moved", "ask") and text.split() else "")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return "down", ""
    return None, ""

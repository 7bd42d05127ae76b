"""RedisPool never shows a password: not in a pickle, a repr, an error or a log line, malformed urls included.

A real redis-server with `requirepass` (a fresh random password per run); the
receiving side of a pickle is a real other process with its own environment.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import subprocess
import sys
import textwrap

import pytest

from fastalloc_shm import FastallocError, RedisPool
from fastalloc_shm.errors import ConfigError

from .redis_servers import redis_server

PASSWORD = "pw-" + secrets.token_hex(12)
TOKEN = "tok" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def server():
    # The default user has PASSWORD; an ACL user whose name is a token (as some hosted Redis issue them) too.
    with redis_server("--requirepass", PASSWORD, "--user", TOKEN, "on", f">{PASSWORD}", "~*", "&*", "+@all") as running:
        yield running


def url_of(server, userinfo: str) -> str:
    return f"redis://{userinfo}@127.0.0.1:{server.port}/0"


def unpickle_elsewhere(blob: bytes, env: dict[str, str]) -> str:
    """Unpickle `blob` in another process with exactly these credentials in its environment; what happened."""
    code = textwrap.dedent("""
        import pickle, sys
        from fastalloc_shm import FastallocError
        try:
            pool = pickle.loads(sys.stdin.buffer.read())
            h = pool.allocate("hello"); print("attached", pool.get(h), repr(pool)); pool.release(h); pool.close()
        except FastallocError as exc:
            print("refused", type(exc).__name__, exc)
    """)
    clean = {k: v for k, v in os.environ.items() if k not in ("FASTALLOC_REDIS_URL", "REDISCLI_AUTH")}
    done = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=60,
                          env={**clean, **env})
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode() + done.stderr.decode()


@pytest.mark.parametrize("user", ["default", TOKEN])
def test_no_password_in_a_pickle_and_the_receiver_uses_its_own(server, pool_name, caplog, user):
    caplog.set_level(logging.DEBUG)
    url = url_of(server, f"{user}:{PASSWORD}")
    with RedisPool.create(pool_name, url=url, capacity=4) as pool:
        blob = pickle.dumps(pool)
        assert PASSWORD.encode() not in blob and user.encode() not in blob
        for shown in (repr(pool), str(pool)):
            assert PASSWORD not in shown and TOKEN not in shown and "redis://***@127.0.0.1" in shown
        with_url = unpickle_elsewhere(blob, {"FASTALLOC_REDIS_URL": url})
        assert with_url.startswith("attached hello") and PASSWORD not in with_url and TOKEN not in with_url, with_url
        with_auth = unpickle_elsewhere(blob, {"REDISCLI_AUTH": PASSWORD})
        assert with_auth.startswith("attached hello") and PASSWORD not in with_auth, with_auth
        without = unpickle_elsewhere(blob, {})
        assert without.startswith("refused RedisUnavailable"), without
        assert "FASTALLOC_REDIS_URL" in without and "REDISCLI_AUTH" in without and "carries no credentials" in without
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("userinfo", [f":not-{PASSWORD}", f"default:not-{PASSWORD}", TOKEN, f"{TOKEN}:"])
def test_a_wrong_password_or_a_token_as_user_name_shows_in_no_error(server, pool_name, userinfo, caplog):
    caplog.set_level(logging.DEBUG)
    secret = userinfo.strip(":").removeprefix("default:")
    with pytest.raises(FastallocError) as info:
        RedisPool.create(pool_name, url=url_of(server, userinfo), capacity=4)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert f"127.0.0.1:{server.port}" in str(info.value)
    assert secret not in caplog.text


@pytest.mark.parametrize("url", [
    f"redis:/:{PASSWORD}@127.0.0.1:6379/0",       # one slash: not a redis url at all
    f"http://:{PASSWORD}@127.0.0.1:6379/0",       # another scheme
    f"redis://127.0.0.1:{PASSWORD}/0",            # the password typed where the port goes
    f"redis://:{PASSWORD}@127.0.0.1:6379/0?socket_timeout=soon",  # redis-py's own parser refuses it
    f"  redis://:{PASSWORD}@127.0.0.1:6379/0",    # leading spaces
])
def test_a_malformed_url_is_not_echoed(url, pool_name):
    with pytest.raises(ConfigError) as info:
        RedisPool.create(pool_name, url=url, capacity=4)
    assert PASSWORD not in str(info.value) and "url" in str(info.value)

"""RedisPool urls (issue 23, findings 6 and 7): every url form round-trips through pickle, and no credential,
in whatever form it was given, shows in a pickle, a repr, a log line or an error.

Private servers with a password: one on loopback TCP and a unix socket (with an ACL user whose name is a
token), one over TLS.
"""

from __future__ import annotations

import logging
import pickle
import secrets
import tempfile
from pathlib import Path

import pytest

from fastalloc_shm import FastallocError, RedisPool
from fastalloc_shm._redis_connection import mask_url, public_url

from .redis_servers import redis_server, tls_certificates

PASSWORD = "pw-" + secrets.token_hex(12)
KEY_PASSWORD = "kp-" + secrets.token_hex(12)
TOKEN = "tok" + secrets.token_hex(12)
SECRETS = (PASSWORD, KEY_PASSWORD, TOKEN)


@pytest.fixture(scope="module")
def plain():
    """(port, unix socket path) of a server with PASSWORD for `default` and for the ACL user TOKEN."""
    with tempfile.TemporaryDirectory(prefix="fastalloc-sock-") as directory:
        sock = str(Path(directory) / "redis.sock")
        with redis_server("--requirepass", PASSWORD, "--user", TOKEN, "on", f">{PASSWORD}", "~*", "&*", "+@all",
                          "--unixsocket", sock, "--unixsocketperm", "700") as server:
            yield server.port, sock


@pytest.fixture(scope="module")
def tls():
    with tls_certificates() as files, redis_server("--requirepass", PASSWORD, tls=files) as server:
        yield server.port, files.ca


def no_secret_in(*texts: str | bytes) -> None:
    for text in texts:
        for secret in SECRETS:
            assert (secret.encode() if isinstance(text, bytes) else secret) not in text, text


# -- 6. every url form round-trips through pickle -------------------------------------------------------


FORMS = {
    "redis-db": "redis://{auth}@127.0.0.1:{port}/3",
    "redis-options": "redis://{auth}@127.0.0.1:{port}/0?db=2&socket_timeout=4&client_name=fastalloc-test",
    "rediss": "rediss://{auth}@127.0.0.1:{tls_port}/1?ssl_ca_certs={ca}&ssl_cert_reqs=required",
    "unix": "unix://{auth}@{sock}",
    "unix-options": "unix://{auth}@{sock}?db=5&socket_timeout=4",
}


@pytest.mark.parametrize("form", FORMS)
def test_every_url_form_round_trips_through_pickle(plain, tls, pool_name, monkeypatch, caplog, form):
    caplog.set_level(logging.DEBUG)
    port, sock = plain
    tls_port, ca = tls
    url = FORMS[form].format(auth=f":{PASSWORD}", port=port, sock=sock, tls_port=tls_port, ca=ca)
    monkeypatch.setenv("REDISCLI_AUTH", PASSWORD)  # the receiver's own credentials
    with RedisPool.create(pool_name, url=url, capacity=4) as pool:
        h = pool.allocate({"form": form})
        blob = pickle.dumps(pool)
        no_secret_in(blob, repr(pool))
        clone = pickle.loads(blob)
        try:
            assert clone.get(h) == {"form": form}  # the same server and the same db
            again = pickle.loads(pickle.dumps(clone))
            assert again.get(h) == {"form": form}
            again.close()
            expected = public_url(url)
            assert expected.startswith(url.partition(":")[0] + "://") and expected in repr(clone).replace("***@", "")
        finally:
            clone.close()
    no_secret_in(caplog.text)


@pytest.mark.parametrize("url, public", [
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ("unix://:pw@/run/redis.sock?db=4&socket_timeout=3", "unix:///run/redis.sock?db=4&socket_timeout=3"),
    ("unix://user:pw@/run/redis.sock?password=pw&db=1", "unix:///run/redis.sock?db=1"),
    ("redis://u:p@h:7000/2?pass%77ord=pw&db=2", "redis://h:7000/2?db=2"),
    ("rediss://h/0?ssl_password=pw&ssl_ca_certs=/ca.pem", "rediss://h/0?ssl_ca_certs=/ca.pem"),
    ("redis://h/0?USERNAME=u&Pass+word=x&client_name=c", "redis://h/0?client_name=c"),
])
def test_public_url_keeps_the_place_and_options_and_drops_every_credential(url, public):
    assert public_url(url) == public
    assert "pw" not in mask_url(url)
    assert public_url(public_url(url)) == public


# -- 7. no credential in any form shows -----------------------------------------------------------------


def forms_of_credentials(port: int, tls_port: int, ca: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (url, keywords) logging in with PASSWORD in that form."""
    base = f"redis://127.0.0.1:{port}/0"
    return {
        "url password": (f"redis://:{PASSWORD}@127.0.0.1:{port}/0", {}),
        "acl user and password": (f"redis://{TOKEN}:{PASSWORD}@127.0.0.1:{port}/0", {}),
        "keyword password": (base, {"password": PASSWORD}),
        "keyword user and password": (base, {"username": TOKEN, "password": PASSWORD}),
        "query password": (f"{base}?password={PASSWORD}", {}),
        "percent-encoded query name": (f"{base}?pass%77ord={PASSWORD}", {}),
        "percent-encoded user and password": (f"{base}?user%6Eame={TOKEN}&pass%77ord={PASSWORD}", {}),
        "ssl_password": (f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
                         f"&ssl_password={KEY_PASSWORD}", {}),
    }


@pytest.fixture
def credential_forms(plain, tls):
    return forms_of_credentials(plain[0], tls[0], tls[1])


@pytest.mark.parametrize("form", list(forms_of_credentials(1, 2, Path("/ca.pem"))))
def test_no_credential_in_any_form_shows_in_a_pickle_repr_log_or_error(credential_forms, pool_name, caplog, form):
    caplog.set_level(logging.DEBUG)
    url, keywords = credential_forms[form]
    with RedisPool.create(pool_name, url=url, capacity=2, **keywords) as pool:
        h = pool.allocate("secretless")
        blob = pickle.dumps(pool)
        no_secret_in(blob, repr(pool), str(pool))
        attached = RedisPool.attach(pool_name, url=url, **keywords)
        assert attached.get(h) == "secretless"
        no_secret_in(repr(attached))
        attached.close()
        errors = []
        for step in (lambda: pool.get(h + 1),  # a stale handle
                     lambda: RedisPool.attach(pool_name + "-none", url=url, **keywords)):
            with pytest.raises(FastallocError) as info:
                step()
            errors.append(info.value)
        # The same forms with a wrong password: the login fails, and says nothing of either.
        wrong_url = url.replace(PASSWORD, "x" + PASSWORD[1:])
        wrong_keywords = {k: ("x" + v[1:] if k == "password" else v) for k, v in keywords.items()}
        with pytest.raises(FastallocError) as info:
            RedisPool.attach(pool_name, url=wrong_url, **wrong_keywords)
        errors.append(info.value)
        for error in errors:
            no_secret_in(str(error), repr(error))
            assert "x" + PASSWORD[1:] not in str(error)
    no_secret_in(caplog.text)

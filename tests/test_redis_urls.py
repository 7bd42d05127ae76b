"""RedisPool urls (issue 23, finding 6): every url form round-trips through pickle, credentials left behind.

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
import trustme

from fastalloc_shm import RedisPool
from fastalloc_shm._redis_connection import mask_url, public_url

from .redis_servers import TlsFiles, redis_server

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
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="fastalloc-tls-") as name:
        directory = Path(name)
        files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
        cert.cert_chain_pems[0].write_to_path(files.cert)
        cert.private_key_pem.write_to_path(files.key)
        ca.cert_pem.write_to_path(files.ca)
        with redis_server("--requirepass", PASSWORD, tls=files) as server:
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
])
def test_public_url_keeps_the_place_and_options(url, public):
    assert public_url(url) == public
    assert "pw" not in mask_url(url)
    assert public_url(public_url(url)) == public

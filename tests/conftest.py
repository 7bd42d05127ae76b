"""Shared fixtures: unique pool names, the run's one Redis server, and a session-wide leak check of /dev/shm."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from .redis_servers import redis_server

SHM_DIR = "/dev/shm"
# Every pool a test creates carries this tag, so the leak check can tell this
# run's objects from those of another run on the same machine.
RUN_TAG = f"t{os.getpid()}"
_counter = itertools.count()


def fastalloc_entries() -> set[str]:
    return {e for e in os.listdir(SHM_DIR) if "fastalloc." in e}


@pytest.fixture
def pool_name() -> str:
    """A pool name unique to this test (and this run)."""
    return f"{RUN_TAG}-{next(_counter)}"


@pytest.fixture
def make_name():
    """A factory of unique pool names, for tests that need several."""
    return lambda: f"{RUN_TAG}-{next(_counter)}"


@pytest.fixture(scope="session", autouse=True)
def no_leaked_system_objects():
    """Fail the run if it leaves any fastalloc.* segment or semaphore in /dev/shm."""
    before = fastalloc_entries()
    yield
    leaked = fastalloc_entries() - before
    if os.environ.get("CI") != "true":
        # Outside CI other runs may share the machine: judge only our own names.
        leaked = {e for e in leaked if RUN_TAG in e}
    for entry in leaked:
        os.unlink(os.path.join(SHM_DIR, entry))
    assert not leaked, f"test run leaked system objects (removed now): {sorted(leaked)}"


@pytest.fixture(scope="session")
def redis_url():
    """The run's redis-server. tests/ensure_servers.sh installs it when missing (or fails the run):
    a missing server is a failure, never a skip. At the end, no pool key may be left on it."""
    subprocess.run(["bash", str(Path(__file__).with_name("ensure_servers.sh"))], check=True)
    with redis_server() as server:
        yield server.url
        import redis

        client = redis.Redis.from_url(server.url)
        leftovers = sorted(client.scan_iter(match="{fastalloc.*"))
        client.close()
        assert not leftovers, f"tests left pool keys behind: {leftovers[:10]}"


@pytest.fixture(scope="session", autouse=True)
def the_expected_core():
    """`make test-asan` runs these tests against the instrumented core: make sure it is the one loaded."""
    expected = os.environ.get("FASTALLOC_EXPECT_CORE")
    if expected:
        from fastalloc_shm import _core

        assert os.path.dirname(os.path.abspath(_core.__file__)) == os.path.abspath(expected), _core.__file__

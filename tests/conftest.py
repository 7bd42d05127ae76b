"""Shared fixtures: unique pool names, and a session-wide leak check of /dev/shm."""

from __future__ import annotations

import itertools
import os

import pytest

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

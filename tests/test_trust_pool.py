"""A pool is data, never code: a pool squatted by another uid is refused, and nothing it names runs.

The attacker is a real process of uid 65534 that creates the pool first
(world-writable, hostile callables, code strings in its slots); the victim is
a real root process with the attacker's module importable, as it would be on a
shared machine. The payload would write a marker file; it must never appear.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from fastalloc_shm import (
    FastallocError,
    FixedPool,
    GrowingPool,
    GrowthStrategy,
    IncompatiblePool,
    PoolConfig,
    attach,
    unlink,
)
from fastalloc_shm import _layout as L

from . import requirements

NOBODY = 65534
needs_root = requirements.needs_root("to run the attacker as uid 65534 (os.setuid)")

EVIL_MODULE = """
import os
if os.geteuid() == 0:  # imported by the victim: the import alone is the gadget
    open({marker!r}, "w").write("imported by root")

def make():
    return "made"
"""

# The attacker: import first (the interpreter may not be readable to uid 65534), then drop to nobody.
ATTACKER = """
import sys
sys.path.insert(0, {evil_dir!r})
import os
import fastalloc_shm, fastalloc_shm.kinds
from fastalloc_shm import PoolConfig
os.setgid({uid}); os.setuid({uid})
import evil_{tag}
config = PoolConfig(capacity=4, slot_size=256, mode=0o666, initializer="evil_{tag}:make",
                    reset=("evil_{tag}:make", "builtins:eval"))
pool = fastalloc_shm.kinds.POOL_KINDS[{kind!r}].create({name!r}, config=config)
payload = "open({marker!r}, 'w').write('eval ran as root')"
handles = [pool.allocate(payload) for _ in range(4)]
for h in handles:
    pool.release(h)
pool.close()
"""

# The victim: what a user does with a pool of that name, reporting each outcome on one line.
VICTIM = """
import sys
sys.path.insert(0, {evil_dir!r})
import fastalloc_shm
from fastalloc_shm import attach, FastallocError
from fastalloc_shm.kinds import POOL_KINDS
cls = POOL_KINDS[{kind!r}]
def attempt(label, fn):
    try:
        pool = fn()
    except FastallocError as exc:
        print(label, "refused", type(exc).__name__, exc)
        return
    try:
        handle = pool.acquire()
        print(label, "acquired", repr(pool.get(handle)))
    except FastallocError as exc:
        print(label, "acquire refused", exc)
    finally:
        pool.close()
attempt("attach", lambda: attach({name!r}))
attempt("exist_ok", lambda: cls.create({name!r}, capacity=4, slot_size=256, mode=0o666,
                                       reset=("builtins:dict", "builtins:dict"), exist_ok=True))
"""


@pytest.fixture
def evil_dir(pool_name):
    """A directory readable by uid 65534 holding the attacker's module; the marker path inside."""
    directory = Path(tempfile.mkdtemp(prefix="fastalloc-evil-"))
    directory.chmod(0o755)
    tag = re.sub(r"\W", "_", pool_name)
    marker = directory / "marker"
    (directory / f"evil_{tag}.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    yield directory, tag, marker
    shutil.rmtree(directory)


@pytest.fixture
def squatted(pool_name, evil_dir, request):
    """The pool `pool_name` created first by uid 65534 with hostile callables and code in its slots."""
    directory, tag, marker = evil_dir
    kind = request.param
    script = ATTACKER.format(evil_dir=str(directory), uid=NOBODY, tag=tag, kind=kind, name=pool_name,
                             marker=str(marker))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert os.stat(f"/dev/shm/fastalloc.{pool_name}").st_uid == NOBODY
    assert not marker.exists()
    yield kind, directory, marker
    unlink(pool_name)


def run_victim(pool_name, kind, directory, env=None):
    script = VICTIM.format(evil_dir=str(directory), kind=kind, name=pool_name)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


@needs_root
@pytest.mark.parametrize("squatted", ["fixed", "threadlocal"], indirect=True)
def test_a_pool_squatted_by_another_uid_is_refused_and_runs_nothing(squatted, pool_name):
    kind, directory, marker = squatted
    outcome = run_victim(pool_name, kind, directory, env={"FASTALLOC_TRUSTED_UIDS": ""})
    for label in ("attach", "exist_ok"):
        assert outcome[label].startswith("refused FastallocError"), outcome
        assert "owned by uid 65534" in outcome[label] and "FASTALLOC_TRUSTED_UIDS=65534" in outcome[label]
        assert "trusted_uids=[65534]" in outcome[label]
    assert not marker.exists(), marker.read_text()


@needs_root
@pytest.mark.parametrize("squatted", ["fixed"], indirect=True)
def test_a_trusted_uid_makes_the_pool_attachable_and_attaching_imports_nothing(squatted, pool_name):
    kind, directory, marker = squatted
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(directory)!r})
        from fastalloc_shm import attach
        pool = attach({pool_name!r})
        h = pool.allocate({{"data": 1}})
        print(pool.get(h), pool.config.initializer, len(pool))
        pool.release(h)
        pool.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FASTALLOC_TRUSTED_UIDS": f"1234,{NOBODY}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["{'data':", "1}", f"evil_{re.sub(r'[^A-Za-z0-9_]', '_', pool_name)}:make", "1"]
    assert not marker.exists()  # a trusted pool's callables run only when acquire() needs them


@needs_root
@pytest.mark.parametrize("squatted", ["fixed"], indirect=True)
def test_trusted_uids_argument_and_a_bad_environment_value(squatted, pool_name, monkeypatch):
    with pytest.raises(Exception, match="owned by uid 65534"):
        attach(pool_name, trusted_uids=[1234])
    attach(pool_name, trusted_uids=[NOBODY]).close()
    monkeypatch.setenv("FASTALLOC_TRUSTED_UIDS", "nobody")
    with pytest.raises(Exception, match="comma-separated numeric uids"):
        attach(pool_name)


def test_exist_ok_compares_the_kind_and_every_field_callables_included(pool_name):
    with FixedPool.create(pool_name, capacity=4, initializer="builtins:dict"):
        with pytest.raises(IncompatiblePool, match="is a FixedPool"):
            GrowingPool.create(pool_name, capacity=4, initializer="builtins:dict", exist_ok=True)
        with pytest.raises(IncompatiblePool, match="initializer='builtins:dict', not 'builtins:list'"):
            FixedPool.create(pool_name, capacity=4, initializer="builtins:list", exist_ok=True)
        with pytest.raises(IncompatiblePool, match="lock_timeout"):
            FixedPool.create(pool_name, capacity=4, initializer="builtins:dict", lock_timeout=1.0, exist_ok=True)
        with pytest.raises(IncompatiblePool, match="mode"):
            FixedPool.create(pool_name, capacity=4, initializer="builtins:dict", mode=0o640, exist_ok=True)
        same = FixedPool.create(pool_name, config=PoolConfig(capacity=4, initializer="builtins:dict"), exist_ok=True)
        assert same.acquire()
        same.close()


def _semaphores(name: str) -> set[str]:
    """The /dev/shm entries of every semaphore of pool `name`, whatever incarnation."""
    return {e for e in os.listdir("/dev/shm") if re.fullmatch(rf"sem\.fastalloc\.{re.escape(name)}\.[0-9a-f]{{16}}\.lock", e)}


def test_unlink_removes_only_the_semaphore_of_the_segment_it_removed(make_name):
    """Finding 9: an unlinker racing a re-creator must never delete the new pool's lock, nor leak one.

    The race forced, deterministically: incarnation A's segment is moved aside (as if an unlinker
    had just removed its name), B is created under the same name, so both semaphores exist. Then
    unlink(name) must remove B's segment and B's semaphore, named by B's id, and leave A's; once
    A's segment is back under the name, unlink(name) removes A's segment and A's semaphore."""
    name = make_name()
    segment, aside = f"/dev/shm/fastalloc.{name}", f"/dev/shm/aside-{name}"
    first = FixedPool.create(name, capacity=2)
    try:
        (sem_a,) = _semaphores(name)
        assert sem_a == f"sem.fastalloc.{name}.{first._q[L.HDR_POOL_ID]:016x}.lock"
        os.rename(segment, aside)
        with FixedPool.create(name, capacity=2) as second:
            sem_b = f"sem.fastalloc.{name}.{second._q[L.HDR_POOL_ID]:016x}.lock"
            assert _semaphores(name) == {sem_a, sem_b}, "two incarnations, two semaphores, told apart by id"
            second.release(second.allocate("b"))
            assert unlink(name) is True
            assert _semaphores(name) == {sem_a}, "unlink removed another incarnation's semaphore, or leaked its own"
            assert not os.path.exists(segment)
        first.release(first.allocate("a still works"))  # its lock is still there
        os.rename(aside, segment)
        assert unlink(name) is True
        assert _semaphores(name) == set(), "unlink left the semaphore of the segment it removed"
        assert not [e for e in os.listdir("/dev/shm") if f"fastalloc.{name}" in e or e == f"aside-{name}"]
    finally:
        first.close()
        if os.path.exists(aside):
            os.rename(aside, segment)
            unlink(name)


def _sem_file(name: str) -> str:
    (entry,) = [e for e in os.listdir("/dev/shm") if re.fullmatch(rf"sem\.fastalloc\.{re.escape(name)}\.[0-9a-f]{{16}}\.lock", e)]
    return f"/dev/shm/{entry}"


@needs_root
def test_a_semaphore_or_an_extent_of_another_owner_is_refused(make_name):
    """Every object of a pool is checked, not only its main segment (root hands them to uid 65534 here)."""
    name = make_name()
    with FixedPool.create(name, capacity=2):
        os.chown(_sem_file(name), NOBODY, NOBODY)
        with pytest.raises(FastallocError, match=r"lock: .* is owned by uid 65534"):
            attach(name)
    grown = make_name()
    with GrowingPool.create(grown, capacity=1, growth_strategy=GrowthStrategy.linear(1)) as pool:
        pool.allocate_many([1, 2])  # extent 1 exists now
        os.chown(f"/dev/shm/fastalloc.{grown}.x1", NOBODY, NOBODY)
        with pytest.raises(FastallocError, match=r"extent 1: .* is owned by uid 65534"):
            attach(grown)


@needs_root
def test_callables_run_only_while_the_owner_is_trusted(pool_name):
    """Checked again when a callable is needed: a segment handed to another uid after attach runs nothing."""
    with FixedPool.create(pool_name, capacity=2, initializer="builtins:dict"):
        other = attach(pool_name)
        try:
            other.release(other.acquire())
            os.chown(f"/dev/shm/fastalloc.{pool_name}", NOBODY, NOBODY)
            with pytest.raises(FastallocError, match="initializer: not imported or called, the pool's owner is not trusted"):
                other.acquire()
            assert other.get(other.allocate("data still")) == "data still"
        finally:
            other.close()

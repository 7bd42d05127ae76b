"""The package as a user gets it: `python -m build` makes an sdist and, from it, a wheel; the wheel
installs into a fresh venv and works there, away from this checkout; its types reach a user's mypy.

The build runs once per session (about 30 s: an isolated build env, the core compiled from the sdist).
The fresh venv takes the dependencies from the package index, as a user's pip does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_SOURCES = sorted(p.name for p in (ROOT / "fastalloc_shm" / "_core").iterdir() if p.suffix in (".c", ".h"))
# The checkout must not leak into the venv's processes: no PYTHONPATH, no user site.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
CLEAN_ENV["PYTHONNOUSERSITE"] = "1"


def run(command: list[str], cwd: Path, timeout: float = 600) -> str:
    out = subprocess.run(command, cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{command[:4]} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it, as `python -m build` makes them."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    return out


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


@pytest.fixture(scope="session")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and its dependencies) installed; its python."""
    where = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(where / "env")], cwd=where)
    python = where / "env" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(only(dist, "*.whl"))], cwd=where)
    return python


def test_the_sdist_carries_the_cores_sources_and_headers_and_the_typing_markers(dist):
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert {f"fastalloc_shm/_core/{name}" for name in CORE_SOURCES} <= names
    assert {"setup.py", "pyproject.toml", "fastalloc_shm/py.typed", "fastalloc_shm/_core.pyi"} <= names
    assert not [n for n in names if n.endswith(".so")]


def test_the_wheel_carries_the_compiled_core_its_stub_and_py_typed_and_no_c_sources(dist):
    wheel = only(dist, "*.whl")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert f"-{tag}-{tag}-" in wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fastalloc_shm/py.typed", "fastalloc_shm/_core.pyi", "fastalloc_shm/__init__.py",
            "fastalloc_shmd/__main__.py"} <= names
    assert [n for n in names if n.startswith("fastalloc_shm/_core.") and n.endswith(".so")]
    assert not [n for n in names if n.endswith((".c", ".h"))]


ROUND_TRIP = """
import sys
import fastalloc_shm
from fastalloc_shm import FixedPool, unlink

assert fastalloc_shm.__file__.startswith(sys.prefix), fastalloc_shm.__file__
name = sys.argv[1]
try:
    with FixedPool.create(name, capacity=4, slot_size=128) as pool:
        h = pool.allocate({"id": 1, "tags": ["a", "b"]})
        assert pool.get(h) == {"id": 1, "tags": ["a", "b"]}, pool.get(h)
        pool.release(h)
        todo = pool.channel("todo")
        todo.put({"id": 2})
        assert todo.get(timeout=5) == {"id": 2}
        assert len(pool) == 0
finally:
    removed_again = unlink(name)
assert not removed_again, "the creator's `with` should have removed the pool"
print("round trip ok:", fastalloc_shm.__file__)
"""


def test_the_installed_wheel_runs_a_round_trip_outside_the_checkout(venv, pool_name, tmp_path):
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)
    out = run([str(venv), str(script), pool_name], cwd=tmp_path, timeout=60)
    assert "round trip ok" in out and str(ROOT) not in out
    assert not os.path.exists(f"/dev/shm/fastalloc.{pool_name}")


USER_CODE = """
import msgspec
from fastalloc_shm import FixedPool, PoolStatistics, attach

class Job(msgspec.Struct):
    id: int

def count(name: str) -> int:
    with FixedPool.create(name, capacity=4) as pool:
        reveal_type(pool)
        handle: int = pool.allocate({"n": 1})
        stats: PoolStatistics = pool.statistics()
        reveal_type(pool.get(handle))
        return stats.current_usage + handle

def typed(name: str) -> int:
    jobs = FixedPool[Job].create(name, capacity=4, value_type=Job)
    handle = jobs.allocate(Job(1))
    reveal_type(jobs.get(handle))
    reveal_type(jobs.channel("todo").get())
    reveal_type(attach(name, value_type=Job).get(handle))
    return jobs.get(handle).id
"""


def test_a_users_mypy_reads_the_installed_packages_types(venv, tmp_path):
    """mypy --strict on code that uses the installed wheel: py.typed makes the package typed (no
    "missing library stubs or py.typed marker"), create() returns the class it was called on, a
    plain pool's values are Any, and a typed pool's (FixedPool[Job], attach(value_type=Job)) are Job."""
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_CODE))
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable", str(venv),
                          "user.py"], cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True, timeout=300)
    assert 'Revealed type is "fastalloc_shm.pool.FixedPool[Any]"' in out.stdout, out.stdout
    assert 'Revealed type is "Any"' in out.stdout, out.stdout
    assert out.stdout.count('Revealed type is "user.Job"') == 3, out.stdout
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not errors, out.stdout

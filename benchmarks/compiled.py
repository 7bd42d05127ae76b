"""Builds floor_c.c with the system compiler into benchmarks/.build/ and imports it from there.

The build is cached by a hash of the source, the interpreter and the compiler command, so a run
compiles once (~1 s) and later runs and the spawned children reuse it. Concurrent builds are
safe: each writes its own temporary file and renames it into place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "floor_c.c"
BUILD_DIR = HERE / ".build"
FLAGS = ("-O2", "-shared", "-fPIC", "-pthread")
LIBS = ("-lrt",)  # shm_open lives in librt before glibc 2.34; an empty stub after
MODULE = "floor_c"

_module = None


class BuildError(Exception):
    """The compiled floor cannot be built here; the message says what is missing."""


def compiler() -> list[str]:
    """The C compiler command: $CC if set, else ``cc``."""
    cmd = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    if shutil.which(cmd[0]) is None:
        raise BuildError(f"no C compiler: {cmd[0]!r} not found (install one, e.g. `apt-get install gcc`, or set CC)")
    return cmd


def build() -> Path:
    """Path of the built extension, compiling it first unless a matching build is cached."""
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise BuildError(f"Python.h not found in {include} (install the Python headers, e.g. python3-dev)")
    cc = compiler()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), sys.version.encode(), " ".join(cc + list(FLAGS)).encode(),
                                     include.encode()])).hexdigest()[:16]
    target = BUILD_DIR / key / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    cmd = [*cc, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(tmp), *LIBS]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{shlex.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    os.replace(tmp, target)
    return target


def load():
    """The ``floor_c`` module (built if needed), imported from the build cache."""
    global _module
    if _module is None:
        spec = importlib.util.spec_from_file_location(MODULE, build())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _module = module
    return _module

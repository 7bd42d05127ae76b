"""Build the core (fastalloc_shm/_core/) by hand (for `make test-asan`); `pip install .` builds the normal one via setup.py.

    python tools/build_core.py --sanitize --out build/asan/fastalloc_shm
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANITIZE = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
            "-g", "-O1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory that receives _core<suffix>")
    parser.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UBSan")
    args = parser.parse_args()
    target = args.out / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = ["cc", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
               "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}", *(SANITIZE if args.sanitize else ["-O2"]),
               str(ROOT / "fastalloc_shm" / "_core" / "unity.c"), "-o", str(target), "-pthread", "-lrt"]
    print("building:", shlex.join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())

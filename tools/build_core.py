"""Build the core (fastalloc_shm/_core/) by hand, for `make test-asan` and `make coverage` (`pip install .` builds the usual one).

    python tools/build_core.py --sanitize --out build/asan/fastalloc_shm
    python tools/build_core.py --coverage --out build/coverage/fastalloc_shm
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
# gcov: unoptimised, so each line and branch of a unit is its own; the .gcda files
# land beside the object (-fprofile-update=atomic: the core's threads count too).
COVERAGE = ["--coverage", "-fprofile-update=atomic", "-g", "-O0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory that receives _core<suffix>")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UBSan")
    mode.add_argument("--coverage", action="store_true", help="gcov line and branch counts (for gcovr)")
    args = parser.parse_args()
    flags = SANITIZE if args.sanitize else COVERAGE if args.coverage else ["-O2"]
    target = args.out / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    sources = [ROOT / "fastalloc_shm" / "_core" / "unity.c"]
    if args.coverage:
        # The copy's own sources, so gcovr reads the text the counts were made from (the
        # work tree may change meanwhile); and the hook that writes counts at os._exit.
        copied = args.out / "_core" / "unity.c"
        sources = [copied.resolve() if copied.exists() else sources[0], ROOT / "tools" / "cov" / "gcov_dump.c"]
    command = ["cc", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
               "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}", *flags,
               *map(str, sources), "-o", str(target), "-pthread", "-lrt"]
    print("building:", shlex.join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())

"""The compiled core: one C extension, built from source by `pip install .` with the system compiler.

FASTALLOC_SANITIZE=1 builds it with AddressSanitizer and UBSan (make test-asan).
"""

import os
from glob import glob

from setuptools import Extension, setup

extra_compile = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
extra_link = ["-pthread"]
if os.environ.get("FASTALLOC_SANITIZE"):
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-g", "-O1"]
    extra_compile += sanitize
    extra_link += sanitize

setup(
    ext_modules=[
        Extension(
            "fastalloc_shm._core",
            # One translation unit that includes every unit of fastalloc_shm/_core/ (see unity.c).
            sources=["fastalloc_shm/_core/unity.c"],
            depends=sorted(glob("fastalloc_shm/_core/*")),
            extra_compile_args=extra_compile,
            extra_link_args=extra_link,
            libraries=["rt"],
        )
    ]
)

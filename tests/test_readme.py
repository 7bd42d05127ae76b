"""The README's Python examples run as written (a user pastes them)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_servers import redis_server

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"  # a file, so spawn can import __main__'s functions
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("number", [i for i, b in enumerate(BLOCKS) if "redis://" not in b])
def test_shared_memory_example_runs(number, tmp_path):
    run(BLOCKS[number], tmp_path)


@pytest.mark.parametrize("number", [i for i, b in enumerate(BLOCKS) if "redis://" in b])
def test_redis_example_runs_against_a_real_server(number, tmp_path):
    with redis_server() as server:
        run(BLOCKS[number].replace("redis://localhost:6379/0", server.url), tmp_path)

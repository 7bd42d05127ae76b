"""The randomized kill -9 soak (tests/soak.py), bounded for CI; run it longer by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind, kills, seconds", [("fixed", 200, 40), ("threadlocal", 100, 20)])
def test_soak_with_kills_loses_and_duplicates_nothing(kind, kills, seconds):
    out = subprocess.run(
        [sys.executable, "-m", "tests.soak", "--kind", kind, "--kills", str(kills), "--seconds", str(seconds)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nsoak: {figures}")
    assert figures["kills"] >= min(kills, 50)
    assert figures["mismatches"] == 0, "a slot was handed out twice"
    assert figures["survivor_values_lost"] == 0
    assert figures["slots_lost"] == 0

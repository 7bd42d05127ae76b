"""The randomized kill -9 soak (tests/soak.py) at the issue's target: 1,000 SIGKILLs across
4 self-checking processes, each churning a FixedPool and a ThreadLocalPool. Run it longer by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_1000_kills_read_nothing_wrong_hand_out_nothing_twice_lose_nothing():
    kills, seconds = 1000, 110
    out = subprocess.run(
        [sys.executable, "-m", "tests.soak", "--kind", "fixed", "threadlocal", "--kills", str(kills),
         "--seconds", str(seconds), "--workers", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nsoak: {figures['kills']} kills in {figures['seconds']} s, {figures['operations']} operations; "
          f"values read back wrong {figures['values_read_back_wrong']}, handed out twice {figures['handed_out_twice']}, "
          f"slots lost {figures['slots_lost']}\n{figures}")
    assert figures["kills"] == kills, f"only {figures['kills']} kills in {seconds} s"
    assert figures["values_read_back_wrong"] == 0
    assert figures["handed_out_twice"] == 0
    assert figures["slots_lost"] == 0
    for kind in ("fixed", "threadlocal"):
        assert figures[kind]["len_off"] == 0, f"{kind}: len() disagrees with the slots in use"

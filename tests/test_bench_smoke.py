"""`python -m benchmarks --quick` runs end to end: every system measured, every output written.

Timings are not asserted (the targets are reported by the benchmark itself). Needs the
``bench`` extra (lmdb, UltraDict, shared-memory-dict, redis, matplotlib); skipped without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from benchmarks.systems import SYSTEMS

for _module in ("matplotlib", "lmdb", "UltraDict", "shared_memory_dict", "redis"):
    pytest.importorskip(_module, reason="needs the bench extra: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT = 280  # seconds; a quick run takes well under a minute on an idle machine


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run for all the checks below: (output dir, parsed results.json, results.md text)."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def _redis_expected() -> bool:
    return shutil.which("redis-server") is not None or Path("/usr/bin/redis-server").exists()


def test_quick_run_writes_table_json_and_plot(quick_run):
    out, doc, md = quick_run
    assert (out / "scaling.png").read_bytes().startswith(PNG_MAGIC)
    assert md.startswith("# fastalloc-shm benchmark results")
    assert doc["targets"], "target lines missing"
    assert "## RedisPool vs raw redis-py" in md


def test_every_system_has_a_row_in_the_table(quick_run):
    _, _, md = quick_run
    missing = [s.name for s in SYSTEMS if f"| {s.name} |" not in md]
    assert not missing, f"systems without a measured row in results.md: {missing}"


@pytest.mark.parametrize("system", [s.name for s in SYSTEMS])
def test_every_system_is_measured(quick_run, system):
    _, doc, _ = quick_run
    if system == "Redis" and not _redis_expected():
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; CI must measure the Redis peer (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    assert system not in doc["unavailable"], doc["unavailable"].get(system)
    measured = {r["op"] for r in doc["rows"] if r["system"] == system and r.get("value") is not None}
    expected = {f"{op}/{kind}" for op in ("allocate", "get", "set", "release", "cycle") for kind in ("small", "4k")}
    errors = [e for e in doc["errors"] if e["system"] == system]
    assert expected <= measured, (sorted(expected - measured), errors)


def test_run_leaves_no_objects_or_servers_behind(quick_run):
    _, doc, _ = quick_run
    assert doc["swept"] == [], "the final sweep had to remove leftovers: some step does not clean up"
    tag = doc["meta"]["run_tag"] + "-"
    assert not [e for e in os.listdir("/dev/shm") if tag in e]
    pid = doc["meta"]["redis"]["pid"]
    if pid is not None:
        try:
            assert "redis" not in psutil.Process(pid).name(), "the private redis-server is still running"
        except psutil.NoSuchProcess:
            pass

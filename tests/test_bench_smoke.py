"""`python -m benchmarks --quick` runs end to end: every system measured, every output written.

Timings are not asserted (the targets are reported by the benchmark itself). Needs the
``bench`` extra (lmdb, UltraDict, shared-memory-dict, redis, matplotlib, iceoryx2, faster-fifo): skipped without it on a
developer's machine, a collection error in CI (tests/requirements.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import psutil
import pytest

from . import requirements

# Before the benchmark modules, which import these: a missing one skips this module on a
# developer's machine and fails collection in CI (tests/requirements.py).
requirements.modules("matplotlib", "lmdb", "UltraDict", "shared_memory_dict", "redis", "iceoryx2", "faster_fifo",
                     reason="needs the bench extra: pip install -e '.[bench]'")

from benchmarks import compiled, headtohead, job  # noqa: E402
from benchmarks.peers import Iceoryx2Peer  # noqa: E402
from benchmarks.systems import SYSTEMS  # noqa: E402
from benchmarks.values import BYTES100, SMALL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT = 280  # seconds; a quick run takes well under a minute on an idle machine


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, redis_url):
    """One quick run for all the checks below: (output dir, parsed results.json, results.md text)."""
    out = tmp_path_factory.mktemp("bench")
    # The Redis peer runs against the suite's one redis-server, which is there or fails the run.
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--redis-url", redis_url],
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


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
    assert system not in doc["unavailable"], doc["unavailable"].get(system)
    measured = {r["op"] for r in doc["rows"] if r["system"] == system and r.get("value") is not None}
    ops = ("cycle",) if system == "iceoryx2" else ("allocate", "get", "set", "release", "cycle")
    expected = {f"{op}/{kind}" for op in ops for kind in ("small", "bytes100", "4k")}
    if system in headtohead.CONTENDERS:
        expected |= {headtohead.op_name(kind) for kind in headtohead.kinds_of(system)}
    errors = [e for e in doc["errors"] if e["system"] == system]
    assert expected <= measured, (sorted(expected - measured), errors)


def test_every_target_is_reported_with_its_number(quick_run):
    _, doc, _ = quick_run
    unmeasured = [t["text"] for t in doc["targets"] if t["status"] == "not measured"]
    assert not unmeasured, unmeasured
    assert all(t["value"] is not None for t in doc["targets"] if t["status"] in ("met", "missed"))


def test_compiled_floor_builds_and_is_shared_between_processes():
    floor_c = compiled.load()
    name = f"/fabench-floorc-smoke-{os.getpid()}"
    pool = floor_c.open(name, 4, 128, packb=msgpack.packb, unpackb=msgpack.unpackb)
    try:
        held = pool.allocate({"from": "parent"})
        pid = os.fork()
        if pid == 0:  # the child attaches by name and leaves one value behind
            code = 1
            try:
                other = floor_c.open(name, packb=msgpack.packb, unpackb=msgpack.unpackb)
                code = 0 if other.get(held) == {"from": "parent"} and other.allocate({"from": "child"}) != held else 2
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert held == 0, "slot 0 is handed out first"
        assert [pool.get(0), pool.get(1)] == [{"from": "parent"}, {"from": "child"}]
        with pytest.raises(ValueError):
            pool.allocate({"x": "y" * 200})  # larger than the slot
    finally:
        pool.close()
        floor_c.unlink(name)
    assert not os.path.exists(f"/dev/shm{name}")


def test_compiled_floor_without_a_compiler_says_so(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(compiled.BuildError, match="no C compiler"):
        compiled.build()


def _iox2_entries() -> set[str]:
    """iceoryx2's /dev/shm files, less its process-wide registry (kept across nodes by design)."""
    return {e for e in os.listdir("/dev/shm") if e.startswith("iox2_") and not e.endswith(".global_mgmt")}


def test_iceoryx2_peer_runs_cycles_and_removes_its_service():
    before = _iox2_entries()
    peer = Iceoryx2Peer(f"fabench/smoke-{os.getpid()}", 128, raw=True)
    try:
        assert _iox2_entries() - before, "the service made no files: not the shared-memory transport"
        assert peer.round_trip(BYTES100) == BYTES100
        assert isinstance(peer.rep_cycle(BYTES100, 20), int)
        assert peer.round_trip(b"after the timed loop") == b"after the timed loop"
    finally:
        peer.close()
    packed = Iceoryx2Peer(f"fabench/smoke-dict-{os.getpid()}", 128, raw=False)
    try:
        assert packed.round_trip(SMALL) == SMALL
        assert isinstance(packed.rep_cycle(SMALL, 20), int)
    finally:
        packed.close()
    assert _iox2_entries() <= before


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


def test_every_transport_of_the_job_moved_every_item_and_has_a_row(quick_run):
    """The users' job (benchmarks/job.py) checks each repetition got every item exactly once; a
    transport that failed that check, or did not run, has no row and shows in the errors."""
    _, doc, md = quick_run
    measured = {r["system"] for r in doc["rows"] if r["op"] == "job/items_per_s" and r["value"]}
    expected = {t.name for t in job.transports("redis://unused")}
    assert measured == expected, [e for e in doc.get("errors", []) if e.get("step") == "job"]
    assert "## The users' job: 1 producer → 2 consumer processes" in md
    assert any("channel, one item per put/get" in t["text"] for t in doc["targets"])

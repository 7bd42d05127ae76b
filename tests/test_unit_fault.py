"""Unit: fault.c, the fault points of the crash tests.

Its invariant (the top of fault.c): FASTALLOC_FAULT=<point>:<action>[:<n>]
makes the n-th arrival at <point> append "<pid> <point> <n>" to
$FASTALLOC_FAULT_FILE, flushed, and then kill, stop or pause; the variable is
read once, at import, and an unknown point or action is a ValueError then.
FAULT_POINTS is every point there is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fastalloc_shm import FixedPool, _core

ROOT = Path(__file__).resolve().parent.parent
USE = """
import sys, fastalloc_shm
p = fastalloc_shm.attach(sys.argv[1])
for i in range(3):
    p.allocate(i)
print("finished")
"""


def run(spec: str, *args: str, code: str = "import fastalloc_shm._core as c; print(c.fault_active())", marker=None):
    env = dict(os.environ, FASTALLOC_FAULT=spec)
    if marker:
        env["FASTALLOC_FAULT_FILE"] = str(marker)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_the_table_of_points():
    points = _core.FAULT_POINTS
    assert len(points) == len(set(points)) >= 17
    assert all(point.count(".") == 1 for point in points)
    assert "lock.acquired" in points and "grow.created" in points and "recover.rebuilding" in points
    assert _core.fault_active() is False
    _core.fault("grow.created")  # no fault set: nothing happens
    with pytest.raises(ValueError, match="is not a fault point"):
        _core.fault("no.such")


@pytest.mark.parametrize("spec", ["no.such:kill", "alloc.marked:explode", "alloc.marked", "alloc.marked:kill:0",
                                  "alloc.marked:kill:x", "alloc.marked:kill:", "alloc.marked:kill:2x", "lock:kill"])
def test_an_unknown_point_or_action_is_a_value_error_at_import(spec):
    out = run(spec)
    assert out.returncode == 1
    assert "ValueError" in out.stderr and f"FASTALLOC_FAULT={spec}: expected <point>:<kill|stop|pause>" in out.stderr


@pytest.mark.parametrize("spec", ["alloc.marked:kill", "alloc.marked:stop:3", "lock.released:pause:12"])
def test_a_valid_spec_is_active(spec):
    assert run(spec).stdout.strip() == "True"
    assert run("").stdout.strip() == "False"


def test_the_nth_arrival_writes_its_marker_line_then_kills(tmp_path, pool_name):
    marker = tmp_path / "marker"
    with FixedPool.create(pool_name, capacity=8) as pool:
        child = subprocess.Popen([sys.executable, "-c", USE, pool_name], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, FASTALLOC_FAULT="alloc.marked:kill:2", FASTALLOC_FAULT_FILE=str(marker)))
        out, _ = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL and "finished" not in out
        assert marker.read_text() == f"{child.pid} alloc.marked 2\n"
        # Killed marking the slot at the fresh mark, before moving the mark: that slot is cleared.
        report = pool.recover()
        assert report.orphans_kept == 1 and len(pool) == 1 and pool._core.semaphore_value == 7


@pytest.mark.parametrize("action, status", [("stop", psutil.STATUS_STOPPED), ("pause", psutil.STATUS_SLEEPING)])
def test_stop_and_pause_hold_the_process_where_it_is(tmp_path, pool_name, action, status):
    marker = tmp_path / "marker"
    with FixedPool.create(pool_name, capacity=8) as pool:
        child = subprocess.Popen([sys.executable, "-c", USE, pool_name], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, FASTALLOC_FAULT=f"lock.released:{action}",
                                          FASTALLOC_FAULT_FILE=str(marker)))
        try:
            deadline = time.monotonic() + 30
            while not (marker.exists() and marker.read_text()):
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.005)
            assert marker.read_text() == f"{child.pid} lock.released 1\n"
            while psutil.Process(child.pid).status() != status:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            assert len(pool) == 1 and pool.allocate("the lock was released first") is not None
        finally:
            child.kill()
            child.communicate(timeout=30)


def test_a_point_reached_from_python(tmp_path):
    marker = tmp_path / "marker"
    out = run("grow.created:kill", code="import fastalloc_shm._core as c; c.fault('grow.created'); print('alive')",
              marker=marker)
    assert out.returncode == -signal.SIGKILL and "alive" not in out.stdout
    assert marker.read_text().split()[1:] == ["grow.created", "1"]

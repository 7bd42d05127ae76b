"""The `fastalloc-shm` command line, run as real subprocesses (`python -m fastalloc_shm.cli`)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastalloc_shm import FixedPool, attach, cli, unlink

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "fastalloc_shm.cli"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # cwd=ROOT: `-m` imports the package of this checkout, installed or not.
    return subprocess.run([*COMMAND, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


def listed(*args: str) -> dict[str, dict]:
    return {entry["name"]: entry for entry in json.loads(ok("ls", "--json", *args))}


@pytest.fixture
def name(pool_name: str):
    """A pool name whose pool is removed after the test, whatever the CLI did with it."""
    yield pool_name
    unlink(pool_name)


def test_create_ls_stats_recover_rm_round_trip(name):
    assert "created fixed pool" in ok("create", name, "--capacity", "8", "--slot-size", "64")
    assert listed()[name] == {"name": name, "kind": "fixed", "slot_size": 64, "capacity": 8, "in_use": 0, "clients": 0,
                              "channels": {}}

    pool = attach(name)
    try:
        pool.allocate({"job": 1})
        stats = json.loads(ok("stats", name, "--json"))
        assert (stats["name"], stats["capacity"], stats["current_usage"], stats["total_allocations"]) == (name, 8, 1, 1)
        assert os.getpid() in [c["pid"] for c in stats["clients"]]
        assert listed()[name]["in_use"] == 1

        report = json.loads(ok("recover", name, "--json"))
        assert report["pool"] == name and report["dead_clients"] == []
    finally:
        pool.close()

    assert name in ok("rm", name)
    assert name not in listed()


@pytest.mark.parametrize("kind", ["fixed", "growing", "threadlocal", "threadsafe"])
def test_create_makes_the_kind_asked_for(name, kind):
    ok("create", name, "--kind", kind, "--capacity", "4", "--slot-size", "32")
    assert listed()[name]["kind"] == kind


def test_created_growing_pool_grows_up_to_max_capacity(name):
    ok("create", name, "--kind", "growing", "--capacity", "2", "--slot-size", "32", "--max-capacity", "5")
    pool = attach(name)
    try:
        pool.allocate_many(range(5))
        assert (pool.capacity, pool.try_allocate(5)) == (5, None)
    finally:
        pool.close()


def test_fixed_pool_with_max_capacity_is_refused(name):
    result = run_cli("create", name, "--capacity", "2", "--slot-size", "32", "--max-capacity", "5")
    assert result.returncode == 1 and "GrowingPool" in result.stderr


def test_human_output_is_a_table_and_a_report(name):
    ok("create", name, "--capacity", "10", "--slot-size", "128")
    header, *rows = ok("ls").splitlines()
    assert header.split()[:4] == ["NAME", "KIND", "SLOT", "CAPACITY"]
    assert [name, "fixed", "128", "10", "0", "0.0%", "0", "-"] in [row.split() for row in rows]  # "-": no channels
    assert "hit rate" in ok("stats", name)
    assert ok("recover", name, "--orphan-policy", "reclaim") == f"pool {name!r}: nothing to repair\n"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["create", "x", "--slot-size", "64"],
        ["create", "x", "--capacity", "0", "--slot-size", "64"],
        ["create", "x", "--capacity", "4", "--slot-size", "64", "--kind", "huge"],
        ["recover", "x", "--orphan-policy", "drop"],
        ["top", "--interval", "-1"],
        ["ls", "--cluster"],
        ["create", "x", "--capacity", "4", "--slot-size", "64", "--kind", "fixed", "--url", "redis://127.0.0.1:1"],
    ],
)
def test_bad_usage_exits_2(args):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["rm"], ["recover"]])
def test_missing_pool_exits_1_with_one_line(pool_name, command):
    result = run_cli(*command[:1], pool_name, *command[1:])
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and pool_name in result.stderr, result.stderr


def test_invalid_name_is_an_error_not_a_traceback():
    result = run_cli("create", "no/slashes", "--capacity", "4", "--slot-size", "64")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "ConfigError" in result.stderr


def test_top_once_shows_every_pool(make_name):
    names = [make_name(), make_name()]
    pools = [FixedPool.create(n, capacity=4, slot_size=32) for n in names]
    try:
        pools[0].allocate("x")
        lines = ok("top", "--once").rstrip().splitlines()
        assert lines[0].startswith("fastalloc-shm top") and "/dev/shm" in lines[0]
        pool_rows = lines[2:lines.index("", 2)] if "" in lines[2:] else lines[2:]  # the channels' table follows
        rows = {line.split()[0]: line.split() for line in pool_rows}
        assert rows[names[0]][1:5] == ["fixed", "32", "4", "1"]
        assert rows[names[1]][1:5] == ["fixed", "32", "4", "0"]
    finally:
        for pool in pools:
            pool.close()
            pool.unlink()


def test_top_without_a_terminal_prints_frames_until_ctrl_c(name):
    FixedPool.create(name, capacity=4, slot_size=32).close()
    top = subprocess.Popen([*COMMAND, "top", "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        top.send_signal(signal.SIGINT)
        out, _ = top.communicate(timeout=10)
    finally:
        top.kill()
    assert top.returncode == 0
    assert out.count("fastalloc-shm top") >= 2 and name in out


def test_top_on_a_terminal_draws_with_curses_and_quits_on_q(name):
    FixedPool.create(name, capacity=4, slot_size=32).close()
    controller, terminal = pty.openpty()
    top = subprocess.Popen([*COMMAND, "top", "--interval", "0.2"], cwd=ROOT, stdin=terminal, stdout=terminal,
                           stderr=terminal, env={**os.environ, "TERM": "xterm", "LINES": "40", "COLUMNS": "200"})
    os.close(terminal)
    screen = b""
    try:
        deadline = time.monotonic() + 15
        while name.encode() not in screen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                screen += os.read(controller, 65536)
        assert b"(q quits)" in screen and name.encode() in screen
        os.write(controller, b"q")
        while top.poll() is None and time.monotonic() < deadline:  # keep draining, or top blocks writing
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    os.read(controller, 65536)
                except OSError:  # EIO: top exited and closed the terminal
                    break
        assert top.wait(timeout=10) == 0
    finally:
        top.kill()
        top.wait()
        os.close(controller)


def test_bench_without_a_source_checkout_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "fastalloc_shm" / "cli.py"))
    assert cli.main(["bench"]) == 1
    assert "source checkout" in capsys.readouterr().err


def test_bench_runs_the_suite_with_the_same_interpreter(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command, cwd: calls.append((command, cwd)) or 0)
    assert cli.main(["bench", "--quick"]) == 0
    assert calls == [([sys.executable, "-m", "benchmarks", "--quick"], ROOT)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_acts_on_a_redis_pool(redis_url, pool_name):
    url = ["--url", redis_url]
    ok("create", pool_name, "--capacity", "8", "--slot-size", "64", *url)
    assert listed(*url)[pool_name]["capacity"] == 8
    assert pool_name not in listed()  # not in /dev/shm
    stats = json.loads(ok("stats", pool_name, "--json", *url))
    assert (stats["capacity"], stats["current_usage"]) == (8, 0)
    assert json.loads(ok("recover", pool_name, "--json", *url))["pool"] == pool_name
    assert pool_name in ok("top", "--once", *url)
    ok("rm", pool_name, *url)
    assert pool_name not in listed(*url)
    missing = run_cli("stats", pool_name, *url)
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1


def test_unreachable_redis_is_one_line_error(pool_name):
    result = run_cli("stats", pool_name, "--url", f"redis://127.0.0.1:{_free_port()}/0", timeout=60)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "127.0.0.1" in result.stderr, result.stderr

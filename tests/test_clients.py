"""Every program in clients/ run end to end as a real process, with small parameters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastalloc_shm import FixedPool, unlink

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "clients"
# A script's own folder comes first on its sys.path; the package comes from this checkout.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def client(script: str, *args: str) -> list[str]:
    return [sys.executable, str(CLIENTS / script), *args]


def run_client(script: str, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(client(script, *args), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pool_exists(name: str) -> bool:
    return f"fastalloc.{name}" in os.listdir("/dev/shm")


@pytest.fixture
def name(pool_name: str):
    """A pool name whose pool is removed after the test, should a client fail to remove it."""
    yield pool_name
    unlink(pool_name)


@pytest.mark.parametrize("script", sorted(p.name for p in CLIENTS.glob("*.py")))
def test_every_client_explains_itself(script):
    assert "usage:" in run_client(script, "--help")


def test_mp_workers_process_every_item_and_remove_the_pool(name):
    out = run_client("mp_workers.py", "--name", name, "--workers", "2", "--items", "300", "--capacity", "64")
    assert "300 items done by" in out  # by how many of the 2 workers depends on the scheduler
    assert "allocations" in out and "hit rate 1.0000" in out
    assert not pool_exists(name)


def test_typed_jobs_refuses_a_wrong_shape_and_returns_jobs_to_every_worker(name):
    out = run_client("typed_jobs.py", "--name", name, "--workers", "2", "--jobs", "300")
    assert "refused: cannot store dict: not a value of the pool's value_type" in out and "$.id" in out
    assert re.search(r"300 jobs done by [12] workers, 92,304,000 pixels", out), out
    assert not pool_exists(name) and not pool_exists(name + "-done")


def test_channel_workers_get_every_item_through_the_pool_and_remove_it(name):
    out = run_client("channel_workers.py", "--name", name, "--workers", "2", "--items", "300", "--capacity", "32")
    assert "300 items done by" in out and "62 primes below" not in out
    assert "'puts': 302" in out and "'gets': 302" in out and "'length': 0" in out  # 300 items, 2 stop marks
    assert not pool_exists(name)


@pytest.mark.parametrize("first", ["consumer.py", "producer.py"])
def test_producer_and_consumer_meet_by_name_whichever_starts_first(name, tmp_path, first):
    fifo = str(tmp_path / "handles.fifo")
    commands = {"consumer.py": client("consumer.py", "--name", name, "--fifo", fifo),
                "producer.py": client("producer.py", "--name", name, "--fifo", fifo, "--count", "500",
                                      "--capacity", "16")}
    second = "producer.py" if first == "consumer.py" else "consumer.py"
    processes = {}
    try:
        for script in (first, second):
            processes[script] = subprocess.Popen(commands[script], env=ENV, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True)
            # Each prints that it waits for the other before it blocks on the pipe.
            assert "waiting for a" in processes[script].stdout.readline()
        outputs = {script: p.communicate(timeout=60) for script, p in processes.items()}
    finally:
        for p in processes.values():
            p.kill()
            p.wait()
    assert [p.returncode for p in processes.values()] == [0, 0], outputs
    consumer_out, producer_out = outputs["consumer.py"][0], outputs["producer.py"][0]
    assert f"got and released 500 items from pool {name!r} (sum of seq {sum(range(500))})" in consumer_out
    assert "sent 500 items" in producer_out and "0 items still in use" in producer_out
    assert not pool_exists(name) and not os.path.exists(fifo)


def test_monitor_reports_clients_memory_and_statistics(name):
    with FixedPool.create(name, capacity=8, slot_size=64) as pool:
        pool.allocate_many(["a", "b", "c"])
        out = run_client("monitor.py", "--name", name, "--count", "1", "--interval", "0.1")
    assert f"pool {name!r}" in out
    mine = [line for line in out.splitlines() if line.split()[:2] == ["pid", str(os.getpid())]]
    assert len(mine) == 1 and "rss" in mine[0] and "uss" in mine[0]
    assert "(this monitor)" in out
    assert re.search(r"^in use +3 ", out, re.MULTILINE)

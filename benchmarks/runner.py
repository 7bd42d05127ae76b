"""Runs each system in a fresh spawned child, one after the other, and collects the rows.

Why a child per system: peers change process-wide state on import (UltraDict patches the
multiprocessing resource tracker, shared-memory-dict decides its lock at import), a
library under development may hang or crash, and a fresh interpreter gives every system
the same starting point. A child that overruns its time is stopped (SIGTERM runs its
``finally`` blocks, so its pools are unlinked) and, failing that, killed along with its
descendants; a final sweep removes any /dev/shm object carrying this run's tag.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback

import psutil

from . import headtohead, job, systems, workloads

SHM_DIR = "/dev/shm"
STOP_GRACE = 10.0  # seconds a timed-out child gets to clean up after SIGTERM


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally: pools get unlinked


def run_system(name: str, index: int, settings, conn) -> None:
    """(child) Run every step of ``name``'s plan, streaming messages to the parent."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    system = systems.BY_NAME[name]
    session = systems.Session(settings, index)
    try:
        try:
            systems.check_available(name, settings)
        except systems.Unavailable as exc:
            conn.send(("unavailable", str(exc)))
            return
        for label, step in workloads.plan(system, settings):
            try:
                for row in step(name, session):
                    conn.send(("row", row))
            except Exception as exc:
                conn.send(("error", label, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6)))
            conn.send(("step", label))
    finally:
        session.close()
        conn.send(("done",))
        conn.close()


def run_redis_pool(url: str, quick: bool, conn) -> None:
    """(child) Call benchmarks/redis_pool_bench.py's measure(url, quick) if it exists and imports."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if importlib.util.find_spec(f"{__package__}.redis_pool_bench") is None:
            conn.send(("unavailable", "benchmarks/redis_pool_bench.py is not present"))
            return
        from . import redis_pool_bench
    except Exception as exc:
        conn.send(("unavailable", f"redis_pool_bench does not import: {type(exc).__name__}: {exc}"))
        return
    try:
        rows = redis_pool_bench.measure(url, quick)
        conn.send(("rows", [dict(r) for r in rows]))
    except Exception as exc:
        conn.send(("error", "measure", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6)))
    finally:
        conn.close()


class Results:
    """Everything the report needs: rows, per-system status, RedisPool rows, cleanup notes."""

    def __init__(self):
        self.rows: list[dict] = []
        self.unavailable: dict[str, str] = {}
        self.errors: list[dict] = []
        self.redis_pool: list[dict] = []
        self.redis_pool_status = "not run"
        self.swept: list[str] = []
        self.job_unavailable: dict[str, str] = {}


def _stop(proc, descendants: list) -> None:
    """Stop a child: SIGTERM (it cleans up), then SIGKILL; then any descendant it left behind."""
    if proc.is_alive():
        proc.terminate()
        proc.join(STOP_GRACE)
    if proc.is_alive():
        proc.kill()
        proc.join()
    for d in descendants:
        try:
            d.kill()
        except psutil.Error:
            pass


def _run_child(target, args, timeout: float, on_message) -> str | None:
    """Run ``target(*args, conn)`` in a spawned child; feed its messages; return why it failed, if it did."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, send), daemon=False)
    proc.start()
    send.close()
    deadline = time.monotonic() + timeout
    descendants: list = []
    finished, failure = False, None
    try:
        while not finished:
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout:.0f} s"
                break
            if recv.poll(0.2):
                try:
                    msg = recv.recv()
                except EOFError:
                    break
                finished = msg[0] == "done"
                if not finished:
                    on_message(msg)
                continue
            if not proc.is_alive():
                break
            try:  # remembered so that a child killed on timeout takes its workers and Manager along
                descendants = psutil.Process(proc.pid).children(recursive=True) or descendants
            except psutil.Error:
                pass
    finally:
        proc.join(STOP_GRACE if failure is None else 0)
        _stop(proc, descendants)
    if failure is None and not finished and proc.exitcode not in (0, None):
        failure = f"process died (exit code {proc.exitcode})"
    return failure


def run_all(settings, names: list[str], progress) -> Results:
    """The head-to-head, then every named system in turn, then the RedisPool section; then sweep leftovers."""
    results = Results()
    headtohead.run(settings, names, results, progress)
    if JOB_SYSTEM in names:
        _run_job(settings, results, progress)
    for name in names:
        index = [s.name for s in systems.SYSTEMS].index(name)
        labels = [label for label, _ in workloads.plan(systems.BY_NAME[name], settings)]
        state = {"done": 0}
        progress.show(labels[0], name)

        def on_message(msg, name=name, state=state, labels=labels):
            kind = msg[0]
            if kind == "row":
                results.rows.append(msg[1])
            elif kind == "step":
                state["done"] += 1
                progress.advance(labels[state["done"]] if state["done"] < len(labels) else "done", name)
            elif kind == "error":
                results.errors.append({"system": name, "step": msg[1], "error": msg[2], "traceback": msg[3]})
            elif kind == "unavailable":
                results.unavailable[name] = msg[1]
                progress.note(f"{name}: unavailable — {msg[1]}")

        failure = _run_child(run_system, (name, index, settings), settings.system_timeout, on_message)
        if failure:
            results.errors.append({"system": name, "step": "(process)", "error": failure, "traceback": ""})
            progress.note(f"{name}: {failure}")
        if state["done"] < len(labels):
            progress.advance("skipped", name, steps=len(labels) - state["done"])

    _run_redis_pool(settings, results, progress)
    results.swept = sweep(settings.run_tag)
    return results


JOB_SYSTEM = "FixedPool"  # the job (job.py) runs when the library is measured


def _run_job(settings, results: Results, progress) -> None:
    """The users' job: every transport, in this process (each repetition spawns its own three)."""
    got = job.run(settings.quick, settings.redis_url, settings.run_tag,
                  progress=lambda label: progress.advance(label, "job"))
    results.rows += got["rows"]
    results.errors += got["errors"]
    results.job_unavailable = got["unavailable"]


def _run_redis_pool(settings, results: Results, progress) -> None:
    if not settings.redis_url:
        results.redis_pool_status = "skipped: no redis server"
        progress.advance("skipped", "RedisPool")
        return
    progress.show("measure", "RedisPool")

    def on_message(msg):
        if msg[0] == "rows":
            results.redis_pool = msg[1]
            results.redis_pool_status = "ok"
        elif msg[0] == "unavailable":
            results.redis_pool_status = f"skipped: {msg[1]}"
        elif msg[0] == "error":
            results.redis_pool_status = f"error: {msg[2]}"
            results.errors.append({"system": "RedisPool", "step": msg[1], "error": msg[2], "traceback": msg[3]})

    failure = _run_child(run_redis_pool, (settings.redis_url, settings.quick), settings.system_timeout, on_message)
    if failure:
        results.redis_pool_status = f"error: {failure}"
    progress.advance("done", "RedisPool")


def sweep(run_tag: str) -> list[str]:
    """Remove /dev/shm objects of this run that a crashed or killed child left; return their names.

    Normally empty: every step unlinks what it made. A non-empty list is reported as a bug.
    """
    token = f"{run_tag}-"
    swept = []
    for entry in sorted(os.listdir(SHM_DIR)):
        if token not in entry:
            continue
        path = os.path.join(SHM_DIR, entry)
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            swept.append(entry)
        except OSError as exc:
            print(f"could not remove {path}: {exc}", file=sys.stderr)
    return swept

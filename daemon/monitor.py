"""The monitor loop: client liveness, repair after deaths, samples and warnings.

Every `interval` seconds it
1. forgets registered clients that died (pid gone, a zombie, or reused by a
   newer process) and runs `recover()` on the pools they named, waiting at
   most REPAIR_WAIT for a pool's lock: a pool whose lock holder is stopped is
   tried again on the next pass, and nothing a request needs is held meanwhile;
2. runs `recover()` on any pool whose client table lists a dead process, so
   clients that never registered are repaired after too (their magazines of
   cached slots go back to the free list);
3. takes a Snapshot for the metrics endpoint: per-pool statistics,
   per-client RSS/USS (psutil), `/dev/shm` space;
4. logs warnings once when a condition starts, and once when it ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

import psutil

from fastalloc_shm import _admin
from fastalloc_shm.errors import FastallocError
from fastalloc_shm.stats import PoolStatistics

from .registry import PoolSample, Registry

log = logging.getLogger("fastalloc_shmd")
LOW_HIT_RATE = 0.95
LOW_PEAK_RATIO = 0.5
LOW_SHM_FREE_RATIO = 0.10
# A low peak says nothing about a pool that has barely been used: judge it
# only after this many allocations (or one capacity's worth, if smaller).
MIN_TRAFFIC = 1000
# Seconds the monitor waits for one pool's lock before leaving it for the next pass.
REPAIR_WAIT = 0.25


@dataclass(frozen=True)
class ClientSample:
    """Memory of one client process; `uss` is None when /proc/PID/smaps is not readable to the daemon."""

    pid: int
    name: str
    rss: int
    uss: int | None
    pools: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """What one monitor pass saw; the metrics endpoint renders the latest one."""

    time: float
    pools: tuple[PoolSample, ...]
    clients: tuple[ClientSample, ...]
    shm_total: int
    shm_free: int
    dead_clients: int
    """Dead client processes found since the daemon started (registered or in a client table)."""
    recoveries: int
    """recover() calls by the monitor that repaired something, since start."""


def pool_warnings(stats: PoolStatistics) -> dict[str, str]:
    """The capacity advice that applies to a pool now, by condition."""
    active = {}
    if stats.total_allocations + stats.allocation_failures and stats.hit_rate() < LOW_HIT_RATE:
        active["low_hit_rate"] = (
            f"hit rate {stats.hit_rate():.3f} < {LOW_HIT_RATE} ({stats.allocation_failures} allocations failed):"
            f" increase capacity (now {stats.capacity})"
        )
    seen_traffic = stats.total_allocations >= min(MIN_TRAFFIC, stats.capacity)
    if seen_traffic and stats.peak_usage < LOW_PEAK_RATIO * stats.capacity:
        active["low_peak"] = (
            f"peak usage {stats.peak_usage} is under {LOW_PEAK_RATIO:.0%} of capacity {stats.capacity}:"
            " consider reducing capacity"
        )
    return active


def shm_warnings(total: int, free: int) -> dict[str, str]:
    """The `/dev/shm` space warning, when free space is under 10%."""
    if total and free < LOW_SHM_FREE_RATIO * total:
        return {"low_shm": (
            f"{_admin.SHM_DIR} has {free / 2**20:.1f} MiB free of {total / 2**20:.1f} MiB (under"
            f" {LOW_SHM_FREE_RATIO:.0%}): raise its size (docker --shm-size / compose shm_size, emptyDir sizeLimit)"
            " or remove unused pools (`fastalloc-shm ls`)"
        )}
    return {}


class Warnings:
    """Logs a condition when it starts and when it clears, never on every pass."""

    def __init__(self) -> None:
        self._active: dict[str, set[str]] = {}

    def update(self, scope: str, active: dict[str, str]) -> None:
        """Set the conditions now true for `scope` (a pool name, or "/dev/shm")."""
        before = self._active.get(scope, set())
        for key in active.keys() - before:
            log.warning("%s: %s", scope, active[key])
        for key in before - active.keys():
            log.info("%s: %s no longer applies", scope, key.replace("_", " "))
        self._active[scope] = set(active)

    def retain(self, scopes: set[str]) -> None:
        """Forget scopes that are gone (destroyed pools), silently."""
        self._active = {scope: keys for scope, keys in self._active.items() if scope in scopes}


class Monitor:
    """The loop, in a background thread; `latest` is the last Snapshot (None before the first pass)."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self.latest: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warnings = Warnings()
        # (pool, pid) of dead table entries already repaired, so a table that
        # keeps listing a dead pid does not trigger a recover() every pass.
        self._handled: set[tuple[str, int]] = set()
        self._dead_clients = 0
        self._recoveries = 0
        # Pools whose repair waits for a busy lock (logged once until it succeeds).
        self._busy: set[str] = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fastalloc-shmd-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass (bounded wait)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 10.0)

    def _run(self) -> None:
        while True:
            try:
                self.latest = self.tick()
            except Exception:
                log.exception("monitor: pass failed; trying again in %s s", self.interval)
            if self._stop.wait(self.interval):
                return

    def tick(self) -> Snapshot:
        """One pass; see the module docstring."""
        suspects: dict[str, set[int]] = {}
        for client in self.registry.pop_dead_clients():
            log.info("registered client pid %d is gone; checking %s", client.pid, ", ".join(sorted(client.pools)))
            for name in client.pools:
                suspects.setdefault(name, set()).add(client.pid)
        samples = self.registry.sample()
        dead_in_tables = {(s.name, c.pid) for s in samples for c in s.clients if not c.alive}
        for name, pid in dead_in_tables - self._handled:
            suspects.setdefault(name, set()).add(pid)
        self._dead_clients += len(set().union(*suspects.values()))
        if suspects:
            self._repair(suspects)
            samples = self.registry.sample()
            dead_in_tables = {(s.name, c.pid) for s in samples for c in s.clients if not c.alive}
        self._handled &= dead_in_tables
        usage = shutil.disk_usage(_admin.SHM_DIR)
        for sample in samples:
            self._warnings.update(sample.name, pool_warnings(sample.stats))
        self._warnings.update(_admin.SHM_DIR, shm_warnings(usage.total, usage.free))
        self._warnings.retain({s.name for s in samples} | {_admin.SHM_DIR})
        return Snapshot(time.time(), tuple(samples), tuple(self._client_samples(samples)), usage.total, usage.free,
                        self._dead_clients, self._recoveries)

    def _repair(self, suspects: dict[str, set[int]]) -> None:
        for name, pids in sorted(suspects.items()):
            started = time.monotonic()
            try:
                report = self.registry.try_recover(name, REPAIR_WAIT)
            except (FastallocError, OSError) as exc:
                log.error("pool %r: recovery after dead pid(s) %s failed, will retry: %s", name, sorted(pids), exc)
                continue
            if report is None:
                if name not in self._busy:
                    log.warning("pool %r: its lock is held by a live process (stopped?); recovery after dead pid(s)"
                                " %s is retried every pass", name, ", ".join(map(str, sorted(pids))))
                    self._busy.add(name)
                continue
            self._busy.discard(name)
            self._handled.update((name, pid) for pid in pids)
            if report.repaired:
                self._recoveries += 1
            log.log(logging.WARNING if report.repaired else logging.INFO, "%s (after dead pid(s) %s, %.1f ms)",
                    report, ", ".join(map(str, sorted(pids))), (time.monotonic() - started) * 1e3)

    def _client_samples(self, samples: list[PoolSample]) -> list[ClientSample]:
        """RSS/USS of every live client, registered or found in a pool's client table (the daemon excluded)."""
        pools: dict[int, set[str]] = self.registry.clients()
        for sample in samples:
            for client in sample.clients:
                if client.alive:
                    pools.setdefault(client.pid, set()).add(sample.name)
        pools.pop(os.getpid(), None)
        result = []
        for pid, names in sorted(pools.items()):
            try:
                process = psutil.Process(pid)
                with process.oneshot():
                    name = process.name()
                    try:
                        memory = process.memory_full_info()
                        rss, uss = memory.rss, memory.uss
                    except psutil.AccessDenied:
                        rss, uss = process.memory_info().rss, None
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            result.append(ClientSample(pid, name, rss, uss, tuple(sorted(names))))
        return result

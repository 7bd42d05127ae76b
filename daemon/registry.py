"""The pools the daemon manages and the client processes registered with it.

The control server's connection threads and the monitor thread share the
pool objects. The registry's lock guards the tables and is held only for
quick work (lock-free reads of counters and client tables); anything that may
wait on a pool's own lock (recover) runs outside it, under that pool's `busy`
lock, so a stopped lock holder of one pool never stalls the socket. Closing a
pool takes its `busy` lock too, so no pool object is closed while in use.

A managed pool is either *owned* (declared in the config or created through
the `create` op: unlinked when the daemon stops, unless `persist`) or merely
*watched* (a pool a registered client uses: the daemon repairs it after dead
clients but never unlinks it).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from fastalloc_shm import _admin, _names, attach, unlink
from fastalloc_shm._admin import AnyPool, ClientInfo
from fastalloc_shm.errors import FastallocError, IncompatiblePool, PoolExistsError, PoolNotFound
from fastalloc_shm.kinds import POOL_KINDS
from fastalloc_shm.report import RecoveryReport
from fastalloc_shm.stats import PoolStatistics

from .config import DaemonConfig, PoolSpec

log = logging.getLogger("fastalloc_shmd")


@dataclass
class Managed:
    """One pool held open by the daemon, and what the daemon did to it."""

    pool: AnyPool
    spec: PoolSpec
    owned: bool
    inode: int | None
    """Of the segment opened: a later pool of the same name is not this one."""
    declared: bool = False
    recoveries: int = 0
    last_recovery: dict[str, Any] | None = None
    busy: threading.Lock = field(default_factory=threading.Lock)
    """Held while the pool object is used outside the registry lock, or closed."""

    def close(self) -> None:
        with self.busy:
            self.pool.close()


@dataclass
class Client:
    """A process that registered itself; `start_ticks` tells it from a later process with its pid."""

    pid: int
    start_ticks: int
    pools: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PoolSample:
    """One pool as the monitor saw it: its counters and its client table."""

    name: str
    kind: str
    stats: PoolStatistics
    clients: tuple[ClientInfo, ...]


class Registry:
    """Pools and clients of one daemon; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pools: dict[str, Managed] = {}
        self._clients: dict[int, Client] = {}

    def apply(self, config: DaemonConfig, *, strict: bool) -> None:
        """Open the pools `config` declares that are not open yet, and say what else changed.

        A pool no longer declared is kept (clients may still hold handles
        into it) and logged; a declared pool whose settings changed keeps its
        live shape, since a segment cannot be reshaped under its users.
        With `strict`, the first pool that cannot be opened raises; otherwise
        it is logged and the rest applied (a reload must not stop the daemon).
        """
        with self._lock:
            for spec in config.pools.values():
                current = self._pools.get(spec.name)
                try:
                    if current is None:
                        self._open(spec, exist_ok=True, declared=True)
                    else:
                        self._adopt(current, spec)
                except (FastallocError, OSError) as exc:
                    if strict:
                        raise
                    log.error("pool %r from %s not opened: %s", spec.name, config.source, exc)
            for name, managed in self._pools.items():
                if managed.declared and name not in config.pools:
                    managed.declared = False
                    log.warning(
                        "pool %r was removed from %s: kept as it is (clients may still use it) and %s at stop;"
                        " remove it now with `fastalloc-shm rm %s` or DaemonClient().destroy(%r)",
                        name, config.source, "kept" if managed.spec.persist else "unlinked", name, name,
                    )

    def create(self, spec: PoolSpec, *, exist_ok: bool) -> dict[str, Any]:
        """The `create` op: open a pool the daemon owns."""
        with self._lock:
            current = self._pools.get(spec.name)
            if current is not None:
                if not exist_ok:
                    raise PoolExistsError(f"pool {spec.name!r} exists (managed by this daemon); pass exist_ok=True")
                if current.pool.kind != spec.kind:
                    raise IncompatiblePool(f"pool {spec.name!r} is a {current.pool.kind} pool, not {spec.kind}")
                return self._info(spec.name, current)
            return self._info(spec.name, self._open(spec, exist_ok=exist_ok, declared=False))

    def destroy(self, name: str) -> None:
        """The `destroy` op: unlink pool `name`, managed or not."""
        with self._lock:
            managed = self._pools.pop(name, None)
            if managed is None and name not in _admin.list_pools():
                raise PoolNotFound(f"no pool named {name!r} on this machine")
            for client in self._clients.values():
                client.pools.discard(name)
        if managed is not None:
            managed.close()
        unlink(name)
        log.info("pool %r destroyed on request", name)

    def register(self, pid: int, names: list[str]) -> dict[str, Any]:
        """The `register` op: watch `pid` and repair `names` if it dies."""
        started = _admin.start_ticks(pid)
        if not started or not _admin.process_alive(pid, started):
            raise FastallocError(f"pid {pid} is not a running process; register a live one")
        with self._lock:
            new = [name for name in names if name not in self._pools]
        opened = {}
        try:
            for name in new:  # outside the registry lock: attach may wait for a pool's creator
                opened[name] = attach(name)
        except BaseException:
            for pool in opened.values():
                pool.close()
            raise
        with self._lock:
            for name, pool in opened.items():
                if name in self._pools:
                    pool.close()  # another request opened it meanwhile
                    continue
                self._pools[name] = Managed(pool, PoolSpec(name, pool.kind, pool.config), False, _inode(name))
                log.info("watching pool %r (used by pid %d)", name, pid)
            client = self._clients.get(pid)
            if client is None or not _admin.process_alive(pid, client.start_ticks):
                client = self._clients[pid] = Client(pid, started)
            client.pools.update(names)
            return {"pid": pid, "pools": sorted(client.pools)}

    def names(self) -> list[str]:
        """Names of the managed pools."""
        with self._lock:
            return sorted(self._pools)

    def list(self) -> list[dict[str, Any]]:
        """The `list` op."""
        with self._lock:
            return [self._info(name, managed) for name, managed in sorted(self._pools.items())]

    def stats(self, name: str) -> dict[str, Any]:
        """The `stats` op for one pool: counters, derived rates, client table, daemon repairs."""
        with self._lock:
            managed = self._get(name)
            stats = managed.pool.statistics()
            return {
                **stats.to_dict(),
                "hit_rate": stats.hit_rate(),
                "utilization_rate": stats.utilization_rate(),
                "peak_utilization_rate": stats.peak_utilization_rate(),
                "clients": [{"pid": c.pid, "state": c.state, "alive": c.alive} for c in managed.pool.clients()],
                "recovered_by_daemon": managed.recoveries,
                "last_recovery": managed.last_recovery,
            }

    def stats_all(self) -> dict[str, dict[str, Any]]:
        """The `stats` op without a name: every managed pool's."""
        with self._lock:
            return {name: self.stats(name) for name in sorted(self._pools)}

    def recover(self, name: str, orphan_policy: str | None = None) -> RecoveryReport:
        """The `recover` op: `recover()` on pool `name` (waiting up to its lock_timeout), counting repairs."""
        with self._lock:
            managed = self._get(name)
        with managed.busy:
            if self._pools.get(name) is not managed:
                raise PoolNotFound(f"pool {name!r} was destroyed meanwhile")
            report = managed.pool.recover(orphan_policy=orphan_policy)
        self._count(managed, report)
        return report

    def try_recover(self, name: str, wait_s: float) -> RecoveryReport | None:
        """For the monitor: `recover()` on pool `name` if its lock (and the pool object) are free within
        `wait_s`; None when busy, to be tried on a later pass. The registry lock is not held meanwhile."""
        with self._lock:
            managed = self._get(name)
        if not managed.busy.acquire(timeout=wait_s):
            return None
        try:
            if self._pools.get(name) is not managed:
                return None
            report = _admin.try_recover(managed.pool, wait_s)
        finally:
            managed.busy.release()
        if report is not None:
            self._count(managed, report)
        return report

    def _count(self, managed: Managed, report: RecoveryReport) -> None:
        if report.repaired:
            with self._lock:
                managed.recoveries += 1
                managed.last_recovery = report.to_dict()

    def recover_all(self, orphan_policy: str | None = None) -> list[RecoveryReport]:
        """The `recover` op without a name: every managed pool."""
        return [self.recover(name, orphan_policy) for name in self.names()]

    def sample(self) -> list[PoolSample]:
        """Counters and client tables of every managed pool, for the monitor."""
        samples = []
        with self._lock:
            gone = self._forget_replaced()
            for name, managed in sorted(self._pools.items()):
                try:
                    samples.append(PoolSample(name, managed.pool.kind, managed.pool.statistics(),
                                              tuple(managed.pool.clients())))
                except (FastallocError, OSError) as exc:
                    log.error("pool %r cannot be read: %s", name, exc)
        for managed in gone:
            managed.close()
        return samples

    def clients(self) -> dict[int, set[str]]:
        """Registered pids and the pools each uses."""
        with self._lock:
            return {pid: set(client.pools) for pid, client in self._clients.items()}

    def pop_dead_clients(self) -> list[Client]:
        """Forget the registered clients that have died, and return them."""
        with self._lock:
            dead = [c for c in self._clients.values() if not _admin.process_alive(c.pid, c.start_ticks)]
            for client in dead:
                del self._clients[client.pid]
            return dead

    def close(self) -> None:
        """Stop: unmap every pool; unlink the owned ones that do not persist."""
        with self._lock:
            for name, managed in self._pools.items():
                try:
                    managed.close()
                    if managed.owned and not managed.spec.persist and _inode(name) == managed.inode:
                        unlink(name)
                        log.info("pool %r unlinked", name)
                    elif managed.owned:
                        log.info("pool %r persists (persist = true)", name)
                except (FastallocError, OSError) as exc:
                    log.error("pool %r: %s", name, exc)
            self._pools.clear()

    def _open(self, spec: PoolSpec, *, exist_ok: bool, declared: bool) -> Managed:
        pool = POOL_KINDS[spec.kind].create(spec.name, config=spec.config, exist_ok=exist_ok)
        managed = self._pools[spec.name] = Managed(pool, spec, True, _inode(spec.name), declared=declared)
        log.info("pool %r ready: %s, %d slots of %d B%s", spec.name, spec.kind, pool.capacity, pool.slot_size,
                 ", persists" if spec.persist else "")
        return managed

    def _adopt(self, managed: Managed, spec: PoolSpec) -> None:
        """Take a running pool under a (re)declared spec: persist applies now, the shape does not."""
        if (managed.spec.kind, managed.spec.config) != (spec.kind, spec.config) and managed.owned:
            log.warning(
                "pool %r: new settings in the config are not applied to the live pool; destroy it"
                " (`fastalloc-shm rm %s`) and reload to recreate it with them", spec.name, spec.name,
            )
        managed.spec = PoolSpec(spec.name, managed.spec.kind, managed.spec.config, spec.persist)
        managed.owned = managed.declared = True

    def _forget_replaced(self) -> list[Managed]:
        """Let go of pools someone else unlinked (e.g. `fastalloc-shm rm`), so stop never unlinks a successor;
        the caller closes them once it no longer holds the registry lock."""
        gone = []
        for name, managed in list(self._pools.items()):
            if _inode(name) != managed.inode:
                log.warning("pool %r was unlinked by another process; the daemon lets go of it", name)
                gone.append(self._pools.pop(name))
        return gone

    def _get(self, name: str) -> Managed:
        managed = self._pools.get(name)
        if managed is None:
            raise PoolNotFound(f"fastalloc-shmd does not manage a pool named {name!r}; see the `list` op")
        return managed

    @staticmethod
    def _info(name: str, managed: Managed) -> dict[str, Any]:
        pool = managed.pool
        return {
            "name": name,
            "kind": pool.kind,
            "capacity": pool.capacity,
            "slot_size": pool.slot_size,
            "in_use": len(pool),
            "owned": managed.owned,
            "persist": managed.spec.persist,
            "declared": managed.declared,
        }


def _inode(name: str) -> int | None:
    """Inode of pool `name`'s main segment in /dev/shm (None: there is none)."""
    try:
        return os.stat(os.path.join(_names.SHM_DIR, _names.segment(name).lstrip("/"))).st_ino
    except FileNotFoundError:
        return None

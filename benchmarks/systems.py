"""Every system the benchmark compares, and how to create or attach one as a store.

A *store* is anything with ``allocate, get, set, release, allocate_many, release_many``
callables, ``max_live``, ``worker_spec()`` and ``close()`` (see peers.py). ``create_store``
runs in the process that owns the data; ``attach_store`` in a worker, given the owner's
``worker_spec()``.
"""

from __future__ import annotations

import itertools
import multiprocessing
from dataclasses import dataclass

from . import compiled, library, peers
from .floor import FloorPool
from .values import SLOT_SIZES, VALUES


@dataclass(frozen=True)
class System:
    """One row of the results: ``group`` is library, floor, peer or reference."""

    name: str
    group: str
    shared: bool = True  # False: nothing crosses a process (the plain dict)
    multiprocess: bool = True  # False: unsafe with more than one process
    store: bool = True  # False: no handles to keep; it runs the cycle only (iceoryx2)
    note: str = ""


SYSTEMS: tuple[System, ...] = (
    System("FixedPool", "library"),
    System("GrowingPool", "library", note="steady state: capacity never exceeded"),
    System("ThreadLocalPool", "library"),
    System("ThreadSafePool", "library"),
    System("floor-c", "floor", note="the compiled floor (floor_c.c): robust mutex, free stack, memcpy; no batch call"),
    System("floor-py", "floor", note="the least a pool in Python costs (floor.py), semaphore-guarded"),
    System("Manager().dict", "peer", note="multiprocessing.Manager().dict(): a round trip to the manager per op"),
    System("UltraDict", "peer", note="get returns its process-local cached object: no deserialization, no copy"),
    System("shared-memory-dict", "peer", note="pickles the whole dict per write; loses updates across processes"),
    System("LMDB", "peer", note="in /dev/shm, sync off, writemap"),
    System("Redis", "peer", note="redis-py over a unix socket"),
    System("iceoryx2", "peer", multiprocess=False, store=False,
           note="publish-subscribe of Slice[c_uint8] in one process: loan, write, send, receive, drop"),
    System("dict (Box)", "reference", shared=False, note="a plain dict in one process: what sharing costs"),
)
BY_NAME = {s.name: s for s in SYSTEMS}
POOL_CAPACITY = 10_000


class Session:
    """Per-process resources of one system's run: unique names, a lazily started Manager."""

    def __init__(self, settings, index: int):
        self.settings = settings
        self._prefix = f"{settings.run_tag}-{index}"
        self._counter = itertools.count()
        self._manager = None

    def name(self) -> str:
        """A fresh object name carrying the run tag (so a final sweep can find leftovers)."""
        return f"{self._prefix}-{next(self._counter)}"

    def manager(self):
        if self._manager is None:
            # fork: this process is single-threaded, and forked workers inherit the proxies.
            self._manager = multiprocessing.get_context("fork").Manager()
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None


class FloorCStore:
    """The compiled floor as a store: its C methods are the callables, so nothing else is timed.

    ``packed``: values go through msgpack (called from C), as the pools' do; else they are bytes.
    It has no batch call: the batch callables are loops of single calls.
    """

    max_live = None
    PREFIX = "/fabench-floorc-"

    def __init__(self, name: str, pool, packed: bool, owner: bool):
        self.name, self.pool, self.packed, self.owner = name, pool, packed, owner
        self.allocate, self.get, self.set, self.release = pool.allocate, pool.get, pool.set, pool.release
        alloc, rel = pool.allocate, pool.release

        def allocate_many(values):
            return [alloc(v) for v in values]

        def release_many(handles):
            for h in handles:
                rel(h)

        self.allocate_many, self.release_many = allocate_many, release_many

    @staticmethod
    def _codec(packed: bool) -> dict:
        import msgpack

        return {"packb": msgpack.packb, "unpackb": msgpack.unpackb} if packed else {}

    @classmethod
    def create(cls, name: str, capacity: int, slot_size: int, packed: bool) -> FloorCStore:
        pool = compiled.load().open(cls.PREFIX + name, capacity, slot_size, **cls._codec(packed))
        return cls(name, pool, packed, owner=True)

    @classmethod
    def attach(cls, spec) -> FloorCStore:
        name, packed = spec
        return cls(name, compiled.load().open(cls.PREFIX + name, **cls._codec(packed)), packed, owner=False)

    def worker_spec(self):
        return (self.name, self.packed)

    def close(self) -> None:
        self.pool.close()
        if self.owner:
            compiled.load().unlink(self.PREFIX + self.name)


class FloorStore:
    """floor-py as a store."""

    max_live = None

    def __init__(self, pool: FloorPool):
        self.pool = pool
        self.allocate, self.get, self.set, self.release = pool.allocate, pool.get, pool.set, pool.release
        self.allocate_many, self.release_many = pool.allocate_many, pool.release_many

    def worker_spec(self):
        return self.pool.name

    def close(self) -> None:
        try:
            if self.pool.owner:
                self.pool.unlink()
        finally:
            self.pool.close()


def create_store(system: str, session: Session, kind: str, capacity: int = POOL_CAPACITY):
    """Create an empty store of ``system`` sized for values of ``kind`` (a key of values.VALUES).

    iceoryx2 is no store: it gives an object whose ``rep_cycle(value, n)`` runs the cycle.
    """
    slot, raw = SLOT_SIZES[kind], isinstance(VALUES[kind], bytes)
    if system in library.KINDS:
        return library.PoolStore.create(system, session.name(), capacity, slot)
    if system == "floor-c":
        return FloorCStore.create(session.name(), capacity, slot, packed=not raw)
    if system == "floor-py":
        return FloorStore(FloorPool.create(session.name(), capacity, slot))
    if system == "Manager().dict":
        return peers.ManagerStore(session.manager().dict())
    if system == "UltraDict":
        return peers.UltraDictStore.create(f"fabench-ud-{session.name()}", slot)
    if system == "shared-memory-dict":
        return peers.SharedMemoryDictStore.create(f"fabench-smd-{session.name()}", slot)
    if system == "LMDB":
        return peers.LMDBStore.create(f"fabench-lmdb-{session.name()}", raw=raw)
    if system == "Redis":
        if not session.settings.redis_url:
            raise Unavailable("no redis server (redis-server not found and no --redis-url)")
        return peers.RedisStore.create(session.settings.redis_url, session.name(), raw=raw)
    if system == "iceoryx2":
        return peers.Iceoryx2Peer(f"fabench/{session.name()}", slot, raw=raw)
    if system == "dict (Box)":
        return peers.DictStore()
    raise KeyError(system)


def attach_store(system: str, spec, worker_id: int):
    """Reach the data of a store from another process (``spec`` = the owner's worker_spec())."""
    if system in library.KINDS:
        return library.PoolStore.attach(spec, worker_id)
    if system == "floor-c":
        return FloorCStore.attach(spec)
    if system == "floor-py":
        return FloorStore(FloorPool.attach(spec))
    if system == "Manager().dict":
        return peers.ManagerStore(spec, worker_id)
    if system == "UltraDict":
        return peers.UltraDictStore.attach(spec, worker_id)
    if system == "shared-memory-dict":
        return peers.SharedMemoryDictStore.attach(spec, worker_id)
    if system == "LMDB":
        return peers.LMDBStore.attach(spec, worker_id)
    if system == "Redis":
        return peers.RedisStore.attach(spec, worker_id)
    if system == "dict (Box)":
        return peers.DictStore(worker_id)  # nothing to share: each process has its own
    raise KeyError(system)


def read_spec(store):
    """The spec a *spawned* read-only worker attaches with (by name wherever possible)."""
    return store.read_spec() if hasattr(store, "read_spec") else store.worker_spec()


class Unavailable(Exception):
    """A system cannot run here (missing package or server); the reason goes into the report."""


def check_available(system: str, settings=None) -> None:
    """Raise Unavailable if ``system`` cannot run here (import it; with ``settings``, find its server)."""
    imports = {
        "floor-c": compiled.load,  # builds it on first use; BuildError says what is missing
        "iceoryx2": lambda: __import__("iceoryx2"),
        "UltraDict": lambda: __import__("UltraDict"),
        "shared-memory-dict": peers.SharedMemoryDictStore._module,  # sets its lock switch first
        "LMDB": lambda: __import__("lmdb"),
        "Redis": lambda: __import__("redis"),
    }
    for kind in library.KINDS:
        imports[kind] = lambda kind=kind: library.pool_class(kind)
    try:
        imports.get(system, lambda: None)()
    except compiled.BuildError as exc:
        raise Unavailable(f"cannot build the compiled floor: {exc}") from exc
    except Exception as exc:  # a library mid-rewrite may fail with anything, not only ImportError
        raise Unavailable(f"cannot import: {type(exc).__name__}: {exc}") from exc
    if system == "Redis" and settings is not None and not settings.redis_url:
        raise Unavailable("no redis server (redis-server not found and no --redis-url)")

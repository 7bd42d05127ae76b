"""The peers a user would pick instead of a pool, each mapped onto the pool's four operations.

The mapping (also in README.md): allocate = insert the value under a new key, get = read by
key, set = overwrite, release = delete; batches use the peer's own bulk call where it has
one. Keys come from a counter local to each process (disjoint ranges per worker), so peers
get unique keys for free: no shared free list, no server round trip for a key. That favours
the peers, which is the safe direction for a "N times faster" claim.

Values are serialized the way a user of each peer would: Manager, UltraDict and
shared-memory-dict pickle internally; LMDB and Redis store bytes, so we msgpack them (the
same codec as the pool); a plain dict stores the object itself.

Each store exposes ``allocate, get, set, release, allocate_many, release_many`` as plain
callables, ``max_live`` (how many live values it may hold here, None = no limit),
``worker_spec()`` (what another process needs to reach the same data) and ``close()``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct

import msgpack

SHM_DIR = "/dev/shm"
# Keys handed out by different processes never collide: each worker counts in its own range.
_KEY_RANGE = 1 << 40


class _CounterStore:
    """Shared plumbing: a key counter, and close() as a no-op unless a subclass owns something."""

    max_live: int | None = None

    def __init__(self, worker_id: int = 0):
        self._keys = itertools.count(worker_id * _KEY_RANGE)

    def close(self) -> None:
        """Release what this process holds (the creator also removes the data)."""


class DictStore(_CounterStore):
    """A plain dict in this process: the 'Box' comparison, what sharing nothing costs."""

    def __init__(self, worker_id: int = 0):
        super().__init__(worker_id)
        d: dict = {}
        keys = self._keys

        def allocate(value):
            k = next(keys)
            d[k] = value
            return k

        def allocate_many(values):
            ks = list(itertools.islice(keys, len(values)))
            d.update(zip(ks, values, strict=True))
            return ks

        def release_many(ks):
            for k in ks:
                del d[k]

        self.allocate, self.get, self.set, self.release = allocate, d.__getitem__, d.__setitem__, d.__delitem__
        self.allocate_many, self.release_many = allocate_many, release_many

    def worker_spec(self) -> None:
        return None


class _MappingStore(_CounterStore):
    """A peer with the dict protocol (Manager proxy, UltraDict, SharedMemoryDict)."""

    def __init__(self, mapping, worker_id: int = 0):
        super().__init__(worker_id)
        self.mapping = m = mapping
        keys = self._keys
        setitem = m.__setitem__

        def allocate(value):
            k = next(keys)
            setitem(k, value)
            return k

        def allocate_many(values):
            ks = list(itertools.islice(keys, len(values)))
            m.update(dict(zip(ks, values, strict=True)))  # the peer's one bulk write
            return ks

        def release_many(ks):
            # None of these peers has a bulk delete in its public API.
            delete = m.__delitem__
            for k in ks:
                delete(k)

        self.allocate, self.get, self.set, self.release = allocate, m.__getitem__, setitem, m.__delitem__
        self.allocate_many, self.release_many = allocate_many, release_many


class ManagerStore(_MappingStore):
    """multiprocessing.Manager().dict(): every operation is a round trip to the manager process."""

    def worker_spec(self):
        return self.mapping  # a proxy: inherited by fork, pickled (with authkey) by spawn


class UltraDictStore(_MappingStore):
    """UltraDict: a local dict mirrored through a shared-memory update stream.

    Its ``get`` returns the cached local object (no deserialization, no copy) once the
    stream is applied. The default buffer (10 kB) would force a full dump of the whole dict
    every few writes, so the stream gets 4 MiB and the full dump a fixed, named segment
    (named so that cleanup can find it).
    """

    max_live = 2000
    BUFFER = 4 << 20

    def __init__(self, ud, owner: bool, worker_id: int = 0, inherited: bool = False):
        super().__init__(ud, worker_id)
        self.owner, self.inherited = owner, inherited

    @classmethod
    def create(cls, name: str, value_size: int) -> UltraDictStore:
        from UltraDict import UltraDict

        dump = cls.max_live * (value_size + 128) + (1 << 20)
        ud = UltraDict(name=name, create=True, buffer_size=cls.BUFFER, full_dump_size=dump, shared_lock=False)
        return cls(ud, owner=True)

    @classmethod
    def attach(cls, spec, worker_id: int) -> UltraDictStore:
        """A forked worker reuses the inherited object: its multiprocessing lock is then shared.

        Attaching by name would give the worker a lock of its own (UltraDict's cross-process
        lock needs the ``atomics`` package and costs ~20 µs), so by-name attach is used
        only for read-only workers (RSS).
        """
        kind, value = spec
        if kind == "object":
            return cls(value, owner=False, worker_id=worker_id, inherited=True)
        from UltraDict import UltraDict

        return cls(UltraDict(name=value, create=False), owner=False, worker_id=worker_id)

    def worker_spec(self):
        return ("object", self.mapping)

    def read_spec(self):
        return ("name", self.mapping.name)

    def close(self) -> None:
        if self.inherited:
            return  # the creator's object, copied by fork: its close() would unlink the creator's segments
        self.mapping.close(unlink=self.owner)


class SharedMemoryDictStore(_MappingStore):
    """shared-memory-dict: the whole dict is pickled into one segment on every write.

    Every operation copies and unpickles the entire segment, so its cost grows with the
    segment and the live set; the segment is sized to the live set (2x headroom) and the
    live set capped, which is the size a user would pick.

    Its lock (SHARED_MEMORY_USE_LOCK=1) does not make it safe across processes: the lock
    decorator wraps the *creation* of the ``_modify_db`` generator, so the read-modify-write
    itself runs unlocked and concurrent writers lose each other's updates. The
    multi-process workload counts the failures this causes instead of stopping.
    """

    def __init__(self, smd, owner: bool, size: int, max_live: int, worker_id: int = 0):
        super().__init__(smd, worker_id)
        self.owner, self.size, self.max_live = owner, size, max_live

    @staticmethod
    def _module():
        # Its cross-process lock (a multiprocessing.Lock made at import) is off unless this
        # is set; made before any fork, it is shared by forked workers.
        os.environ["SHARED_MEMORY_USE_LOCK"] = "1"
        import shared_memory_dict

        return shared_memory_dict

    @classmethod
    def create(cls, name: str, value_size: int) -> SharedMemoryDictStore:
        max_live = 2000 if value_size <= 256 else 240
        size = 2 * max_live * (value_size + 32) + (64 << 10)
        smd = cls._module().SharedMemoryDict(name=name, size=size)
        return cls(smd, owner=True, size=size, max_live=max_live)

    @classmethod
    def attach(cls, spec, worker_id: int) -> SharedMemoryDictStore:
        name, size, max_live = spec
        return cls(cls._module().SharedMemoryDict(name=name, size=size), False, size, max_live, worker_id)

    def worker_spec(self):
        return (self.mapping.shm.name.removeprefix("sm_"), self.size, self.max_live)

    def close(self) -> None:
        shm = self.mapping.shm
        shm.close()
        if self.owner:
            shm.unlink()


class LMDBStore(_CounterStore):
    """LMDB in /dev/shm (memory-backed like the pool), one transaction per operation.

    Tuned for speed as a user would for a scratch store: sync and metasync off, writemap on,
    packed reads zero-copy (``buffers=True``, unpacked inside the transaction). ``raw``: the
    values are bytes, stored and returned as they are.
    """

    OPTIONS = dict(map_size=1 << 30, subdir=True, sync=False, metasync=False, writemap=True,
                   readahead=False, max_dbs=0, lock=True)

    def __init__(self, path: str, owner: bool, worker_id: int = 0, raw: bool = False):
        import lmdb

        super().__init__(worker_id)
        self.path, self.owner, self.raw = path, owner, raw
        self.env = env = lmdb.open(path, **self.OPTIONS)
        keys = self._keys
        key = struct.Struct(">Q").pack
        # bytes(b) is b itself for a bytes value: raw values pass through without a copy.
        packb, unpackb = (bytes, bytes) if raw else (msgpack.packb, msgpack.unpackb)
        begin = env.begin

        def allocate(value):
            k = key(next(keys))
            with begin(write=True) as txn:
                txn.put(k, packb(value))
            return k

        def get_packed(k):
            with begin(buffers=True) as txn:
                return unpackb(txn.get(k))

        def get_raw(k):
            with begin() as txn:
                return txn.get(k)

        def set_(k, value):
            with begin(write=True) as txn:
                txn.put(k, packb(value))

        def release(k):
            with begin(write=True) as txn:
                txn.delete(k)

        def allocate_many(values):
            ks = [key(k) for k in itertools.islice(keys, len(values))]
            with begin(write=True) as txn:
                txn.cursor().putmulti(zip(ks, map(packb, values), strict=True))
            return ks

        def release_many(ks):
            with begin(write=True) as txn:
                for k in ks:
                    txn.delete(k)

        self.allocate, self.get, self.set, self.release = allocate, get_raw if raw else get_packed, set_, release
        self.allocate_many, self.release_many = allocate_many, release_many

    @classmethod
    def create(cls, name: str, raw: bool = False) -> LMDBStore:
        return cls(os.path.join(SHM_DIR, name), owner=True, raw=raw)

    @classmethod
    def attach(cls, spec, worker_id: int) -> LMDBStore:
        path, raw = spec
        return cls(path, owner=False, worker_id=worker_id, raw=raw)  # an env must never cross a fork

    def worker_spec(self):
        return (self.path, self.raw)

    def before_fork(self) -> None:
        """Close this process's env: py-lmdb refuses an env a forked child inherited open."""
        self.env.close()

    def nbytes_used(self) -> int:
        """Bytes of pages holding data (branch, leaf and overflow pages)."""
        st = self.env.stat()
        return st["psize"] * (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])

    def close(self) -> None:
        self.env.close()
        if self.owner:
            shutil.rmtree(self.path, ignore_errors=True)


class RedisStore(_CounterStore):
    """Redis over a unix socket, one command per operation (MSET / multi-key DEL for batches).

    ``raw``: the values are bytes, stored and returned as they are.
    """

    def __init__(self, url: str, prefix: str, owner: bool, worker_id: int = 0, raw: bool = False):
        import redis

        super().__init__(worker_id)
        self.url, self.prefix, self.owner, self.raw = url, prefix, owner, raw
        self.client = r = redis.Redis.from_url(url)
        keys = self._keys
        # bytes(b) is b itself for a bytes value: raw values pass through without a copy.
        packb, unpackb = (bytes, bytes) if raw else (msgpack.packb, msgpack.unpackb)
        rset, rget, rdel = r.set, r.get, r.delete

        def allocate(value):
            k = f"{prefix}{next(keys)}"
            rset(k, packb(value))
            return k

        def allocate_many(values):
            ks = [f"{prefix}{k}" for k in itertools.islice(keys, len(values))]
            r.mset(dict(zip(ks, map(packb, values), strict=True)))
            return ks

        self.allocate = allocate
        self.get = rget if raw else lambda k: unpackb(rget(k))
        self.set = rset if raw else lambda k, value: rset(k, packb(value))
        self.release = rdel
        self.allocate_many = allocate_many
        self.release_many = lambda ks: rdel(*ks)

    @classmethod
    def create(cls, url: str, name: str, raw: bool = False) -> RedisStore:
        return cls(url, f"fabench:{name}:", owner=True, raw=raw)

    @classmethod
    def attach(cls, spec, worker_id: int) -> RedisStore:
        url, prefix, raw = spec
        return cls(url, prefix, owner=False, worker_id=worker_id, raw=raw)

    def worker_spec(self):
        return (self.url, self.prefix, self.raw)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def close(self) -> None:
        try:
            if self.owner:
                # Only our own keys: the server may be a user's (--redis-url).
                stale = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
                if stale:
                    self.client.delete(*stale)
        finally:
            self.client.close()


class Iceoryx2Peer:
    """iceoryx2's Python bindings: publish-subscribe of ``Slice[c_uint8]``, publisher and subscriber in one process.

    Not a store (a sample lives until it is dropped, there is no handle to keep), so the one
    workload it runs is the round trip that stands for a pool's allocate → get → release: loan
    a slice of the value's length, write the value into it, send, receive, read it back as
    bytes (msgpack-unpacked for the dict), drop the sample. Written as fast as the public API
    allows: ``ctypes.memmove`` into ``payload_ptr`` and ``ctypes.string_at`` out of it, ~1.5 µs
    less than going through ``payload()``'s ``Slice`` and its memoryview. ``loan_slice_uninit``
    and ``assume_init`` are Python wrappers in the bindings (type checks per call), which is part
    of what a user pays.
    """

    def __init__(self, name: str, max_len: int, raw: bool):
        import ctypes

        import iceoryx2 as iox2

        # Its "no config file, using defaults" warning would break the progress bar.
        iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
        self.raw = raw
        self._node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self._service = (self._node.service_builder(iox2.ServiceName.new(name))
                         .publish_subscribe(iox2.Slice[ctypes.c_uint8]).create())
        self._publisher = self._service.publisher_builder().initial_max_slice_len(max_len).create()
        self._subscriber = self._service.subscriber_builder().create()

    def round_trip(self, value):
        """One round trip of ``value``, as rep_cycle does it; what came back (a check that it carries the data)."""
        import ctypes

        data = value if self.raw else msgpack.packb(value)
        sample = self._publisher.loan_slice_uninit(len(data))
        ctypes.memmove(sample.payload_ptr, data, len(data))
        sample.assume_init().send()
        got = self._subscriber.receive()
        try:
            back = ctypes.string_at(got.payload_ptr, got.header.number_of_elements)
        finally:
            got.delete()
        return back if self.raw else msgpack.unpackb(back)

    def rep_cycle(self, value, n: int) -> float:
        """``n`` round trips of ``value`` (round_trip inlined); the elapsed ns (the clock read around the loop only)."""
        import ctypes

        from .timing import clock

        loan, receive = self._publisher.loan_slice_uninit, self._subscriber.receive
        memmove, string_at = ctypes.memmove, ctypes.string_at
        if self.raw:
            size = len(value)
            t0 = clock()
            for _ in range(n):
                sample = loan(size)
                memmove(sample.payload_ptr, value, size)
                sample.assume_init().send()
                got = receive()
                string_at(got.payload_ptr, got.header.number_of_elements)
                got.delete()
            return clock() - t0
        packb, unpackb = msgpack.packb, msgpack.unpackb
        t0 = clock()
        for _ in range(n):
            data = packb(value)
            size = len(data)
            sample = loan(size)
            memmove(sample.payload_ptr, data, size)
            sample.assume_init().send()
            got = receive()
            unpackb(string_at(got.payload_ptr, got.header.number_of_elements))
            got.delete()
        return clock() - t0

    def close(self) -> None:
        """Drop the ports, the service and the node: iceoryx2 removes the service's files with the last of them."""
        for port in (self._subscriber, self._publisher):
            if port is not None:
                port.delete()
        self._subscriber = self._publisher = self._service = self._node = None

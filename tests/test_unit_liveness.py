"""Unit: liveness.c, which processes are attached and which of them are dead.

Its invariant (the top of liveness.c): an attached process holds an OFD write
lock on byte <entry> of the main segment, dropped by the kernel when it dies:
the only death signal trusted. Every claim of an entry bumps its incarnation,
so an earlier holder's slots are told apart from the new holder's; before the
incarnation wraps, the claimer repairs the pool, so no slot names a dead
incarnation. Entries' counters are never reset by a claim.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fastalloc_shm import FastallocError, FixedPool, ThreadLocalPool, _core, attach
from fastalloc_shm import _layout as L

ROOT = Path(__file__).resolve().parent.parent
ORPHAN_ENTRY = L.ORPHAN_OWNER >> L.INCARNATION_BITS


def entry_words(pool, entry: int) -> tuple[int, int]:
    """(pid, incarnation) of a client entry."""
    return struct.unpack_from("<2I", pool._segment.mm, L.CLIENT_TABLE_OFFSET + entry * L.CLIENT_BYTES)


def child(name: str, body: str = "", leave: str = "os._exit(0)") -> tuple[int, int]:
    """A child attaches, runs `body`, and leaves by `leave`: (its entry, its pid)."""
    code = (f"import os, fastalloc_shm\np = fastalloc_shm.attach({name!r})\n{body}\n"
            f"print(p._core.entry, os.getpid(), flush=True)\n{leave}\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    entry, pid = out.stdout.split()[-2:]
    return int(entry), int(pid)


def test_a_dead_processs_entry_is_reported_dead_until_recovered(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        entry, pid = child(pool_name)  # gone without close(): its entry stays, its lock is dropped
        rows = {row.pid: row for row in pool.clients()}
        assert rows[os.getpid()].alive and not rows[pid].alive and rows[pid].state == "dead"
        assert entry_words(pool, entry)[0] == pid
        report = pool.recover()
        assert report.dead_clients == (pid,)
        assert entry_words(pool, entry)[0] == 0 and [row.pid for row in pool.clients()] == [os.getpid()]


def test_a_process_that_closes_leaves_the_table(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        entry, pid = child(pool_name, leave="p.close()")
        assert entry_words(pool, entry)[0] == 0
        assert [row.pid for row in pool.clients()] == [os.getpid()]
        assert pool.recover().dead_clients == ()


def test_a_live_process_in_another_attachment_is_alive(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool, attach(pool_name) as other:
        assert {row.entry: row.alive for row in pool.clients()} == {pool._core.entry: True, other._core.entry: True}
        h = other.allocate("held")
        report = pool.recover(orphan_policy="reclaim")
        assert report.orphans_reclaimed == 0 and pool.get(h) == "held", "a live owner's slot was taken"


def test_the_incarnation_moves_on_at_every_claim(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        seen = []
        for _ in range(3):
            entry, pid = child(pool_name, leave="p.close()")
            seen.append((entry, entry_words(pool, entry)[1]))
        for _ in range(2):
            with attach(pool_name) as other:
                seen.append((other._core.entry, entry_words(pool, other._core.entry)[1]))
        entries = {e for e, _ in seen}
        assert len(entries) == 1, "the lowest free entry is claimed again"
        assert [inc for _, inc in seen] == list(range(seen[0][1], seen[0][1] + 5))


def test_an_earlier_holders_slots_are_not_the_new_holders(pool_name):
    with FixedPool.create(pool_name, capacity=8) as pool:
        entry, _ = child(pool_name, "h = p.allocate('earlier')")
        again, _ = child(pool_name)
        assert again == entry
        with attach(pool_name) as holder:  # the entry's holder now, alive
            assert holder._core.entry == entry
            report = pool.recover(orphan_policy="reclaim")
            assert report.orphans_reclaimed == 1, "the earlier incarnation's slot was judged alive"


def test_a_wrapping_incarnation_repairs_first(pool_name):
    """Claiming an entry whose incarnation would wrap to 0: the claimer repairs, so the slot of an old
    holder with the same (entry, incarnation) bits is an orphan before the number can come round again."""
    with FixedPool.create(pool_name, capacity=8) as pool:
        next_entry = pool._core.entry + 1
        mask = (1 << L.INCARNATION_BITS) - 1
        at = L.CLIENT_TABLE_OFFSET + next_entry * L.CLIENT_BYTES
        struct.pack_into("<2I", pool._segment.mm, at, 0, mask)
        h = pool.allocate("old holder's")
        meta = L.HEADER_SIZE + L.EXT_HEADER_BYTES
        old_owner = (next_entry << L.INCARNATION_BITS) | mask
        struct.pack_into("<I", pool._segment.mm, meta + 4, (L.ALLOCATED << L.STATE_SHIFT) | old_owner)
        recoveries = pool.statistics().recoveries
        with attach(pool_name) as other:
            assert other._core.entry == next_entry
            assert entry_words(pool, next_entry)[1] == 1, "the incarnation after the wrap is 1, never 0"
            assert pool._core.slot_states()[0]["slots"][0][2] == ORPHAN_ENTRY
            assert other.get(h) == "old holder's"
        assert pool.statistics().recoveries == recoveries, "nothing was freed: not a recovery by the counters"


def test_a_full_client_table_is_an_error(pool_name):
    with FixedPool.create(pool_name, capacity=8):
        fd = os.open(f"/dev/shm/fastalloc.{pool_name}", os.O_RDWR)
        try:
            held = [byte for byte in range(L.MAX_CLIENTS) if _core.lock_byte(fd, byte)]
            assert len(held) == L.MAX_CLIENTS - 1  # all but the pool's own entry
            probe = os.open(f"/dev/shm/fastalloc.{pool_name}", os.O_RDONLY)
            assert _core.byte_locked(probe, 5) and not _core.byte_locked(fd, 5), "a description's own lock"
            os.close(probe)
            with pytest.raises(FastallocError, match="client table is full"):
                attach(pool_name)
        finally:
            os.close(fd)
        with attach(pool_name) as other:
            assert other._core.entry == 1


def test_an_entry_that_cannot_open_its_segment_is_not_claimed(pool_name):
    """after_fork() re-registers through /proc/self/fd/<segment fd>: what cannot be opened read-write
    there is an error, not an entry."""
    with FixedPool.create(pool_name, capacity=8) as pool:
        fd = pool._segment.fd
        saved, directory = os.dup(fd), os.open("/", os.O_RDONLY)
        os.dup2(directory, fd)  # the same number now names a directory
        try:
            with pytest.raises(FastallocError, match="cannot open the pool segment for the liveness lock"):
                pool._core.after_fork(0)
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            os.close(directory)
        assert pool._core.entry == -1
        # The old entry's lock went with the old descriptor; with no descriptor to ask the kernel
        # through, no entry is judged dead on a guess: "cannot tell" is alive.
        assert [(row.pid, row.alive) for row in pool.clients()] == [(os.getpid(), True)]
        assert pool.recover().dead_clients == ()


def test_close_with_the_lock_stuck_leaves_the_magazine_to_recovery(tmp_path, pool_name):
    """unregister_client: a drain that cannot get the lock leaves the slots CACHED by a dead owner-to-be."""
    from .test_unit_lock import Holder

    with ThreadLocalPool.create(pool_name, capacity=16, batch_size=4, lock_timeout=0.2) as keeper:
        pool = attach(pool_name)
        pool.release(pool.allocate("x"))
        assert pool._core.cached == 4
        holder = Holder(tmp_path, pool_name, "stop")
        try:
            pool.close()  # the drain times out: close() still completes
            assert pool._core.closed
        finally:
            holder.kill()
        report = keeper.recover()
        assert report.cached_returned == 4 and len(keeper) == 0
        assert keeper._core.semaphore_value == 16


def test_a_wrap_that_cannot_get_the_lock_claims_nothing(tmp_path, pool_name):
    """The repair before a wrap needs the lock: a claimer that times out waiting leaves the entry unclaimed."""
    from fastalloc_shm import LockTimeout

    from .test_unit_lock import Holder

    with FixedPool.create(pool_name, capacity=8, lock_timeout=0.2) as pool:
        holder = Holder(tmp_path, pool_name, "stop")  # entry 1: the wrap is set up on entry 2
        try:
            at = L.CLIENT_TABLE_OFFSET + 2 * L.CLIENT_BYTES
            struct.pack_into("<2I", pool._segment.mm, at, 0, (1 << L.INCARNATION_BITS) - 1)
            with pytest.raises(LockTimeout):
                attach(pool_name)
            assert entry_words(pool, 2) == (0, (1 << L.INCARNATION_BITS) - 1), "a claim without its repair"
        finally:
            holder.kill()
        with attach(pool_name) as other:
            assert other._core.entry in (1, 2)

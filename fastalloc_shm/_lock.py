"""The robust pool lock: a POSIX semaphore plus a client table, repaired after a death.

A POSIX semaphore is not released when its holder dies, and Linux has no
SEM_UNDO for it. So each process that attaches a pool gets an entry in the
pool's client table (pid, start time, state, attempts) and brackets every
semaphore call with it:

    acquire:  state = WANTS;  sem_wait
    release:  sem_post;  state = IDLE

WANTS thus covers every moment a process might hold the semaphore, including
the instants right after sem_wait returns and right before sem_post; a process
killed anywhere leaves WANTS behind. When the semaphore stays at 0, its
holder is a WANTS entry. To tell a holder from a waiter:

  * waiters wait in short slices and bump their ATTEMPTS word after each
    timed-out slice; a holder never does;
  * every critical section moves the lock epoch (the sum of the lock
    counters, see _layout.epoch).

A waiter that has waited a while tries a repair, holding an exclusive `flock`
on the segment (the kernel drops it if the repairer dies, and it makes the
repairer unique). It takes the lock over only when it can prove that no live
process holds it: the semaphore reads 0, some WANTS entry belongs to a dead
process (pid gone, a zombie, or a reused pid whose start time differs), and
over a wait longer than any slice the epoch did not move and every live WANTS
entry bumped ATTEMPTS. A live holder, however slow or stopped, is never robbed.

The repairer then owns the semaphore the dead process took: it clears the
dead entries, has the pool rebuild its free lists from slot states, and
releases as usual. Iceoryx and Boost.Interprocess pair a death signal with a
single repairer in the same spirit; this one is built on a semaphore because
that costs ~0.1 us uncontended.

Threads of one process share its client entry, so they pass a per-process
gate (a threading.Lock) before the semaphore; the gate's holder waits at most
`timeout` on the semaphore, which bounds the gate too.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import posix_ipc

from . import _fault
from . import _layout as L
from ._liveness import is_alive, start_ticks
from .errors import FastallocError, LockTimeout

_BusyError = posix_ipc.BusyError
# A signal during sem_timedwait: its Python handler has run (or will raise); wait on.
_Interrupted = (posix_ipc.BusyError, posix_ipc.SignalError)
FIRST_SLICE = 0.001
MAX_SLICE = 0.02
# A waiter tries a repair once it has waited this long, then every REPAIR_EVERY.
REPAIR_AFTER = 0.05
REPAIR_EVERY = 0.1
# Longer than any waiter's slice, so every live waiter bumps ATTEMPTS meanwhile.
CONFIRM_WAIT = 3 * MAX_SLICE
FLOCK_POLL = 0.001


@dataclass(frozen=True)
class ClientInfo:
    """One process attached to a pool, as its client table records it."""

    pid: int
    state: str
    alive: bool
    entry: int = -1
    start_ticks: int = 0


def _entry_start(ct: memoryview, entry: int) -> int:
    return ct[L.client_word(entry, L.CLIENT_START_LO)] | ct[L.client_word(entry, L.CLIENT_START_HI)] << 32


def read_clients(ct: memoryview) -> list[ClientInfo]:
    """Every used entry of a client table, with liveness checked."""
    clients = []
    for entry in range(L.MAX_CLIENTS):
        pid = ct[L.client_word(entry, L.CLIENT_PID)]
        if pid:
            state = ct[L.client_word(entry, L.CLIENT_STATE)]
            ticks = _entry_start(ct, entry)
            clients.append(
                ClientInfo(pid, L.CLIENT_STATE_NAMES.get(state, "?"), is_alive(pid, ticks), entry, ticks)
            )
    return clients


class FileLock:
    """An exclusive `flock` on a path, with a timeout; dropped by the kernel on death."""

    fd = -1

    def __init__(self, path: str) -> None:
        self.path = path
        self.reopen()

    def reopen(self) -> None:
        """A fresh open file description: a forked child must not share its parent's."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)

    def try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def lock(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.try_lock():
            if time.monotonic() >= deadline:
                return False
            time.sleep(FLOCK_POLL)
        return True

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RobustLock:
    """The pool lock of one process: its client entry, the gate, the semaphore.

    `repair` is called with the lock held after a takeover from a dead holder;
    it must rebuild whatever the dead holder may have left half done.
    """

    def __init__(
        self,
        pool_name: str,
        sem: posix_ipc.Semaphore,
        ct: memoryview,
        header: memoryview,
        file_lock: FileLock,
        timeout: float,
        repair: Callable[[], None],
        measure_wait: bool = False,
        spin: bool = False,
    ) -> None:
        self.pool_name = pool_name
        self.sem = sem
        self.ct = ct
        self.header = header
        self.file_lock = file_lock
        self.timeout = timeout
        self.repair = repair
        self.measure_wait = measure_wait
        self.spin = spin
        self._spins = 8
        self.gate = threading.Lock()
        self.entry = -1
        self.state_word = -1
        self.attempts_word = -1

    # -- client table -------------------------------------------------------

    def register(self) -> None:
        """Claim a client entry: a free one, else one of a dead idle process."""
        pid = os.getpid()
        ticks = start_ticks(pid)
        ct = self.ct
        if not self.file_lock.lock(self.timeout):
            raise LockTimeout(f"pool {self.pool_name!r}: could not register within {self.timeout} s (a repair is running?)")
        try:
            entry = self._free_entry()
            ct[L.client_word(entry, L.CLIENT_STATE)] = L.CLIENT_IDLE
            ct[L.client_word(entry, L.CLIENT_ATTEMPTS)] = 0
            ct[L.client_word(entry, L.CLIENT_START_LO)] = ticks & 0xFFFFFFFF
            ct[L.client_word(entry, L.CLIENT_START_HI)] = ticks >> 32
            ct[L.client_word(entry, L.CLIENT_PID)] = pid
        finally:
            self.file_lock.unlock()
        self.entry = entry
        self.state_word = L.client_word(entry, L.CLIENT_STATE)
        self.attempts_word = L.client_word(entry, L.CLIENT_ATTEMPTS)

    def _free_entry(self) -> int:
        ct = self.ct
        for entry in range(L.MAX_CLIENTS):
            if ct[L.client_word(entry, L.CLIENT_PID)] == 0:
                return entry
        for entry in range(L.MAX_CLIENTS):
            pid = ct[L.client_word(entry, L.CLIENT_PID)]
            idle = ct[L.client_word(entry, L.CLIENT_STATE)] == L.CLIENT_IDLE
            if idle and not is_alive(pid, _entry_start(ct, entry)):
                return entry
        raise FastallocError(
            f"pool {self.pool_name!r}: its client table is full ({L.MAX_CLIENTS} live processes attached); close some"
        )

    def unregister(self) -> None:
        if self.entry >= 0:
            self.ct[self.state_word] = L.CLIENT_FREE
            self.ct[L.client_word(self.entry, L.CLIENT_PID)] = 0
            self.entry = -1

    def after_fork_in_child(self) -> None:
        """The child shares nothing of the parent's lock state: new gate, own flock, own entry."""
        self.gate = threading.Lock()
        self.file_lock.reopen()
        self.entry = -1
        self.register()

    # -- acquire / release --------------------------------------------------

    def acquire(self) -> None:
        """Take the pool lock (gate, then semaphore); LockTimeout after `timeout` s."""
        if not self.gate.acquire(False):
            self._wait_gate()
        self.ct[self.state_word] = L.CLIENT_WANTS
        try:
            self.sem.acquire(0)
        except _BusyError:
            self._wait()
        if _fault.ACTIVE:
            _fault.hit("lock.acquired")
        self.header[L.HDR_LOCK_ACQUISITIONS] += 1

    def release(self) -> None:
        self.sem.release()
        if _fault.ACTIVE:
            _fault.hit("lock.released")
        self.ct[self.state_word] = L.CLIENT_IDLE
        self.gate.release()

    def __enter__(self) -> RobustLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _wait_gate(self) -> None:
        if not self.gate.acquire(True, self.timeout):
            self.header[L.HDR_LOCK_TIMEOUTS] += 1
            raise LockTimeout(
                f"pool {self.pool_name!r}: another thread of this process held the lock for {self.timeout} s; "
                "raise lock_timeout or look for a stuck thread"
            )

    def _wait(self) -> None:
        """Slow path: the semaphore is taken. Spin (ThreadSafePool), then block in
        slices, trying a repair now and then; give up after `timeout`."""
        started = time.monotonic()
        started_ns = time.perf_counter_ns() if self.measure_wait else 0
        try:
            if not (self.spin and self._spin()):
                self._block(started)
        except LockTimeout:
            raise
        except BaseException:
            # e.g. KeyboardInterrupt from a signal handler: we do not hold the lock
            self.ct[self.state_word] = L.CLIENT_IDLE
            self.gate.release()
            raise
        if self.measure_wait:
            # Only the holder writes here, so the += is not racy.
            self.header[L.HDR_LOCK_WAIT_NS] += time.perf_counter_ns() - started_ns

    def _spin(self) -> bool:
        """Adaptive spinning (parking_lot's tip): yield a few times while the holder
        is likely to finish; spin longer after spins that paid off."""
        sem = self.sem
        for _ in range(self._spins):
            os.sched_yield()
            if sem.value:
                try:
                    sem.acquire(0)
                    self._spins = min(self._spins * 2, 64)
                    return True
                except _BusyError:
                    pass
        self._spins = max(self._spins // 2, 2)
        return False

    def _block(self, started: float) -> None:
        ct, sem = self.ct, self.sem
        deadline = started + self.timeout
        repair_at = started + REPAIR_AFTER
        wait = FIRST_SLICE
        while True:
            try:
                sem.acquire(wait)
                return
            except _Interrupted:
                pass
            ct[self.attempts_word] = (ct[self.attempts_word] + 1) & 0xFFFFFFFF
            now = time.monotonic()
            if now >= repair_at:
                if self.try_takeover():
                    return
                repair_at = time.monotonic() + REPAIR_EVERY
            if now >= deadline:
                self.header[L.HDR_LOCK_TIMEOUTS] += 1
                ct[self.state_word] = L.CLIENT_IDLE
                self.gate.release()
                raise LockTimeout(
                    f"pool {self.pool_name!r}: lock not acquired within {self.timeout} s; {self.describe_holder()}; "
                    "raise lock_timeout, or run recover() if that process is stuck"
                )
            wait = min(wait * 2, MAX_SLICE)

    # -- repair ---------------------------------------------------------------

    def try_takeover(self) -> bool:
        """If a dead process holds the semaphore, take it over and repair; True if so."""
        if not self.file_lock.try_lock():
            return False  # someone else is repairing
        try:
            return self._takeover_locked()
        finally:
            self.file_lock.unlock()

    def _takeover_locked(self) -> bool:
        header, ct, me = self.header, self.ct, self.entry
        # Read the semaphore before the table: a process that took it after
        # this read wrote WANTS first, so the table read sees it.
        if self.sem.value:
            return False
        epoch = L.epoch(header)
        clients = [c for c in read_clients(ct) if c.entry != me and c.state == "wants"]
        dead = [c for c in clients if not c.alive]
        if not dead:
            return False
        if self._unproven_waiters({c.entry for c in clients if c.alive}):
            return False
        if self.sem.value or L.epoch(header) != epoch:
            return False
        # The semaphore the dead process took is ours now.
        header[L.HDR_LOCK_ACQUISITIONS] += 1
        for c in dead:
            ct[L.client_word(c.entry, L.CLIENT_STATE)] = L.CLIENT_FREE
            ct[L.client_word(c.entry, L.CLIENT_PID)] = 0
        self.repair()
        header[L.HDR_RECOVERIES] += 1
        return True

    def _unproven_waiters(self, entries: set[int]) -> set[int]:
        """Of these live WANTS entries, those that did not bump ATTEMPTS over a wait
        longer than any slice: each may be holding the semaphore."""
        ct = self.ct
        before = {e: ct[L.client_word(e, L.CLIENT_ATTEMPTS)] for e in entries}
        time.sleep(CONFIRM_WAIT)
        return {e for e, attempts in before.items()
                if ct[L.client_word(e, L.CLIENT_STATE)] == L.CLIENT_WANTS
                and ct[L.client_word(e, L.CLIENT_ATTEMPTS)] == attempts}

    def describe_holder(self) -> str:
        """Who holds the lock, as far as the client table tells (for LockTimeout)."""
        wanting = {c.entry: c for c in read_clients(self.ct) if c.state == "wants" and c.entry != self.entry}
        holders = [wanting[e] for e in self._unproven_waiters({e for e, c in wanting.items() if c.alive})]
        holders += [c for c in wanting.values() if not c.alive]
        if not holders:
            return "no holder is recorded"
        return "held by " + ", ".join(f"pid {c.pid} ({'alive' if c.alive else 'dead'})" for c in holders)

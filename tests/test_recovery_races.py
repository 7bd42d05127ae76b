"""recover() racing lock-free releases: a live process releasing orphans into its magazine while
another process reclaims them. Each slot must be freed exactly once, whoever wins."""

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

from fastalloc_shm import StaleHandle, ThreadLocalPool

from .invariants import assert_sound

ROOT = Path(__file__).resolve().parent.parent
FORK = mp.get_context("fork")
ORPHANS = 400
ROUNDS = 12


def _reclaim_until(name: str, ready, stop) -> None:
    pool = ThreadLocalPool.attach(name)
    pool.recover(orphan_policy="keep")
    ready.set()
    while not stop.is_set():
        pool.recover(orphan_policy="reclaim")
    pool.close()


def _orphans(name: str, round_: int) -> list[int]:
    """Handles allocated by a process that then died: orphans, which a live process may still release."""
    code = (f"import json, os, signal\nfrom fastalloc_shm import ThreadLocalPool\np = ThreadLocalPool.attach({name!r})\n"
            f"print(json.dumps([p.allocate({{'r': {round_}, 'i': i}}) for i in range({ORPHANS})]), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == -9, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_releases_racing_a_reclaiming_recovery_free_each_slot_once(pool_name):
    with ThreadLocalPool.create(pool_name, capacity=4 * ORPHANS, batch_size=16) as pool:
        released = reclaimed = 0
        for round_ in range(ROUNDS):
            handles = _orphans(pool_name, round_)
            ready, stop = FORK.Event(), FORK.Event()
            reclaimer = FORK.Process(target=_reclaim_until, args=(pool_name, ready, stop))
            reclaimer.start()
            assert ready.wait(30)
            try:
                for h in handles:
                    try:
                        pool.release(h)
                        released += 1
                    except StaleHandle:
                        reclaimed += 1
            finally:
                stop.set()
                reclaimer.join(60)
            assert reclaimer.exitcode == 0
            pool.recover(orphan_policy="reclaim")
            assert_sound(pool, {})  # every slot allocatable once, none twice, none lost
        print(f"\n{released} released by the live process, {reclaimed} reclaimed first by recovery")
        assert released + reclaimed == ROUNDS * ORPHANS

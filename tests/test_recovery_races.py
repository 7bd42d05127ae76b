"""recover() racing lock-free releases: a live process releasing orphans into its magazine while
another process reclaims them. Each slot must be freed exactly once, whoever wins.

The interleaving is forced, not hoped for: the reclaimer runs recover(orphan_policy="reclaim")
with FASTALLOC_FAULT=recover.rebuilding:stop, so it stops half-way through its rebuild, holding
the lock, with the upper half of the slots judged (reclaimed) and the lower half not yet. While it
is stopped the live process releases every orphan lock-free (a compare-and-swap on each slot's
pair): the upper half must be stale already, the lower half must go into its magazine. Then the
reclaimer continues and must keep what the live process now holds in its magazine. Every round
checks that split slot by slot, so the race happened for every orphan of every round.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastalloc_shm import StaleHandle, ThreadLocalPool

from .invariants import assert_sound

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = (400, 150, 37)  # orphans per round: the rebuild's half-way mark falls differently in each
BATCH = 256  # large: the live releases never drain (a drain would wait for the stopped reclaimer's lock)

RECLAIM = """
import json, sys
from fastalloc_shm import ThreadLocalPool
pool = ThreadLocalPool.attach(sys.argv[1])
report = pool.recover(orphan_policy="reclaim")
print(json.dumps({"reclaimed": report.orphans_reclaimed, "cached_returned": report.cached_returned,
                  "kept": report.orphans_kept}))
pool.close()
"""


def _orphans(name: str, count: int) -> list[int]:
    """Handles allocated by a process that then died: orphans, which a live process may still release."""
    code = (f"import json, os, signal\nfrom fastalloc_shm import ThreadLocalPool\np = ThreadLocalPool.attach({name!r})\n"
            f"print(json.dumps([p.allocate({{'i': i}}) for i in range({count})]), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == -9, out.stderr[-2000:]
    return json.loads(out.stdout)


def _stop_reclaimer_mid_rebuild(name: str, marker: Path) -> subprocess.Popen:
    env = dict(os.environ, FASTALLOC_FAULT="recover.rebuilding:stop", FASTALLOC_FAULT_FILE=str(marker))
    reclaimer = subprocess.Popen([sys.executable, "-c", RECLAIM, name], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status = os.waitpid(reclaimer.pid, os.WUNTRACED)  # returns once it has stopped itself (or died)
    assert os.WIFSTOPPED(status), f"the reclaimer never reached recover.rebuilding (status {status:#x})"
    assert marker.read_text() == f"{reclaimer.pid} recover.rebuilding 1\n"
    return reclaimer


@pytest.mark.timeout(120)
def test_releases_racing_a_reclaiming_recovery_free_each_slot_once(pool_name, tmp_path):
    with ThreadLocalPool.create(pool_name, capacity=1024, batch_size=BATCH) as pool:
        for round_, count in enumerate(ROUNDS):
            handles = _orphans(pool_name, count)
            (extent,) = pool._core.slot_states()
            half = extent["fresh"] // 2  # the rebuild walks down from the top and stops after this slot
            judged = [h for h in handles if h & 0xFFFFFFFF >= half]
            unjudged = [h for h in handles if h & 0xFFFFFFFF < half]
            assert judged and unjudged, (half, count)

            # A fresh attachment with an empty magazine: its releases never drain (a drain would
            # wait for the lock the stopped reclaimer holds).
            live = ThreadLocalPool.attach(pool_name)
            reclaimer = _stop_reclaimer_mid_rebuild(pool_name, tmp_path / f"marker{round_}")
            try:
                for h in unjudged:
                    live.release(h)  # lock-free, while the reclaimer holds the lock mid-rebuild
                for h in judged:
                    with pytest.raises(StaleHandle):
                        live.release(h)  # reclaimed already, before the pause
            finally:
                os.kill(reclaimer.pid, signal.SIGCONT)
                out, err = reclaimer.communicate(timeout=60)
            assert reclaimer.returncode == 0, err[-2000:]
            report = json.loads(out)
            assert report["reclaimed"] == len(judged), (report, len(judged))  # the rest were the live process's
            assert live.cached() == len(unjudged)
            live.close()  # drains its magazine: each slot it released goes back once

            pool.recover(orphan_policy="reclaim")
            assert_sound(pool, {})  # every slot allocatable once, none twice, none lost

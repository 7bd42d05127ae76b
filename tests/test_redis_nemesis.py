"""A short nemesis soak of RedisPool (issue 23, deliver 9; the long one: `python -m benchmarks.redis_nemesis
600 8`): client processes with self-checking values while a real redis-server is snapshotted, killed
with SIGKILL and restarted from an older snapshot or a fresh one, and CLIENT PAUSEd; then the checker.
"""

from __future__ import annotations

from benchmarks.redis_nemesis import check, run


def test_the_checker_sees_a_handle_held_twice_and_a_wrong_read():
    history = [
        ["allocate", 7, [1, 1], "ok", 0.0, 0.1, 0],
        ["allocate", 7, [2, 1], "ok", 0.2, 0.3, 1],  # client 0 has not released it
        ["get", 7, [2, 1], "ok", 0.4, 0.5, 0],
        ["release", 7, None, "ok", 0.6, 0.7, 0],
        ["release", 7, None, "ok", 0.8, 0.9, 1],
    ]
    anomalies = check(history)
    assert any("held by clients 0 and 1" in a for a in anomalies)
    assert any("client 0 read [2, 1]" in a for a in anomalies)
    assert check([h for h in history if h[6] == 0 and h[0] != "get"]) == []


def test_a_short_soak_finds_no_duplicate_handle_no_wrong_value_and_no_lost_slot():
    result = run(seconds=10, clients=3, seed=1)
    assert result["operations"] > 1000 and len(result["faults"]) >= 4
    assert any(f.startswith("restart") for f in result["faults"])
    assert result["anomalies"] == [] and result["lost_slots"] == 0

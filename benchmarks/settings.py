"""How much to measure: the full run and ``--quick`` (under a minute), in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Settings:
    """Every knob of a run; picklable, so each system's child process gets the same copy."""

    quick: bool
    run_tag: str  # in every object name, so the final sweep finds leftovers of this run only
    redis_url: str | None = None
    reps: int = 15  # timed repetitions per op (after one warm-up); the median is reported
    rep_budget_ns: int = 100_000_000  # a repetition of a slow system stops growing at ~this
    n_min: int = 10  # ops per repetition, at least...
    n_max: int = 2000  # ...and at most (also the live set of get/set)
    batches_max: int = 20  # batches of 100 per repetition
    h2h_rounds: int = 61  # rounds of the head-to-head (each: one repetition of every contender)
    mp_procs: tuple[int, ...] = (1, 2, 4)
    mp_seconds: float = 2.0  # each multi-process run lasts this long
    create_reps: int = 7
    create_sizes: tuple[int, ...] = (10_000, 1_000_000)
    create_kinds: tuple[str, ...] = ("FixedPool", "GrowingPool", "ThreadLocalPool", "ThreadSafePool")
    grow_reps: int = 15
    overhead_capacity: int = 10_000
    overhead_slot_sizes: tuple[int, ...] = (64, 1024, 4096)
    peer_overhead_values: int = 2000
    rss_values: int = 1000
    system_timeout: float = 600.0  # seconds before a hung system's process is killed

    @classmethod
    def make(cls, quick: bool, run_tag: str, redis_url: str | None) -> Settings:
        full = cls(quick=False, run_tag=run_tag, redis_url=redis_url)
        if not quick:
            return full
        return replace(
            full,
            quick=True,
            reps=5,
            rep_budget_ns=15_000_000,
            n_max=500,
            h2h_rounds=11,
            batches_max=5,
            mp_seconds=0.25,
            create_reps=3,
            create_kinds=("FixedPool", "GrowingPool"),
            grow_reps=5,
            peer_overhead_values=500,
            rss_values=500,
            system_timeout=120.0,
        )

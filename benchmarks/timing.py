"""Timing primitives: loops of N ops timed with perf_counter_ns, warm-up first, median of repeats.

The collector is off while a loop runs (as ``timeit`` does): a collection landing in one
system's loop and not another's would be noise, not a property of the system.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from time import perf_counter_ns

clock = perf_counter_ns


def gc_paused(fn: Callable[[], float]) -> float:
    """Run ``fn`` with the garbage collector off; return its result."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return fn()
    finally:
        if enabled:
            gc.enable()


def repeat(rep: Callable[[], float], reps: int) -> list[float]:
    """One warm-up call, then ``reps`` timed calls of ``rep`` (each returns its own measure)."""
    gc_paused(rep)
    return [gc_paused(rep) for _ in range(reps)]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def row(system: str, op: str, samples: list[float], unit: str, **extra) -> dict:
    """One result: the median of ``samples`` is the reported value."""
    return {"system": system, "op": op, "value": median(samples), "unit": unit,
            "samples": [round(x, 3) for x in samples], **extra}


def error_row(system: str, op: str, exc: BaseException) -> dict:
    """A workload that failed: reported as such, the run goes on."""
    return {"system": system, "op": op, "value": None, "unit": "", "error": f"{type(exc).__name__}: {exc}"}

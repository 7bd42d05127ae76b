"""A signal handler that interrupts a blocking call: how the tests check that waits stay interruptible."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Interrupted(Exception):
    """Raised by the SIGALRM handler of `interrupted_after`."""


@contextlib.contextmanager
def interrupted_after(seconds: float, error: BaseException | None = None) -> Iterator[None]:
    """Within the block, SIGALRM fires once after `seconds` and its handler raises `error` (default
    Interrupted); the timer and the previous handler are restored on the way out."""
    def interrupt(signum, frame):
        raise error if error is not None else Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

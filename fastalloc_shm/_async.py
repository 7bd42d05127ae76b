"""Waiting for a free slot in asyncio: retry a non-blocking attempt, backing off, never blocking the loop.

A slot comes back when some process releases one, which no event of this loop
announces; so a waiting task retries the attempt (a non-blocking call: it takes
a slot or refuses at once) after a pause that doubles up to `LAST_PAUSE`. A
cancelled task is cancelled at a pause, never inside an attempt, so a
cancellation never takes a slot nobody holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_PAUSE = 0.0005
LAST_PAUSE = 0.05  # seconds: a waiting task notices a released slot this late at most


async def retry_until(attempt: Callable[[], T], refused: type[Exception], timeout: float | None) -> T:
    """`attempt()` until it does not raise `refused`, for up to `timeout` s (None: as long as it takes)."""
    import asyncio  # imported when a coroutine first runs: every worker would pay ~40 ms at import otherwise

    if timeout is not None and not 0 <= float(timeout) < math.inf:
        raise ValueError("timeout: seconds, finite and >= 0 (or None)")  # the core's words for its own waits
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause = FIRST_PAUSE
    while True:
        try:
            return attempt()
        except refused:
            if deadline is not None and loop.time() >= deadline:
                raise
        remaining = LAST_PAUSE if deadline is None else max(0.0, deadline - loop.time())
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, LAST_PAUSE)

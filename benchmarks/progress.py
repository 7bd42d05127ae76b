"""A small progress bar on stderr (a redrawn line on a terminal, one line per system otherwise)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``bar.show(system, label)`` when a step starts, ``bar.advance(...)`` when it ends, ``bar.close()``."""

    WIDTH = 28

    def __init__(self, total: int, stream=None):
        self.total, self.done = max(total, 1), 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last_system = None

    def advance(self, label: str, system: str, steps: int = 1) -> None:
        """Count ``steps`` as done; ``label`` names what runs next."""
        self.done = min(self.total, self.done + steps)
        self.show(label, system)

    def show(self, label: str, system: str) -> None:
        """Redraw with ``label`` as the step now running."""
        elapsed = time.monotonic() - self.start
        if self.tty:
            filled = self.WIDTH * self.done // self.total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"[{bar}] {self.done}/{self.total} {elapsed:5.1f}s {system}: {label}"
            self.stream.write("\r" + line[:110].ljust(110))
        elif system != self._last_system:
            self.stream.write(f"[{self.done}/{self.total} {elapsed:5.1f}s] {system}\n")
        self._last_system = system
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line that stays (e.g. 'redis-server not found'), without breaking the bar."""
        self.stream.write(("\r" + " " * 110 + "\r" if self.tty else "") + message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"done in {time.monotonic() - self.start:.1f}s\n")
        self.stream.flush()

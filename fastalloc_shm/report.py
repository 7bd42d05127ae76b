"""RecoveryReport: what one `recover()` found and repaired."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecoveryReport:
    """The outcome of `pool.recover()`; every count is slots unless it says otherwise."""

    pool: str
    orphan_policy: str
    dead_clients: tuple[int, ...] = field(default_factory=tuple)
    """Pids of dead processes found in the pool's client table (or leases, for Redis)."""
    lock_taken_over: bool = False
    """The lock was held by a dead process and was repaired."""
    cached_returned: int = 0
    """Slots in dead processes' magazines, returned to the free list."""
    half_written_freed: int = 0
    """Slots a dead process was in the middle of allocating or releasing, freed."""
    torn_values: int = 0
    """Values a dead process was overwriting with set(); marked so get() raises."""
    orphans_kept: int = 0
    """Allocated slots of dead owners left allocated (orphan_policy='keep')."""
    orphans_reclaimed: int = 0
    """Allocated slots of dead owners freed (orphan_policy='reclaim')."""
    corrupt_slots: int = 0
    """Slot metadata that made no sense, reset to free."""
    requeued: int = 0
    """Items a dead consumer had taken from a channel (get_handle), put back at the head of their channel."""
    free_list_rebuilt: bool = False
    """The rebuilt free list holds other slots than before (reordering it is no repair)."""

    @property
    def repaired(self) -> bool:
        """True when recovery changed anything."""
        return bool(
            self.lock_taken_over or self.cached_returned or self.half_written_freed or self.torn_values
            or self.orphans_reclaimed or self.corrupt_slots or self.requeued or self.free_list_rebuilt
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dead_clients"] = list(self.dead_clients)
        data["repaired"] = self.repaired
        return data

    def __str__(self) -> str:
        if not self.repaired and not self.orphans_kept:
            return f"pool {self.pool!r}: nothing to repair"
        parts = [f"{k.replace('_', ' ')} {v}" for k, v in self.to_dict().items()
                 if k not in ("pool", "orphan_policy", "dead_clients", "repaired") and v]
        return f"pool {self.pool!r} ({self.orphan_policy}): " + ", ".join(parts)


@dataclass(frozen=True)
class ClientInfo:
    """One process attached to a pool, as its client table records it.

    `alive` comes from the kernel (the process's lock on its entry's byte of
    the segment, dropped at death); pid and start time are shown, not trusted."""

    pid: int
    state: str
    alive: bool
    entry: int = -1
    start_ticks: int = 0

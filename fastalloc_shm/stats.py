"""PoolStatistics: a frozen snapshot of the counters a pool keeps in its segment,
with ChannelStatistics for each of its channels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChannelStatistics:
    """Counters of one channel of a pool, shared by every process that uses it.

    >>> ChannelStatistics(length=3, puts=10, gets=7)
    ChannelStatistics(length=3, puts=10, gets=7, requeued=0, waiting=0)
    """

    length: int = 0
    """Items queued now."""
    puts: int = 0
    """Items queued (put, put_many, put_handle), since creation or reset_statistics()."""
    gets: int = 0
    """Items taken (get, get_many, get_handle), since creation or reset_statistics()."""
    requeued: int = 0
    """Taken items put back at the head of the channel because their consumer died (recovery),
    since creation or reset_statistics(); each is also counted again in gets when taken again."""
    waiting: int = 0
    """Consumers blocked in a get now (an asyncio loop's waiting tasks count as one); one that
    died waiting stops counting at the next repair (recover(), the daemon, the next locker)."""


@dataclass(frozen=True)
class PoolStatistics:
    """Counters of one pool, shared by every process that uses it.

    `pool.reset_statistics()` zeroes every counter, as the crate's collector does;
    capacity and current_usage stay true, and peak_usage restarts at current_usage.

    >>> s = PoolStatistics(capacity=10, current_usage=5, peak_usage=8, total_allocations=8)
    >>> s.utilization_rate(), s.available()
    (50.0, 5)
    """

    capacity: int
    """Slots the pool has now (a GrowingPool's grows)."""
    current_usage: int = 0
    """Slots allocated now."""
    peak_usage: int = 0
    """Highest current_usage seen since creation or reset_statistics()."""
    total_allocations: int = 0
    """Slots allocated (a batch counts each), since creation or reset_statistics()."""
    total_deallocations: int = 0
    """Slots released (including slots freed by recovery), since creation or reset_statistics()."""
    allocation_failures: int = 0
    """Slots refused because the pool was full (a refused batch counts each slot it asked for)."""
    growth_count: int = 0
    """Times the pool grew."""
    lock_acquisitions: int = 0
    """Times a process took the pool's lock."""
    lock_wait_ns: int = 0
    """Nanoseconds spent waiting for a contended lock."""
    lock_timeouts: int = 0
    """Lock waits that gave up after lock_timeout."""
    recoveries: int = 0
    """Repairs after a dead process (lock takeovers and recover() calls that fixed something)."""
    steals: int = 0
    """ThreadLocalPool: slots an allocator took from another process's magazine because the free
    lists were empty (a magazine never hides a free slot); 0 for the other kinds."""
    channels: dict[str, ChannelStatistics] = field(default_factory=dict)
    """The pool's channels by name, in the order they were created (empty with none)."""

    def __post_init__(self) -> None:
        # The core hands each channel's counters over as a plain dict.
        channels = {name: c if isinstance(c, ChannelStatistics) else ChannelStatistics(**c)
                    for name, c in self.channels.items()}
        object.__setattr__(self, "channels", channels)

    def utilization_rate(self) -> float:
        """Percent of capacity in use now (0-100)."""
        return 100.0 * self.current_usage / self.capacity if self.capacity else 0.0

    def peak_utilization_rate(self) -> float:
        """Percent of capacity in use at the peak (0-100)."""
        return 100.0 * self.peak_usage / self.capacity if self.capacity else 0.0

    def hit_rate(self) -> float:
        """Fraction of allocation attempts that succeeded (1.0 with no attempts)."""
        attempts = self.total_allocations + self.allocation_failures
        return self.total_allocations / attempts if attempts else 1.0

    def available(self) -> int:
        """Slots free now."""
        return self.capacity - self.current_usage

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON and msgpack)."""
        return asdict(self)

    def __str__(self) -> str:
        return "\n".join(
            [
                f"capacity            {self.capacity:>14,}",
                f"in use              {self.current_usage:>14,}  ({self.utilization_rate():.1f}%)",
                f"peak                {self.peak_usage:>14,}  ({self.peak_utilization_rate():.1f}%)",
                f"allocations         {self.total_allocations:>14,}",
                f"deallocations       {self.total_deallocations:>14,}",
                f"failures            {self.allocation_failures:>14,}  (hit rate {self.hit_rate():.4f})",
                f"growths             {self.growth_count:>14,}",
                f"lock acquisitions   {self.lock_acquisitions:>14,}",
                f"lock wait           {self.lock_wait_ns / 1e6:>14,.3f} ms",
                f"lock timeouts       {self.lock_timeouts:>14,}",
                f"recoveries          {self.recoveries:>14,}",
                f"steals              {self.steals:>14,}",
                *self._channel_lines(),
            ]
        )

    def _channel_lines(self) -> list[str]:
        rows = [f"channels            {len(self.channels):>14,}"]
        if not self.channels:
            return rows
        width = max(7, *(len(name) for name in self.channels))
        rows += [f"  {'CHANNEL':<{width}}  {'LENGTH':>12}  {'PUTS':>14}  {'GETS':>14}  {'REQUEUED':>10}  {'WAITING':>8}"]
        rows += [f"  {name:<{width}}  {c.length:>12,}  {c.puts:>14,}  {c.gets:>14,}  {c.requeued:>10,}  {c.waiting:>8,}"
                 for name, c in self.channels.items()]
        return rows

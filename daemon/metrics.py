"""Prometheus metrics, rendered from the monitor's latest Snapshot at scrape time.

A collector over the snapshot (rather than Gauges set in place) means a
destroyed pool or an exited client simply vanishes from the next scrape
instead of lingering as a stale labelled series. Served by a small threaded
WSGI server bound to 127.0.0.1 unless told otherwise: the numbers name
processes and pools, which is not for the whole network by default.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .monitor import Snapshot

# (metric name, help, PoolStatistics field, scale) of the per-pool counters.
_POOL_COUNTERS = (
    ("fastalloc_pool_allocations", "Successful allocations.", "total_allocations", 1),
    ("fastalloc_pool_deallocations", "Releases, including slots freed by recovery.", "total_deallocations", 1),
    ("fastalloc_pool_allocation_failures", "Allocations refused because the pool was full.", "allocation_failures", 1),
    ("fastalloc_pool_growths", "Times the pool grew.", "growth_count", 1),
    ("fastalloc_pool_lock_acquisitions", "Times a process took the pool's lock.", "lock_acquisitions", 1),
    ("fastalloc_pool_lock_wait_seconds", "Time spent waiting for a contended lock.", "lock_wait_ns", 1e-9),
    ("fastalloc_pool_lock_timeouts", "Lock waits that gave up after lock_timeout.", "lock_timeouts", 1),
    ("fastalloc_pool_recoveries", "Repairs after a dead process.", "recoveries", 1),
    ("fastalloc_pool_steals", "Slots taken from another process's magazine (ThreadLocalPool).", "steals", 1),
)
# (metric name, help, ChannelStatistics field) of the per-channel series, labelled pool and channel.
_CHANNEL_GAUGES = (
    ("fastalloc_channel_length_items", "Items queued in the channel now.", "length"),
    ("fastalloc_channel_waiting_consumers", "Consumers blocked in a get on the channel now.", "waiting"),
)
_CHANNEL_COUNTERS = (
    ("fastalloc_channel_puts", "Items queued into the channel.", "puts"),
    ("fastalloc_channel_gets", "Items taken from the channel.", "gets"),
    ("fastalloc_channel_requeued", "Taken items put back because their consumer died.", "requeued"),
)


class SnapshotCollector:
    """A prometheus_client collector over `latest()`, the monitor's newest Snapshot."""

    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        snapshot = self._latest()
        if snapshot is None:
            return
        yield from self._pools(snapshot)
        yield from self._channels(snapshot)
        yield from self._clients(snapshot)
        yield GaugeMetricFamily("fastalloc_shm_size_bytes", "Size of /dev/shm.", value=snapshot.shm_total)
        yield GaugeMetricFamily("fastalloc_shm_free_bytes", "Free space in /dev/shm.", value=snapshot.shm_free)
        yield CounterMetricFamily("fastalloc_daemon_dead_clients", "Dead client processes found by the monitor.",
                                  value=snapshot.dead_clients)
        yield CounterMetricFamily("fastalloc_daemon_recoveries", "Monitor recover() calls that repaired a pool.",
                                  value=snapshot.recoveries)
        yield GaugeMetricFamily("fastalloc_monitor_last_pass_timestamp_seconds", "When the monitor last ran.",
                                value=snapshot.time)

    @staticmethod
    def _pools(snapshot: Snapshot) -> Iterator[Metric]:
        gauges = {
            "capacity": GaugeMetricFamily("fastalloc_pool_capacity_slots", "Slots in the pool.",
                                          labels=["pool", "kind"]),
            "in_use": GaugeMetricFamily("fastalloc_pool_in_use_slots", "Slots allocated now.", labels=["pool"]),
            "peak": GaugeMetricFamily("fastalloc_pool_peak_slots", "Most slots allocated at once.", labels=["pool"]),
            "utilization": GaugeMetricFamily("fastalloc_pool_utilization_ratio", "Allocated / capacity, 0-1.",
                                             labels=["pool"]),
            "peak_utilization": GaugeMetricFamily("fastalloc_pool_peak_utilization_ratio", "Peak / capacity, 0-1.",
                                                  labels=["pool"]),
            "hit": GaugeMetricFamily("fastalloc_pool_hit_ratio", "Fraction of allocation attempts that succeeded.",
                                     labels=["pool"]),
            "clients": GaugeMetricFamily("fastalloc_pool_clients", "Processes in the pool's client table.",
                                         labels=["pool", "alive"]),
        }
        counters = [(CounterMetricFamily(name, text, labels=["pool"]), field, scale)
                    for name, text, field, scale in _POOL_COUNTERS]
        for sample in snapshot.pools:
            stats, pool = sample.stats, [sample.name]
            gauges["capacity"].add_metric([sample.name, sample.kind], stats.capacity)
            gauges["in_use"].add_metric(pool, stats.current_usage)
            gauges["peak"].add_metric(pool, stats.peak_usage)
            gauges["utilization"].add_metric(pool, stats.utilization_rate() / 100)
            gauges["peak_utilization"].add_metric(pool, stats.peak_utilization_rate() / 100)
            gauges["hit"].add_metric(pool, stats.hit_rate())
            alive = sum(1 for c in sample.clients if c.alive)
            gauges["clients"].add_metric([sample.name, "true"], alive)
            gauges["clients"].add_metric([sample.name, "false"], len(sample.clients) - alive)
            for family, field, scale in counters:
                family.add_metric(pool, getattr(stats, field) * scale)
        yield from gauges.values()
        yield from (family for family, _, _ in counters)

    @staticmethod
    def _channels(snapshot: Snapshot) -> Iterator[Metric]:
        families = [(GaugeMetricFamily(name, text, labels=["pool", "channel"]), field)
                    for name, text, field in _CHANNEL_GAUGES]
        families += [(CounterMetricFamily(name, text, labels=["pool", "channel"]), field)
                     for name, text, field in _CHANNEL_COUNTERS]
        for sample in snapshot.pools:
            for channel, stats in sample.stats.channels.items():
                for family, field in families:
                    family.add_metric([sample.name, channel], getattr(stats, field))
        yield from (family for family, _ in families)

    @staticmethod
    def _clients(snapshot: Snapshot) -> Iterator[Metric]:
        rss = GaugeMetricFamily("fastalloc_client_rss_bytes", "Resident set size of a client process.",
                                labels=["pid", "process"])
        uss = GaugeMetricFamily("fastalloc_client_uss_bytes", "Unique set size of a client process.",
                                labels=["pid", "process"])
        for client in snapshot.clients:
            labels = [str(client.pid), client.name]
            rss.add_metric(labels, client.rss)
            if client.uss is not None:
                uss.add_metric(labels, client.uss)
        yield rss
        yield uss


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not news; stay out of the daemon's log."""


class MetricsServer:
    """`GET /metrics` on host:port (port 0 picks a free one; see `.port`)."""

    def __init__(self, host: str, port: int, latest: Callable[[], Snapshot | None]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(latest))
        self._httpd = make_server(host, port, make_wsgi_app(registry), _Server, handler_class=_QuietHandler)
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fastalloc-shmd-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


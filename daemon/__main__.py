"""`fastalloc-shmd [--config pools.toml] [--socket PATH] [--metrics-port N]`: run the daemon in the foreground.

Start: load the config (or the embedded default), open its pools, bind the
control socket, start the monitor (and the metrics endpoint), print where to
attach, tell systemd READY=1. Then wait for signals: SIGHUP reloads the
config, SIGTERM or SIGINT stops cleanly (pools it owns are unlinked unless
`persist = true`) and exits 0.

The signals are blocked in every thread and taken with sigwait() in the main
thread, so no handler ever interrupts a pool operation half-way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import sys
import time
from typing import Any

from fastalloc_shm.errors import ConfigError, FastallocError

from . import config as daemon_config
from .monitor import Monitor
from .notify import notify, reloading
from .registry import Registry
from .server import ControlServer

log = logging.getLogger("fastalloc_shmd")
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastalloc-shmd", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", metavar="FILE.toml",
                        help="pools to run (default: one pool 'default', 1024 slots of 256 B)")
    parser.add_argument("--socket", metavar="PATH", help="control socket (default: $XDG_RUNTIME_DIR/fastalloc-shm/"
                        "control.sock, else /run/fastalloc-shm/control.sock if writable, else a temp dir)")
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="SECONDS",
                        help="monitor period (default 1.0)")
    parser.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on this port (0: any)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Under systemd the journal stamps each line itself.
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=args.log_level, format=fmt, stream=sys.stderr)
    # Blocked before any thread starts, so every thread inherits the mask and only sigwait() sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    daemon = Daemon(args)
    try:
        daemon.start()
    except (FastallocError, OSError, ImportError) as exc:
        print(f"fastalloc-shmd: {exc}", file=sys.stderr)
        daemon.stop()
        return 1
    while (signum := signal.sigwait(_SIGNALS)) == signal.SIGHUP:
        daemon.reload()
    log.info("%s: stopping", signal.Signals(signum).name)
    daemon.stop()
    return 0


class Daemon:
    """The running parts, started and stopped in order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.registry = Registry()
        self.config = daemon_config.EMBEDDED_DEFAULT
        self.server: ControlServer | None = None
        self.monitor: Monitor | None = None
        self.metrics: Any = None
        self.started = time.monotonic()

    def start(self) -> None:
        if self.args.config:
            self.config = daemon_config.load(self.args.config)
        self.registry.apply(self.config, strict=True)
        path = os.path.abspath(self.args.socket or daemon_config.choose_socket_path())
        daemon_config.prepare_socket_dir(path, self.config.access.socket_group)
        self.monitor = Monitor(self.registry, self.args.interval)
        self.monitor.start()
        if self.args.metrics_port is not None:
            self.metrics = _metrics_server(self.args.metrics_host, self.args.metrics_port, self.monitor)
        # The socket last: a client that gets an answer finds everything else up.
        self.server = ControlServer(path, self.registry, self.ping, self.config.access)
        self.server.start()
        print(self.banner(), flush=True)
        notify("READY=1", f"STATUS=serving {len(self.registry.names())} pool(s) on {path}")

    def reload(self) -> None:
        """SIGHUP: open pools added to the config; removed or changed ones are kept as they are (see Registry.apply)."""
        if not self.args.config:
            log.info("SIGHUP: running the embedded default (no --config); nothing to reload")
            return
        reloading()
        try:
            self.config = daemon_config.load(self.args.config)
            self.registry.apply(self.config, strict=False)
            log.info("SIGHUP: reloaded %s; pools: %s", self.args.config, ", ".join(self.registry.names()))
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, still running the previous one: %s", exc)
        notify("READY=1", f"STATUS=serving {len(self.registry.names())} pool(s)")

    def stop(self) -> None:
        """Stop serving, stop watching, then unlink the owned pools that do not persist."""
        notify("STOPPING=1")
        if self.server is not None:
            self.server.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.registry.close()
        log.info("stopped")

    def ping(self) -> dict[str, Any]:
        """The `ping` op's result."""
        return {
            "pid": os.getpid(),
            "version": _version(),
            "uptime": time.monotonic() - self.started,
            "pools": len(self.registry.names()),
            "config": self.config.source,
            "socket": self.server.path if self.server else None,
            "metrics": self.metrics.url if self.metrics else None,
        }

    def banner(self) -> str:
        """What is printed at start: where things are, and a snippet to paste into Python."""
        names = self.registry.names()
        first = names[0] if names else "jobs"
        lines = [
            f"fastalloc-shmd {_version()} (pid {os.getpid()}): pools {', '.join(names) or '(none)'}"
            f" from {self.config.source or 'the embedded default'}",
            f"control socket: {self.server.path}",
        ]
        if self.metrics:
            lines.append(f"metrics: {self.metrics.url}")
        lines += [
            "attach from Python (another terminal, same user):",
            "",
            "    from fastalloc_shm import attach",
            "    from fastalloc_shm.client import DaemonClient",
            f"    DaemonClient({self.server.path!r}).register([{first!r}])  # repaired if this process dies",
            f"    pool = attach({first!r})",
            '    h = pool.allocate({"hello": "world"}); print(pool.get(h)); pool.release(h)',
            "",
            "stop with Ctrl-C or SIGTERM (pools unlinked unless persist = true); SIGHUP reloads --config",
        ]
        return "\n".join(lines)


def _metrics_server(host: str, port: int, monitor: Monitor) -> Any:
    try:
        from .metrics import MetricsServer
    except ImportError as exc:
        hint = "pip install 'fastalloc-shm[daemon]'"
        raise ImportError(f"--metrics-port needs prometheus_client: {hint} ({exc})") from None
    return MetricsServer(host, port, lambda: monitor.latest)


def _version() -> str:
    try:
        return importlib.metadata.version("fastalloc-shm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())

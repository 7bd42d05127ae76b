"""A private redis-server for the run: started on a unix socket in a temp dir, stopped at the end.

No TCP port (``--port 0``), no persistence: nothing outlives the run. If the system package
is not installed the Redis rows say so instead of failing the run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 10.0  # seconds for the server to answer PING
STOP_TIMEOUT = 5.0


class RedisServer:
    """``with RedisServer() as server: server.url``; ``server.url`` is None if none could start."""

    process: subprocess.Popen | None = None
    url: str | None = None
    reason: str = ""

    def __init__(self, executable: str | None = None):
        self.executable = executable or shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
        self.tmp: str | None = None

    def __enter__(self) -> RedisServer:
        if self.executable is None:
            self.reason = "redis-server not found (install the system package, e.g. apt-get install redis-server)"
            return self
        self.tmp = tempfile.mkdtemp(prefix="fastalloc-bench-redis-")
        sock = Path(self.tmp) / "r.sock"
        cmd = [self.executable, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", "--dir", self.tmp, "--daemonize", "no",
               "--logfile", str(Path(self.tmp) / "redis.log")]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        try:
            self._wait_ready(sock)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, sock: Path) -> None:
        import redis

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.reason = f"redis-server exited with code {self.process.returncode} (see its log)"
                return
            if sock.exists():
                try:
                    client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1)
                    client.ping()
                    client.close()
                    self.url = f"unix://{sock}"
                    return
                except redis.RedisError:
                    pass
            time.sleep(0.02)
        self.reason = f"redis-server did not answer within {START_TIMEOUT:.0f} s"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        """Stop the server (TERM, then KILL) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __exit__(self, *exc) -> None:
        self.stop()

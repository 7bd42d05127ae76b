"""systemd's readiness protocol (sd_notify) with the socket module alone.

Under `Type=notify` systemd passes `$NOTIFY_SOCKET`, a unix datagram socket
(a path, or an abstract name written with a leading '@'); the service sends
newline-separated `KEY=value` states: READY=1 once it serves, RELOADING=1
and READY=1 around a reload, STOPPING=1 when it begins to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("fastalloc_shmd")


def notify(*states: str) -> bool:
    """Send `states` to the service manager; False when not run under one (or it did not listen)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        return True
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp systemd expects alongside it."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

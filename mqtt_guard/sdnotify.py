"""systemd's readiness protocol (sd_notify(3)), without libsystemd: one datagram to $NOTIFY_SOCKET.

A `Type=notify` unit (deploy/systemd/) is started when the broker says READY=1, i.e. once its listeners
are open, not when the process is forked; STOPPING=1 tells systemd a SIGTERM drain is under way. Outside
systemd (no NOTIFY_SOCKET) every call does nothing, so the broker never depends on it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("mqtt_guard")

ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "STATUS=...") to systemd; True when it was sent. A path
    starting with "@" is an abstract socket (Linux). Failures are logged, never raised: readiness
    reporting must not stop a broker."""
    path = os.environ.get(ENV)
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s (%s): %s", path, state.split("=", 1)[0], exc)
        return False
    return True

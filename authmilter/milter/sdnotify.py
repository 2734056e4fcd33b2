"""systemd's readiness protocol (sd_notify), which is one datagram to $NOTIFY_SOCKET.

Outside systemd the variable is unset and every call is a no-op; a failure to notify is logged by
the caller and never stops the milter.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send e.g. "READY=1"; True if a notification socket was there to send to."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):  # the abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(state.encode())
    return True

"""systemd's notify protocol (sd_notify), without libsystemd.

With `Type=notify` systemd passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). The agent sends
`READY=1` once its root tasks run, `WATCHDOG=1` at half the watchdog period, and `STOPPING=1`
when it begins to shut down. Outside systemd there is no socket and every call is a no-op.
A failed send is logged and ignored: notification must never take the agent down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from cloudd import log

_log = log.get("notify")


class Notifier:
    """Sends sd_notify datagrams to `NOTIFY_SOCKET`; safe to close twice."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        target = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if target.startswith("@"):
            self._address = "\0" + target[1:]
        elif target.startswith("/"):
            self._address = target
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; True when sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            _log.warning("notify_failed", message=assignments[0], error=str(exc))
            return False
        return True

    def ready(self, status: str = "running") -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None, *, pid: int | None = None
                      ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    `WATCHDOG_PID`, when set, must be this process: a child that inherited the environment
    must not ping on its parent's behalf.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != (pid if pid is not None else os.getpid())):
        return None
    return int(usec) / 2_000_000

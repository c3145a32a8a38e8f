"""A user of the web cloud, outside the VMs: writes an entry through the balancer every 100 ms.

For the e2e suite, the demo and the bench: while a fault is made, `Client` records every
request's outcome, and says afterwards how many seconds of requests failed, how long until the
site served again, and which acknowledged writes (201) the site no longer has.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from cloudd_lab.background import Background


def entries(url: str, *, timeout: float = 10.0) -> list[str]:
    """The bodies of every entry the site has, through the balancer at `url`."""
    with urllib.request.urlopen(f"{url}/entries", timeout=timeout) as reply:
        return [e["body"] for e in json.loads(reply.read())]


def write(url: str, body: str, *, timeout: float = 2.0) -> bool:
    """POST one entry; True when the site acknowledged it (201)."""
    with contextlib.suppress(OSError, urllib.error.URLError, TimeoutError):
        req = urllib.request.Request(f"{url}/entries", data=body.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return int(reply.status) == 201
    return False


def serves(url: str) -> bool:
    """The site answers a read through the balancer."""
    with contextlib.suppress(OSError, urllib.error.URLError, TimeoutError, ValueError):
        entries(url, timeout=5.0)
        return True
    return False


@dataclass
class Client(Background):
    """Writes an entry every `period` seconds from a thread, while in a `with` block."""

    url: str
    period: float = 0.1
    #: (unix time it was sent, ok) of every request
    results: list[tuple[float, bool]] = field(default_factory=list)
    #: when each write the site acknowledged was sent (unix time), by body, in order
    sent_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._background("writer")
        self._n = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._n += 1
            body = f"entry-{os.getpid()}-{self._n}"
            start = time.time()
            ok = write(self.url, body)
            self.results.append((start, ok))
            if ok:
                self.sent_at[body] = start
            self._stop.wait(self.period)

    def failed_seconds(self, since: float) -> float:
        """Seconds after `since` during which the site failed this client: from the start
        of each failed request to the start of the next request (a failing request may wait
        its whole timeout)."""
        after = [(t, ok) for t, ok in self.results if t >= since]
        return sum(nxt[0] - t for (t, ok), nxt in itertools.pairwise(after)
                   if not ok)

    def serving_again(self, since: float) -> float | None:
        """Seconds from `since` to the first success after the last failure (0: no failure;
        None: no success since the last failure yet)."""
        after = [(t, ok) for t, ok in self.results if t >= since]
        last_fail = max((t for t, ok in after if not ok), default=None)
        if last_fail is None:
            return 0.0
        back = next((t for t, ok in after if ok and t > last_fail), None)
        return None if back is None else back - since

    @property
    def acknowledged(self) -> list[str]:
        """The bodies the site acknowledged, in the order they were sent."""
        return list(self.sent_at)

    def wrote_since(self, since: float) -> bool:
        return any(ok for t, ok in self.results if t > since)

    def lost(self, url: str) -> list[str]:
        """The acknowledged writes the site does not have now."""
        stored = set(entries(url))
        return [b for b in self.acknowledged if b not in stored]

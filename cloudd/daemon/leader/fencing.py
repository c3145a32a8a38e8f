"""Fencing a dead host: power it off for good before its nodes start anywhere else.

The planner asks for a `Fence` when a host is dead by quorum and still runs nodes; the
controller performs it through a `Fencer`. `CommandFencer` runs the command the manifest gives
for that host (IPMI, a PDU, `virsh destroy` of a nested host...) and counts it done only when
the command exits 0 within its timeout: a fence that cannot be proven leaves the nodes where
they are (two copies of one VM are worse than a node down).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cloudd.config.model import Cloud
from cloudd.errors import PermanentError, TemporaryError

#: Seconds a fence command may take; a power switch answers in seconds, IPMI in tens of them.
FENCE_TIMEOUT = 60.0

#: How much of a failed fence command's standard error goes into the event log.
ERROR_TAIL = 200


@dataclass(frozen=True)
class CommandFencer:
    """Runs the configured fence command of a host (IPMI, a PDU, `virsh destroy`...)."""

    commands: Mapping[str, Sequence[str]]
    timeout: float = FENCE_TIMEOUT
    """Seconds before a fence command that has not finished counts as failed."""

    @classmethod
    def of(cls, cloud: Cloud, *, timeout: float = FENCE_TIMEOUT) -> CommandFencer:
        """The fence commands the manifest gives its pool hosts."""
        return cls({h.name: list(h.fence) for h in cloud.pool if h.fence}, timeout)

    async def fence(self, host: str) -> None:
        argv = self.commands.get(host)
        if not argv:
            raise PermanentError(f"no fence command configured for host {host}")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(self.timeout):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TemporaryError(f"fence command for {host} did not finish within "
                                 f"{self.timeout:g}s", delay=self.timeout) from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise TemporaryError(f"fence command for {host} exited {proc.returncode}: "
                                 f"{tail[0][:ERROR_TAIL]}")


class CloudFencer:
    """Fences with the commands of the manifest generation in force (they may change)."""

    def __init__(self, cloud: Callable[[], Cloud], *, timeout: float = FENCE_TIMEOUT) -> None:
        self._cloud, self.timeout = cloud, timeout

    async def fence(self, host: str) -> None:
        await CommandFencer.of(self._cloud(), timeout=self.timeout).fence(host)

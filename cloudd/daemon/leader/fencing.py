"""Fencing a dead host: power it off for good before its nodes start anywhere else.

The planner asks for a `Fence` when a host is dead by quorum and still runs nodes; the
controller performs it through a `Fencer`. `CommandFencer` runs the command the manifest gives
for that host (IPMI, a PDU, `virsh destroy` of a nested host...) and counts it done only when
the command exits 0 within its timeout: a fence that cannot be proven leaves the nodes where
they are (two copies of one VM are worse than a node down).

A two-host pool fences earlier, in the election (`cloudd.election.twohost`): a host that lost
its peer fences it before it may lead at all. `PeerFencer` runs that fence with the same
command and reports the outcome to the election; the controller's own fence of that host, once
this host leads, is then already proven (`CloudFencer`'s `proven`) and is not run again.

A host that a new generation has just added to the pool is not fenced yet (`joined`): its
agent, running but not yet a member, answers nobody until a pool host hands it the manifest,
a few seconds later; meanwhile it looks dead, and a leader that never listed its domains would
power it off as it joins. Its fence waits until `JOIN_GRACE` seconds after this agent took that
generation (a temporary failure: the controller tries again, and the nodes that wait on it
wait). Waiting is always safe: a fence delayed only delays placing what that host may run.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudd import children, log
from cloudd.config.model import Cloud
from cloudd.errors import ClouddError, PermanentError, TemporaryError

#: Seconds a fence command may take; a power switch answers in seconds, IPMI in tens of them.
FENCE_TIMEOUT = 60.0

#: How much of a failed fence command's standard error goes into the event log.
ERROR_TAIL = 200

#: Seconds after a generation added a host to the pool before that host may be fenced: pool
#: hosts offer the manifest to a member that does not answer at once and every 10 s after,
#: so an agent that runs has joined well within three offers.
JOIN_GRACE = 30.0


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
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        async with children.ended(proc):  # past the bound or cancelled: its session is killed
            try:
                async with asyncio.timeout(self.timeout):
                    _, err = await proc.communicate()
            except TimeoutError:
                raise TemporaryError(f"fence command for {host} did not finish within "
                                     f"{self.timeout:g}s", delay=self.timeout) from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise TemporaryError(f"fence command for {host} exited {proc.returncode}: "
                                 f"{tail[0][:ERROR_TAIL]}")


def grace_left(joined_at: float | None, *, now: float, grace: float = JOIN_GRACE) -> float:
    """Seconds before a host added to the pool at `joined_at` (None: in the pool since this
    agent started) may be fenced; 0 when it may be now."""
    return 0.0 if joined_at is None else max(0.0, joined_at + grace - now)


class CloudFencer:
    """Fences with the commands of the manifest generation in force (they may change); a host
    `proven` off already (a two-host pool's peer, fenced by the election) is not fenced
    again, and a host that has just `joined` the pool (the monotonic time this agent took the
    generation that added it; None: not lately) is not fenced before `JOIN_GRACE`."""

    def __init__(self, cloud: Callable[[], Cloud], *, timeout: float = FENCE_TIMEOUT,
                 proven: Callable[[str], bool] = lambda host: False,
                 joined: Callable[[str], float | None] = lambda host: None,
                 now: Callable[[], float] = lambda: 0.0) -> None:
        self._cloud, self.timeout, self._proven = cloud, timeout, proven
        self._joined, self._now = joined, now

    async def fence(self, host: str) -> None:
        if self._proven(host):
            log.get("fencing", cloud=self._cloud().name).info(
                "fence_skipped", host=host,
                reason=f"{host} was fenced before this agent could lead, and not seen since")
            return
        wait = grace_left(self._joined(host), now=self._now())
        if wait > 0:
            raise TemporaryError(f"{host} has just joined the pool, and its agent may not have "
                                 f"the manifest yet: it is fenced only if it is still dead "
                                 f"{wait:.0f} s from now", delay=wait)
        await CommandFencer.of(self._cloud(), timeout=self.timeout).fence(host)


class PeerFencer:
    """Runs a two-host pool's fence of the peer for the election, off the election's loop
    turn, and reports the outcome (`report(peer, ok, reason)`); one fence at a time."""

    def __init__(self, fencer: CloudFencer, *, cloud: str, me: str,
                 spawn: Callable[[str, Callable[[], Coroutine[Any, Any, None]]], None],
                 report: Callable[[str, bool, str], None]) -> None:
        self._fencer, self._spawn, self._report = fencer, spawn, report
        self._running: set[str] = set()
        self._log = log.get("fencing", cloud=cloud, node=me)

    def __call__(self, peer: str) -> None:
        if peer in self._running:
            return
        self._running.add(peer)
        self._spawn(f"fence-peer-{peer}", functools.partial(self._run, peer))

    async def _run(self, peer: str) -> None:
        self._log.warning("peer_fencing", host=peer,
                          reason="a two-host pool: this host acts only once the other is off")
        try:
            await self._fencer.fence(peer)
        except (ClouddError, OSError) as exc:
            self._log.error("fence_failed", host=peer, reason=str(exc))
            ok, reason = False, str(exc) or type(exc).__name__
        else:
            self._log.warning("host_fenced", host=peer,
                              reason="its fence command succeeded: it counts toward the "
                                     "quorum until it is seen again")
            ok, reason = True, "its fence command succeeded"
        finally:
            self._running.discard(peer)
        self._report(peer, ok, reason)

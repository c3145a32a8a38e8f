"""A pool host's duties for its cloud: a libvirt connection, the leader's fenced commands,
and its domain events forwarded to the leader at once.

The host agent (`cloudd.vmctl.hostagent`) does the work; this module opens its backend when
the member starts, answers the leader's `HostCommand`s through it, and forwards every domain
event of this cloud to whoever leads now: the leader's controller in this very process when
this host leads, a `DomainEventNote` through the `send` callable otherwise, nobody while an
election runs (the next leader re-observes every host anyway).

Who may command this host. A command runs only when its sender holds a lease this host granted
it for exactly the command's term, unexpired by this host's own clock (`holds_lease`, the
election's answer), and only when the cloud in force here allows it (`admission`). Anything
else is refused (`command_refused`, with the peer, term and reason) before the host agent sees
it, so a refused command never raises the host's persisted highest term: that store moves only
with terms this host granted a lease in. The leader's calls to its own host, in this process,
come through `execute` like any other (`cloudd.daemon.leader.hostcalls`).

The fencing token. In the agent the election reads the host agent's `highest-term` at start
and says what the host may start from (`fence`, `ElectionShell.host_fence`). When that file
held no term (set aside), the host runs no command at all, each refused with one precise
reason, until the election has relearned the terms from the other pool hosts; the proven
token is then written (`HostAgent.learn`) before the first command runs. A command whose term
the disk will not take (full) runs nothing and fails, to be retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud
from cloudd.daemon.host.admission import Grounds, refusal
from cloudd.daemon.network.catalogue import DomainEventNote
from cloudd.errors import TemporaryError
from cloudd.vmctl.backend import Backend, DomainEvent
from cloudd.vmctl.confine import Folders
from cloudd.vmctl.domains import SERIAL_LOG_DIR, DomainRenderer
from cloudd.vmctl.hostagent import (
    DEFAULT_IMAGE_DIRS,
    MANIFEST_CHECKED,
    CommandOutcome,
    HostAgent,
    HostCommand,
    HostResult,
)
from cloudd.vmctl.nodeseed import NodeSeeds

#: The libvirt connection when neither the manifest nor the agent's settings name one.
DEFAULT_URI = "qemu:///system"
#: Seconds after which a temporarily refused leader may try again: a lease is renewed several
#: times a second (a leader that just won, or a host that just came back, holds one within
#: this), and a new manifest generation reaches the hosts about as fast.
RETRY_AFTER = 1.0
#: Seconds between two tries to open the hypervisor connection, at most (doubling from the
#: error's own delay): libvirtd restarting takes a few seconds.
OPEN_RETRY_MAX = 10.0

OpenBackend = Callable[[str], Awaitable[Backend]]
#: Whether `member` holds an unexpired lease this host granted it for exactly `term`.
HoldsLease = Callable[[str, int], bool]
#: The fencing token the host agent may start from; None while it is not proven.
Fence = Callable[[], int | None]


def nobody(member: str, term: int) -> bool:
    """The default `holds_lease`: no member holds a lease, every command is refused."""
    return False


def libvirt_uri(cloud: Cloud, *, me: str, settings: AgentSettings) -> str:
    """The manifest's URI for this host, else the agent's own, else the system's."""
    mine = next((h.libvirt_uri for h in cloud.pool if h.name == me), None)
    return mine or settings.libvirt.uri or DEFAULT_URI


def seed_dir_of(settings: AgentSettings) -> str:
    """Where the hosts keep their nodes' seed ISOs: their first image folder (a setting every
    host of a pool shares, so that leader and host render the same `${seed}`)."""
    dirs = settings.libvirt.image_dirs
    return str(dirs[0]) if dirs else str(DEFAULT_IMAGE_DIRS[0])


def renderer_of(settings: AgentSettings) -> DomainRenderer:
    """The domain rendering of this agent: the same on every member of a pool (same port,
    PKI folder and first image folder)."""
    return DomainRenderer(port=settings.listen.port, pki_dir=str(settings.pki.ca.parent),
                          seed_dir=seed_dir_of(settings))


def folders_of(settings: AgentSettings) -> Folders:
    """Where this host's domains may keep their files, from its settings."""
    return Folders(images=tuple(str(d) for d in settings.libvirt.image_dirs),
                   logs=(SERIAL_LOG_DIR,),
                   host_root_share=settings.libvirt.lab_allow_host_root_share)


class HostDuties:
    """What a pool host does for the cloud (`run()` as one of the member's tasks)."""

    def __init__(self, *, me: str, cloud: Callable[[], Cloud], settings: AgentSettings,
                 state_dir: Path, open_backend: OpenBackend, leader: Callable[[], str],
                 send: Callable[[str, Any], None],
                 local: Callable[[str, DomainEvent], None],
                 holds_lease: HoldsLease = nobody, fence: Fence | None = None,
                 in_use: Callable[[], Cloud] | None = None) -> None:
        self.me, self._cloud, self.settings, self.state_dir = me, cloud, settings, state_dir
        #: the cloud with only its elastic roles' nodes in use (the record's): what the
        #: leader's commands are judged against (a candidate not in use has no disk to keep)
        self._in_use = in_use or cloud
        self._open, self._leader, self._send, self._local = open_backend, leader, send, local
        #: the election's answer to "does this member hold our lease for this term"
        self.holds_lease = holds_lease
        #: the election's fencing token for the host agent (None: it reads its own file)
        self._fence = fence
        #: False until the host agent holds a proven fencing token (see the module docstring)
        self.proven = fence is None
        #: the token a host agent of this member reached (a later one never starts below it)
        self._reached = 0
        # The same rendering as the leader's (same settings on every member).
        self.renderer = renderer_of(settings)
        self.folders = folders_of(settings)
        self.agent: HostAgent | None = None
        self.log = log.get("host", cloud=cloud().name, node=me)

    async def _open_when_up(self, uri: str) -> Backend:
        """The backend, opened again after each temporary failure (libvirtd restarting as the
        agent starts: it waits for it instead of exiting), at most every `OPEN_RETRY_MAX` s."""
        delay = 0.0
        while True:
            try:
                return await self._open(uri)
            except TemporaryError as e:
                delay = min(max(e.delay, 2 * delay), OPEN_RETRY_MAX)
                self.log.warning("host_backend_unavailable", host=self.me, uri=uri,
                                 reason=str(e), delay=delay)
                await asyncio.sleep(delay)

    async def run(self) -> None:
        """Open the backend, forward its events until cancelled, then close it."""
        from cloudd.vmctl.images import CopySettings  # a host's alone: not with the module

        uri = libvirt_uri(self._cloud(), me=self.me, settings=self.settings)
        backend = await self._open_when_up(uri)
        known = self._fence() if self._fence is not None else None
        if known is not None:
            known = max(known, self._reached)
        self.proven = self._fence is None or known is not None
        agent = HostAgent(backend, state_dir=self.state_dir, host=self.me,
                          highest_term=None if self._fence is None else (known or 0),
                          cloud=self._cloud().name,
                          image_dirs=tuple(self.settings.libvirt.image_dirs),
                          copy=CopySettings.of(self.settings.images),
                          seeds=NodeSeeds(cloud=self._cloud, seed_dir=Path(seed_dir_of(
                              self.settings)), pki_dir=self.settings.pki.ca.parent,
                              ca_file=self.settings.pki.ca, port=self.settings.listen.port))
        self.agent = agent
        self.log.info("host_ready", host=self.me, uri=uri)
        try:
            await agent.run_events(self.forward)
        finally:
            self.agent = None
            self._reached = max(self._reached, agent.highest_term)
            await agent.close()
            await backend.close()

    async def execute(self, sender: str, command: HostCommand) -> HostResult:
        """A command from `sender`: run when it holds this host's lease for the command's term
        and the cloud in force allows it, else refused with the reason."""
        agent = self.agent
        if agent is None:
            raise TemporaryError(f"the host agent of {self.me} is not open yet")
        refused = await self._unproven(sender, command, agent) or \
            self._refused(sender, command, agent)
        if refused is not None:
            return refused
        try:
            return await agent.execute(command)
        except OSError as e:  # the disk refused (a new term's token first): a failure to retry
            why = f"{command.op.value} on {self.me}: {e.strerror or e}"
            self.log.warning("command_failed", peer=sender, term=command.term,
                             domain=command.domain or None, reason=why)
            return HostResult(command=command, outcome=CommandOutcome.FAILED,
                              term_seen=agent.highest_term, message=why, retry_after=RETRY_AFTER)

    async def _unproven(self, sender: str, cmd: HostCommand,
                        agent: HostAgent) -> HostResult | None:
        """A refusal while the host agent's fencing token is not proven; once the election has
        proven it, it is written first (None: the command may go on)."""
        if self.proven:
            return None
        known = self._fence() if self._fence is not None else None
        if known is None:
            return self._refuse(sender, cmd, agent, retry_after=RETRY_AFTER, why=(
                f"{self.me} lost its fencing term (a state file was set aside) and runs no "
                f"host command until the other pool hosts have told it theirs"))
        try:
            await agent.learn(max(known, self._reached))
        except OSError as e:
            return self._refuse(sender, cmd, agent, retry_after=RETRY_AFTER, why=(
                f"{self.me} cannot save its relearned fencing term {known}: "
                f"{e.strerror or e}"))
        self.proven = True
        self.log.info("host_fence_relearned", term=agent.highest_term,
                      reason="the election proved it: host commands run again")
        return None

    def _refused(self, sender: str, cmd: HostCommand, agent: HostAgent) -> HostResult | None:
        if not self.holds_lease(sender, cmd.term):
            if cmd.term < agent.highest_term:
                why = f"term {cmd.term} is older than {agent.highest_term}"
                return self._refuse(sender, cmd, agent, why, outcome=CommandOutcome.STALE_TERM)
            why = f"{sender} holds no unexpired lease of {self.me} for term {cmd.term}"
            return self._refuse(sender, cmd, agent, why, retry_after=RETRY_AFTER)
        if cmd.op not in MANIFEST_CHECKED:
            return None  # names a domain only: HostAgent checks whose it is
        cloud = self._cloud()
        # the generation is the whole manifest's, as the leader computes it
        grounds = Grounds(cloud=self._in_use(), generation=self.renderer.generation(cloud),
                          render=self.renderer.render, folders=self.folders, me=self.me)
        no = refusal(cmd, grounds)
        if no is None:
            return None
        return self._refuse(sender, cmd, agent, no.reason,
                            retry_after=RETRY_AFTER if no.temporary else None)

    def _refuse(self, sender: str, cmd: HostCommand, agent: HostAgent, why: str, *,
                outcome: CommandOutcome = CommandOutcome.FAILED,
                retry_after: float | None = None) -> HostResult:
        self.log.warning("command_refused", peer=sender, term=cmd.term, op=cmd.op.value,
                         domain=cmd.domain or None, reason=why)
        return HostResult(command=cmd, outcome=outcome, term_seen=agent.highest_term,
                          message=why, retry_after=retry_after)

    def forward(self, event: DomainEvent) -> None:
        """A domain event of this host: to the leader, at once."""
        if event.meta is not None and event.meta.cloud != self._cloud().name:
            return
        leader = self._leader()
        if leader == self.me:
            self._local(self.me, event)
        elif leader:
            self._send(leader, DomainEventNote(self.me, event))

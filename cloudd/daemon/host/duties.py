"""A pool host's duties for its cloud: a libvirt connection, the leader's fenced commands,
and its domain events forwarded to the leader at once.

The host agent (`cloudd.vmctl.hostagent`) does the work; this module opens its backend when
the member starts, answers the leader's `HostCommand`s through it, and forwards every domain
event of this cloud to whoever leads now: the leader's controller in this very process when
this host leads, a `DomainEventNote` through the `send` callable otherwise, nobody while an
election runs (the next leader re-observes every host anyway).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud
from cloudd.daemon.network.catalogue import DomainEventNote
from cloudd.errors import PermanentError
from cloudd.vmctl.backend import Backend, DomainEvent
from cloudd.vmctl.hostagent import HostAgent, HostCommand, HostResult
from cloudd.vmctl.images import CopySettings

#: The libvirt connection when neither the manifest nor the agent's settings name one.
DEFAULT_URI = "qemu:///system"

OpenBackend = Callable[[str], Awaitable[Backend]]


def libvirt_uri(cloud: Cloud, *, me: str, settings: AgentSettings) -> str:
    """The manifest's URI for this host, else the agent's own, else the system's."""
    mine = next((h.libvirt_uri for h in cloud.pool if h.name == me), None)
    return mine or settings.libvirt.uri or DEFAULT_URI


class HostDuties:
    """What a pool host does for the cloud (`run()` as one of the member's tasks)."""

    def __init__(self, *, me: str, cloud: Callable[[], Cloud], settings: AgentSettings,
                 state_dir: Path, open_backend: OpenBackend, leader: Callable[[], str],
                 send: Callable[[str, Any], None],
                 local: Callable[[str, DomainEvent], None]) -> None:
        self.me, self._cloud, self.settings, self.state_dir = me, cloud, settings, state_dir
        self._open, self._leader, self._send, self._local = open_backend, leader, send, local
        self.agent: HostAgent | None = None
        self.log = log.get("host", cloud=cloud().name, node=me)

    async def run(self) -> None:
        """Open the backend, forward its events until cancelled, then close it."""
        uri = libvirt_uri(self._cloud(), me=self.me, settings=self.settings)
        backend = await self._open(uri)
        agent = HostAgent(backend, state_dir=self.state_dir, host=self.me,
                          image_dirs=tuple(self.settings.libvirt.image_dirs),
                          copy=CopySettings.of(self.settings.images))
        self.agent = agent
        self.log.info("host_ready", host=self.me, uri=uri)
        try:
            await agent.run_events(self.forward)
        finally:
            self.agent = None
            await agent.close()
            await backend.close()

    async def execute(self, command: HostCommand) -> HostResult:
        """A command from the leader (the host agent checks its term: the fencing token)."""
        if self.agent is None:
            raise PermanentError(f"{self.me} is not a pool host of {self._cloud().name}")
        return await self.agent.execute(command)

    def forward(self, event: DomainEvent) -> None:
        """A domain event of this host: to the leader, at once."""
        if event.meta is not None and event.meta.cloud != self._cloud().name:
            return
        leader = self._leader()
        if leader == self.me:
            self._local(self.me, event)
        elif leader:
            self._send(leader, DomainEventNote(self.me, event))

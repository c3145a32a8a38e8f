"""The agent's clouds: one transport, one event log, one local API, and a CloudMember for
the cloud whose manifest names this agent.

The manifest watcher (main.Agent) reports every manifest change here. A loaded manifest that
names this agent (as a pool host or a node) starts its `CloudMember`, or hands it the new
generation; a manifest that does not name it is noted and ignored; a removed manifest turns
the cloud to `ensure: stopped`, so that the leader takes down what the cloud created.

One transport port serves the agent; this version runs one cloud per agent at a time (a
second cloud naming the same agent is refused with a logged reason, and keeps running
nowhere else either until the first is removed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.client.api import ApiError
from cloudd.client.inspectdoc import CloudView, InspectDoc, Source
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud, Ensure
from cloudd.config.portable import portable_text
from cloudd.config.registry import Change, ManifestEvent
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member.cloudmember import CloudMember, addresses_of
from cloudd.daemon.network.catalogue import (
    InspectAnswer,
    InspectWanted,
    ManifestOffer,
    OperatorAnswer,
    OperatorRequest,
    register_all,
)
from cloudd.daemon.network.transport import PeerConnected, PeerUnreachable, Transport
from cloudd.daemon.node.boot import Seed, fetch_manifest
from cloudd.daemon.operator.commands import Operator, check_manifest, install_manifest
from cloudd.daemon.operator.inspectview import cloud_view
from cloudd.daemon.operator.queries import view_source
from cloudd.election.config import Timing
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.pki import PkiFiles
from cloudd.vmctl.backend import Backend
from cloudd.vmctl.identity import NodeIdentity


def timing_for(settings: AgentSettings) -> Timing:
    """The election core's timing from the agent's settings (one sentence per bad value)."""
    m, e = settings.membership, settings.election
    lease = e.lease
    return dataclasses.replace(
        Timing.production(), probe_interval=m.probe_interval, probe_timeout=m.probe_timeout,
        indirect_checks=m.indirect_probes, suspicion_mult=m.suspicion_mult,
        answer_timeout=e.answer_timeout, coordinator_timeout=e.coordinator_timeout,
        lease_duration=lease, renew_interval=lease / 4, lease_margin=lease / 8,
        inquiry_timeout=max(lease / 2, 2 * m.probe_interval), no_quorum=e.no_quorum,
    ).validate()


async def libvirt_backend(uri: str) -> Backend:
    from cloudd.vmctl.libvirt_backend import LibvirtBackend  # the one libvirt importer

    return await LibvirtBackend.open(uri)


class Clouds:
    """What an agent runs for the clouds it belongs to."""

    def __init__(self, settings: AgentSettings, *, events: EventLog,
                 backend_factory: Callable[[str], Awaitable[Backend]] = libvirt_backend,
                 node_side_factory: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.me = settings.name
        self.events = events
        self.codec = register_all()
        self.transport: Transport | None = None
        self.member: CloudMember | None = None
        self._backend_factory = backend_factory
        self._node_side_factory = node_side_factory
        self._have_member = asyncio.Event()
        self._leader_view: tuple[float, CloudView] | None = None
        #: manifest texts this agent installed itself (from the leader), by cloud
        self._installed: dict[str, str] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._locate: Callable[[str], Path | None] = lambda _cloud: None
        self._rescan: Callable[[], None] = lambda: None
        self.operator = Operator(self, locate=self._locate, rescan=self._rescan)
        self._seed: tuple[NodeIdentity, tuple[Seed, ...], Callable[[], None]] | None = None
        self.log = log.get("clouds", node=self.me)

    # -- manifests ------------------------------------------------------------------------
    def on_manifest(self, event: ManifestEvent) -> None:
        cloud = event.cloud
        if cloud is None or event.change is Change.REFUSED:
            return
        if event.change is Change.REMOVED:
            if self.member is not None and self.member.cloud.name == cloud.name:
                stopped = dataclasses.replace(cloud, ensure=Ensure.STOPPED,
                                              digest=cloud.digest + ":removed")
                self.member.update(stopped)
            return
        # the text the registry validated (read off the loop), not a second read of the file
        text = cloud.text
        self.adopt(cloud)
        member = self.member
        if (member is not None and member.cloud.name == cloud.name and text
                and self._installed.get(cloud.name) != text and not member.election.acting()
                and member.election.leader):
            # An operator dropped a new generation here, not on the leader: hand it over, so
            # that the leader installs and distributes it.
            task = asyncio.ensure_future(self._forward_drop(cloud, text))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _forward_drop(self, cloud: Cloud, text: str) -> None:
        try:
            result = await self.operator.command(
                "apply", {"text": portable_text(cloud, text), "cloud": cloud.name})
            self.log.info("manifest_forwarded", cloud=cloud.name, peer=result.get("leader"))
        except ClouddError as e:
            self.log.warning("manifest_not_forwarded", cloud=cloud.name, reason=str(e))

    def adopt(self, cloud: Cloud) -> None:
        """Take part in `cloud` (or take its new generation)."""
        names = {h.name for h in cloud.pool} | {n.name for n in cloud.nodes}
        if self.me not in names:
            self.log.info("cloud_not_mine", cloud=cloud.name)
            return
        if self.member is not None:
            if self.member.cloud.name != cloud.name:
                self.log.error("cloud_refused", cloud=cloud.name,
                               reason=f"this agent already serves {self.member.cloud.name}")
                return
            self.member.update(cloud)
            self._peers(cloud)
            return
        node_side = None
        if self._node_side_factory is not None and any(n.name == self.me for n in cloud.nodes):
            node_side = self._node_side_factory(me=self.me, cloud=cloud, settings=self.settings,
                                                report=self._report)
        self.member = CloudMember(
            settings=self.settings, cloud=cloud,
            timing=timing_for(self.settings), send=self._send, request=self._request,
            events=self.events, backend_factory=self._backend_factory, node_side=node_side)
        self.member.inspect_source = self.leader_doc
        self.log.info("cloud_joined", cloud=cloud.name,
                      as_=("host" if self.member.is_host else "node"))
        self._peers(cloud)
        self._have_member.set()

    def _peers(self, cloud: Cloud) -> None:
        if self.transport is None:
            return
        port = self.settings.listen.port
        for name, address in addresses_of(cloud).items():
            if name != self.me:
                self.transport.add_peer(name, address, port)

    def attach(self, *, locate: Callable[[str], Path | None], rescan: Callable[[], None]) -> None:
        """The agent's manifest folder, for the operator's commands and offered manifests."""
        self.operator = Operator(self, locate=locate, rescan=rescan)
        self._locate, self._rescan = locate, rescan

    async def _install_offer(self, offer: ManifestOffer) -> str:
        """A manifest from the leader (or for a member that does not have it yet)."""
        member = self.member
        if (member is not None and member.cloud.name == offer.cloud
                and offer.term < member.election.term):
            return f"refused: term {offer.term} is older than {member.election.term}"
        if self._installed.get(offer.cloud) == offer.text:
            return "already installed"
        cloud = await asyncio.to_thread(
            check_manifest, offer.text, where=self.settings.state_dir / "incoming",
            with_template=self.settings.libvirt.uri is not None)
        if cloud.name != offer.cloud:
            raise PermanentError(f"offered manifest declares {cloud.name}, not {offer.cloud}")
        self._installed[cloud.name] = offer.text
        path = await asyncio.to_thread(install_manifest, offer.text, cloud.name,
                                       folder=self.settings.manifest_dir, current=self._locate)
        self.log.info("manifest_installed", cloud=cloud.name, path=str(path),
                      origin=offer.origin, term=offer.term)
        self._rescan()
        return f"installed as {path}"

    # -- transport ------------------------------------------------------------------------
    async def request_any(self, peer: str, msg: Any) -> Any:
        return await self._request(peer, msg)

    async def ask_outside(self, name: str, address: str, msg: Any) -> Any:
        """A request to an agent of a cloud this agent is not part of (apply from outside)."""
        if self.transport is not None:
            self.transport.add_peer(name, address, self.settings.listen.port)
            return await self.transport.request(name, msg)
        pki = self.settings.pki
        transport = Transport(member=self.me, files=PkiFiles(pki.ca, pki.cert, pki.key),
                              handler=self._handle, codec=self.codec, rng=random.Random(),
                              settings=self.settings.transport)
        try:
            transport.add_peer(name, address, self.settings.listen.port)
            return await transport.request(name, msg)
        except (OSError, ssl.SSLError) as e:
            raise TemporaryError(f"{name} ({address}) cannot be reached: {e}") from e
        finally:
            await transport.close()

    def _send(self, peer: str, msg: Any) -> None:
        if self.transport is not None:
            self.transport.send(peer, msg)

    async def _request(self, peer: str, msg: Any) -> Any:
        if self.transport is None:
            raise TemporaryError("the transport is not started")
        return await self.transport.request(peer, msg)

    def _report(self, report: Any) -> None:
        member = self.member
        if member is None:
            return
        leader = member.election.leader
        if leader == self.me:
            member._node_report(self.me, report)
        elif leader:
            self._send(leader, report)

    async def _handle(self, peer: str, msg: Any) -> Any:
        if isinstance(msg, OperatorRequest):
            return await self.operator.answer(peer, msg)
        if isinstance(msg, ManifestOffer) and (
                msg.origin == "leader" or (msg.origin == "seed" and self.member is None)):
            return OperatorAnswer(True, json.dumps(await self._install_offer(msg)))
        if self.member is None:
            raise TemporaryError(f"{self.me} has no cloud yet")
        return await self.member.handle(peer, msg)

    def _on_event(self, event: PeerConnected | PeerUnreachable) -> None:
        if isinstance(event, PeerUnreachable) and self.member is not None:
            self.member.unreachable(event.peer)

    # -- root task ------------------------------------------------------------------------
    def seed(self, ident: NodeIdentity, seeds: tuple[Seed, ...],
             on_manifest: Callable[[], None]) -> None:
        """A booting node: ask these members for the manifest of `ident.cloud`."""
        self._seed = (ident, seeds, on_manifest)

    async def run(self) -> None:
        fetch: asyncio.Task[None] | None = None
        pki = self.settings.pki
        if self._seed is None and all(p.exists() for p in (pki.ca, pki.cert, pki.key)):
            # With a certificate, listen at once: a manifest may be handed to this agent by
            # another (a cloud started from outside, or from one of its hosts).
            self.transport = await self._open_transport()
        if self._seed is not None:
            # A booting node needs its port at once, to ask the hosts for the manifest.
            ident, seeds, rescan = self._seed
            self.transport = await self._open_transport()
            for seed in seeds:
                self.transport.add_peer(seed.name, seed.address, seed.port)

            async def ask(peer: str, msg: Any) -> Any:
                answer = await self._request(peer, msg)
                rescan()
                return answer

            fetch = asyncio.create_task(fetch_manifest(
                ident, seeds, ask=ask, folder=self.settings.manifest_dir,
                have=self._have_member), name="fetch-manifest")
        # An agent that no manifest names needs no port and no certificate yet.
        await self._have_member.wait()
        if fetch is not None:
            fetch.cancel()
        member = self.member
        assert member is not None
        if self.transport is None:
            self.transport = await self._open_transport()
        self._peers(member.cloud)
        try:
            # The member's duties run inside this root task: if one fails, the agent's one
            # shutdown path takes over (and systemd restarts the agent).
            await member.run()
        finally:
            if member.node_side is not None:
                member.node_side.detach()
            await self.transport.close()

    async def _open_transport(self) -> Transport:
        """The agent's port, with its certificate; retried while either is unusable (an
        operator can fix a missing certificate without restarting the agent)."""
        pki = self.settings.pki
        delay = 1.0
        while True:
            try:
                transport = Transport(member=self.me,
                                      files=PkiFiles(pki.ca, pki.cert, pki.key),
                                      handler=self._handle, on_event=self._on_event,
                                      codec=self.codec, rng=random.Random(),
                                      settings=self.settings.transport)
                await transport.start(str(self.settings.listen.address),
                                      self.settings.listen.port)
                return transport
            except (OSError, ssl.SSLError, ClouddError) as e:
                self.log.error("transport_unusable", reason=f"{type(e).__name__}: {e}",
                               retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    # -- local API ------------------------------------------------------------------------
    async def inspect(self, cloud: str | None) -> InspectDoc:
        """The inspect document: the leader's view when it can be had, else this agent's."""
        now = time.time()
        member = self.member
        if member is None:
            if cloud is not None:
                raise ApiError(f"this agent ({self.me}) serves no cloud yet, not {cloud!r}")
            return InspectDoc(answered_by=self.me, generated_at=now)
        if cloud is not None and cloud != member.cloud.name:
            raise ApiError(f"unknown cloud {cloud!r}: this agent serves {member.cloud.name}")
        leader = member.election.leader
        view: CloudView | None = None
        if member.election.acting():
            view = cloud_view(member, source=Source.LEADER, now=now)
        elif leader and leader != self.me:
            try:
                answer = await asyncio.wait_for(
                    self._request(leader, InspectWanted(member.cloud.name)), timeout=3.0)
                if isinstance(answer, InspectAnswer):
                    theirs = InspectDoc.from_json(json.loads(answer.doc))
                    view = next(c for c in theirs.clouds if c.name == member.cloud.name)
                    self._leader_view = (now, view)
            except (ClouddError, OSError, TimeoutError, StopIteration, ValueError) as e:
                self.log.info("inspect_leader_unreachable", peer=leader, reason=str(e))
        if view is None:
            own = cloud_view(member, source=Source.LOCAL, now=now)
            if self._leader_view is not None:
                at, last = self._leader_view
                source = view_source(leading=False, leader_view_at=at, now=now,
                                     stale_after=2 * member.election.core.timing.lease_duration)
                # the leader's last view, marked stale, with this agent's own leadership view
                view = dataclasses.replace(last, source=source, leadership=own.leadership)
            else:
                view = own
        return InspectDoc(answered_by=self.me, generated_at=now, clouds=(view,))

    def leader_doc(self) -> str:
        """What this agent answers when another asks it, as the leader, for its view."""
        member = self.member
        assert member is not None
        doc = InspectDoc(answered_by=self.me, generated_at=time.time(),
                         clouds=(cloud_view(member, source=Source.LEADER),))
        return json.dumps(doc.to_json())

    def status(self) -> dict[str, Any]:
        """This agent's own view, cheap and local (the leader's view is `inspect`)."""
        member = self.member
        if member is None:
            return {"agent": self.me, "cloud": None}
        election = member.election
        return {
            "agent": self.me,
            "cloud": member.cloud.name,
            "generation": member.cloud.digest,
            "leader": election.leader or None,
            "term": election.term,
            "acting": election.acting(),
            "leader_since": election.leader_since,
            "elections": election.elections,
            "members": {name: election.status(name).value for name in member.roster.names},
            # what the leader has heard from the nodes (empty elsewhere)
            "nodes": {name: {"phase": r.phase, "message": r.message, "term": r.term,
                             "services": {sv.name: sv.state for sv in r.services}}
                      for name, r in sorted(member.reports.items())},
            "node": (dataclasses.asdict(member.node_side.view())
                     if member.node_side is not None else None),
        }

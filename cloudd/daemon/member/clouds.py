"""The agent's clouds: one transport, and a CloudMember for the cloud whose manifest names
this agent.

The manifest watcher (main.Agent) reports every manifest change here. A loaded manifest that
names this agent (as a pool host or a node) starts its `CloudMember`, or hands it the new
generation; a manifest that does not name it is noted and ignored, unless it is a generation
of the cloud this agent serves: the agent was removed from it, and leaves it (`cloud_left`:
its member stops, and the agent serves no cloud until a manifest names it again; a seed older
than the generation that removed it is refused). Once a cloud runs, its
generations come from its replicated record: the leader writes its own file from it, and
every other member installs the leader's offers (never one older than the generation it
has). A file an operator drops or edits on a pool host is handed to the leader as an `apply`
(the acting leader does not take it directly either: it goes through the record). A removed
manifest file is not a stop order: it is logged (`manifest_file_missing`), the member keeps
the generation in force, and a pool host writes the file back from it (so that a restart
finds it); only an `ensure: stopped` generation stops a cloud.

One transport port serves the agent; this version runs one cloud per agent at a time (a
second cloud naming the same agent is refused with a logged reason, and keeps running
nowhere else either until the first is removed). Every message the transport delivers goes
through the dispatch table (`dispatch.deliver`) with the sender's certificate identity: the
member's duties are the `CloudMember`'s, manifest offers are taken here, and the operator's
duties (its commands relayed from other agents, the leader's inspect view) are served by the
room above, handed to `run()`. Only the cloud this agent serves sets its transport's peers:
a request to an agent of another cloud (an `apply` handed on from outside) goes through a
transport of its own, so a foreign manifest that reuses this cloud's host names cannot
redirect this agent's links.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudd import log
from cloudd.backoff import Backoff
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud
from cloudd.config.registry import Change, ManifestEvent
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member.cloudmember import CloudMember, NodeSideFactory, addresses_of
from cloudd.daemon.member.dispatch import (
    NO_ROSTER,
    Duty,
    Handler,
    InForce,
    deliver,
    log_refusal,
    seed_refusal,
)
from cloudd.daemon.member.manifests import ManifestFolder
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.network.catalogue import ManifestOffer, OfferOrigin, OperatorAnswer, register_all
from cloudd.daemon.network.transport import PeerConnected, PeerUnreachable, Transport
from cloudd.daemon.node.boot import Seed, fetch_manifest
from cloudd.election.config import Timing
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.pki import Identity, PkiFiles, identity_of_file
from cloudd.vmctl.backend import Backend
from cloudd.vmctl.identity import NodeIdentity

if TYPE_CHECKING:
    from cloudd.daemon.host.duties import OpenBackend

#: How the agent retries opening its port while its certificate or address is unusable: an
#: operator who fixes it sees the agent listen within half a minute, without a restart. One
#: agent, one port: no jitter needed.
OPEN_RETRY = Backoff(base=1.0, cap=30.0, jitter=0.0)


def timing_for(settings: AgentSettings) -> Timing:
    """The election core's timing from the agent's settings (one sentence per bad value)."""
    m, e = settings.membership, settings.election
    lease = e.lease
    return dataclasses.replace(
        Timing.production(), probe_interval=m.probe_interval, probe_timeout=m.probe_timeout,
        indirect_checks=m.indirect_probes, suspicion_mult=m.suspicion_mult,
        node_probe_timeout=m.node_probe_timeout, node_suspicion=m.node_suspicion,
        answer_timeout=e.answer_timeout, coordinator_timeout=e.coordinator_timeout,
        lease_duration=lease, renew_interval=lease / 4, lease_margin=lease / 8,
        inquiry_timeout=max(lease / 2, 2 * m.probe_interval), no_quorum=e.no_quorum,
    ).validate()


async def libvirt_backend(uri: str) -> Backend:
    from cloudd.vmctl.libvirt_backend import LibvirtBackend  # the one libvirt importer

    return await LibvirtBackend.open(uri)


@dataclass(frozen=True)
class Above:
    """What the operator's room serves through this agent's port while it runs."""

    operator_request: Handler
    """An `OperatorRequest` relayed by another agent; answers an `OperatorAnswer`."""
    inspect_wanted: Handler
    """Another agent asks this one, as the leader, for its view; answers an `InspectAnswer`."""
    hand_over: Callable[[Cloud, str], Awaitable[None]]
    """A new generation dropped on this agent while another leads: give it to the leader."""


class Clouds:
    """What an agent runs for the clouds it belongs to."""

    def __init__(self, settings: AgentSettings, *, events: EventLog, manifests: ManifestFolder,
                 clock: Clock = SYSTEM, backend_factory: OpenBackend = libvirt_backend,
                 node_side_factory: NodeSideFactory | None = None,
                 identity: Identity | None = None) -> None:
        self.settings, self.me = settings, settings.name
        #: what this agent's own certificate says (read when the port opens, unless given)
        self.identity = identity
        self.events, self.manifests, self.clock = events, manifests, clock
        self.codec = register_all()
        self.transport: Transport | None = None
        self.member: CloudMember | None = None
        self._backend_factory = backend_factory
        self._node_side_factory = node_side_factory
        self._have_member = asyncio.Event()
        #: the running member's task (`_run_member`)
        self._running: asyncio.Task[None] | None = None
        #: per cloud this agent left, the generation that removed it (`_leave`)
        self._left: dict[str, int] = {}
        #: manifest texts this agent installed itself (from the leader), by cloud
        self._installed: dict[str, str] = {}
        #: the leader's offers, installed one at a time off its connection (`_offer_later`)
        self._offers: asyncio.Task[None] | None = None
        self._next_offer: tuple[str, ManifestOffer] | None = None
        self._above: Above | None = None
        self._group: asyncio.TaskGroup | None = None
        self._later: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._seed: tuple[NodeIdentity, tuple[Seed, ...], Callable[[], None]] | None = None
        self.log = log.get("clouds", node=self.me)

    def serving(self) -> CloudMember | None:
        """The member serving this agent's cloud (None: no cloud yet)."""
        return self.member

    def snapshot(self) -> MemberSnapshot | None:
        """The member's view now, for the operator's room (None: no cloud yet)."""
        return self.member.snapshot() if self.member is not None else None

    # -- manifests ----------------------------------------------------------------------------
    def on_manifest(self, event: ManifestEvent) -> None:
        cloud = event.cloud
        if cloud is None or event.change is Change.REFUSED:
            return
        member = self.member
        mine = member is not None and member.cloud.name == cloud.name
        if event.change is Change.REMOVED:
            if member is not None and mine:
                self.log.warning("manifest_file_missing", cloud=cloud.name, path=str(event.path),
                                 reason="a missing file is not a stop order: the generation "
                                        "in force stays")
                if member.is_host:
                    self._spawn(f"restore-{cloud.name}", lambda: self._restore(member))
            return
        # the text the registry validated (read off the loop), not a second read of the file
        text = cloud.text
        dropped = (member is not None and mine and member.is_host and bool(text)
                   and self._installed.get(cloud.name) != text)
        if member is not None and dropped and member.election.acting():
            # Dropped on the acting leader: a new generation only through the record (an
            # apply performed here), and in force once a majority of the hosts has it.
            self._spawn(f"hand-over-{cloud.name}", lambda: self._hand_over(cloud, text))
            return
        self.adopt(cloud)
        if member is not None and dropped and member.election.leader:
            # An operator dropped a new generation on this pool host, not on the leader: hand
            # it over, so that the leader records and distributes it. (A node has no
            # operator verbs: the leader would refuse it.)
            self._spawn(f"hand-over-{cloud.name}", lambda: self._hand_over(cloud, text))

    async def _restore(self, member: CloudMember) -> None:
        """The manifest file of the cloud in force went missing here: write it back."""
        try:
            text = member.record.text_in_force()
            path = await self.install_text(member.cloud.name, text)
        except (ClouddError, OSError) as e:
            self.log.error("manifest_not_restored", cloud=member.cloud.name, reason=str(e))
            return
        self.log.warning("manifest_restored_from_record", cloud=member.cloud.name,
                         path=str(path), generation=member.generation or None,
                         reason="its file went missing here")

    async def install_text(self, cloud: str, text: str) -> Path:
        """Write a generation of `cloud` this agent got from the record (or its leader) into
        the manifest folder; read back, it is taken as the cloud's generation in force."""
        self._installed[cloud] = text
        return await self.manifests.install(text, cloud)

    async def _hand_over(self, cloud: Cloud, text: str) -> None:
        if self._above is None:
            self.log.warning("manifest_not_forwarded", cloud=cloud.name,
                             reason="the operator's room is not serving yet")
            return
        try:
            await self._above.hand_over(cloud, text)
        except (ClouddError, OSError) as e:
            self.log.warning("manifest_not_forwarded", cloud=cloud.name, reason=str(e))

    def adopt(self, cloud: Cloud) -> None:
        """Take part in `cloud` (or take its new generation)."""
        names = {h.name for h in cloud.pool} | {n.name for n in cloud.nodes}
        if self.me not in names:
            if self.member is not None and self.member.cloud.name == cloud.name:
                self._leave(cloud)
            else:
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
        self.member = CloudMember(
            settings=self.settings, cloud=cloud, timing=timing_for(self.settings),
            send=self.send, request=self.request, events=self.events, clock=self.clock,
            open_backend=self._backend_factory, node_side=self._node_side_factory,
            install=lambda text: self.install_text(cloud.name, text))
        self.log.info("cloud_joined", cloud=cloud.name,
                      as_=("host" if self.member.is_host else "node"))
        self._peers(cloud)
        self._have_member.set()

    def _leave(self, cloud: Cloud) -> None:
        """A generation of the cloud this agent serves no longer lists it: its member stops
        (election, duties), and this agent serves no cloud until a manifest names it again
        (a seed of a generation older than the one that removed it is refused)."""
        member = self.member
        assert member is not None
        number = member.record.newest()
        self._left[cloud.name] = number
        self.log.warning("cloud_left", cloud=cloud.name, generation=number or None,
                         reason=f"the generation of {cloud.name} in force no longer lists "
                                f"{self.me}: this agent serves no cloud now")
        self.member = None
        self._have_member.clear()
        if self._running is not None:
            self._running.cancel()

    def _peers(self, cloud: Cloud) -> None:
        if self.transport is None:
            return
        port = self.settings.listen.port
        for name, address in addresses_of(cloud).items():
            if name != self.me:
                self.transport.add_peer(name, address, port)

    async def _install_offer(self, peer: str, offer: ManifestOffer) -> str | None:
        """A manifest from the leader (the dispatch table checked it is the leader of the
        offer's term), or a seed for this agent that has no cloud yet (checked here against
        the offered manifest; None: refused)."""
        member = self.member
        if offer.origin == OfferOrigin.LEADER and (member is None
                                                   or offer.cloud != member.cloud.name):
            log_refusal(me=self.me, peer=peer, cloud=offer.cloud,
                        reason=f"ManifestOffer (origin leader) from {peer} is for cloud "
                               f"{offer.cloud}, which this agent does not serve")
            return None
        if member is not None and offer.origin == OfferOrigin.LEADER and (
                offer.generation < (newest := member.record.newest())):
            log_refusal(me=self.me, peer=peer, cloud=offer.cloud,
                        reason=f"ManifestOffer (origin leader) from {peer} is generation "
                               f"{offer.generation} of {offer.cloud}, older than generation "
                               f"{newest} this agent has")
            return None
        left = self._left.get(offer.cloud)
        if member is None and offer.origin == OfferOrigin.SEED and left is not None and (
                offer.generation < left):
            # A host that has not taken the generation without this agent yet still seeds
            # it: taken, this agent would campaign again in a pool that refuses it.
            log_refusal(me=self.me, peer=peer, cloud=offer.cloud,
                        reason=f"ManifestOffer (origin seed) from {peer} is generation "
                               f"{offer.generation} of {offer.cloud}, older than generation "
                               f"{left} that removed this agent from it")
            return None
        if self._installed.get(offer.cloud) == offer.text:
            return "already installed"
        # The leader's generation is trusted to come once per generation; a seed is bounded.
        cloud = await self.manifests.check(offer.text,
                                           with_template=self.settings.libvirt.uri is not None,
                                           trusted=offer.origin == OfferOrigin.LEADER)
        if cloud.name != offer.cloud:
            raise PermanentError(f"offered manifest declares {cloud.name}, not {offer.cloud}")
        if offer.origin == OfferOrigin.SEED:
            why = seed_refusal(peer, me=self.identity, cloud=cloud.name,
                               hosts={h.name for h in cloud.pool},
                               nodes={n.name for n in cloud.nodes})
            if why is not None or self.member is not None:
                log_refusal(me=self.me, peer=peer, cloud=cloud.name,
                            reason=why or f"{self.me} serves a cloud already")
                return None
        path = await self.install_text(cloud.name, offer.text)
        if member is not None and offer.origin == OfferOrigin.LEADER:
            member.record.offered = offer.generation
        self.log.info("manifest_installed", cloud=cloud.name, path=str(path),
                      origin=offer.origin, term=offer.term, generation=offer.generation)
        return f"installed as {path}"

    # -- transport ----------------------------------------------------------------------------
    async def ask_outside(self, name: str, address: str, msg: Any) -> Any:
        """A request to an agent of a cloud this agent is not part of (apply from outside),
        through a transport of its own: the names of another cloud's manifest never set this
        agent's peers."""
        transport = self._outside_transport()
        try:
            transport.add_peer(name, address, self.settings.listen.port)
            return await transport.request(name, msg)
        except (OSError, ssl.SSLError) as e:
            raise TemporaryError(f"{name} ({address}) cannot be reached: {e}") from e
        finally:
            await transport.close()

    def _outside_transport(self) -> Transport:
        pki = self.settings.pki
        return Transport(member=self.me, files=PkiFiles(pki.ca, pki.cert, pki.key),
                         handler=self._handle, codec=self.codec, rng=random.Random(),
                         settings=self.settings.transport)

    def send(self, peer: str, msg: Any) -> None:
        if self.transport is not None:
            self.transport.send(peer, msg)

    async def request(self, peer: str, msg: Any) -> Any:
        if self.transport is None:
            raise TemporaryError("the transport is not started")
        return await self.transport.request(peer, msg)

    async def _handle(self, sender: Identity, msg: Any) -> Any:
        """Everything the transport delivers, through the dispatch table."""
        member = self.member
        handlers: dict[Duty, Handler] = (dict.fromkeys(Duty, self._no_cloud_yet)
                                         if member is None else dict(member.handlers))
        handlers[Duty.MANIFEST_OFFER] = self._on_offer
        above = self._above
        handlers[Duty.OPERATOR_REQUEST] = (above.operator_request if above is not None
                                           else self._not_serving_yet)
        handlers[Duty.INSPECT_WANTED] = (above.inspect_wanted if above is not None
                                         else self._not_serving_yet)
        return await deliver(sender, msg, me=self.me, handlers=handlers,
                             here=member.in_force() if member is not None else self._no_roster(),
                             refused=member.refused if member is not None else None)

    def _no_roster(self) -> InForce:
        """What is in force while this agent serves no cloud: what its certificate says."""
        return InForce(me=self.identity.kind) if self.identity is not None else NO_ROSTER

    async def _no_cloud_yet(self, peer: str, msg: Any) -> Any:
        raise TemporaryError(f"{self.me} has no cloud yet")

    async def _not_serving_yet(self, peer: str, msg: Any) -> Any:
        raise TemporaryError(f"{self.me} is not serving its operator's duties yet")

    async def _on_offer(self, peer: str, offer: ManifestOffer) -> OperatorAnswer | None:
        # The dispatch table took the leader's generation from the leader only, and a seed
        # only from a host certificate and only while this agent serves no cloud.
        if offer.origin == OfferOrigin.LEADER:
            # A one-way message, read on the leader's connection: checking a big generation
            # must not hold back the lease messages queued behind it there.
            self._offer_later(peer, offer)
            return None
        done = await self._install_offer(peer, offer)
        return None if done is None else OperatorAnswer(True, json.dumps(done))

    def _offer_later(self, peer: str, offer: ManifestOffer) -> None:
        """Install the leader's offer in a task of its own, one at a time; an offer that
        arrives meanwhile replaces any still waiting (the newest generation is the one)."""
        self._next_offer = (peer, offer)
        if self._offers is None or self._offers.done():
            self._offers = asyncio.get_running_loop().create_task(self._install_offers())

    async def _install_offers(self) -> None:
        while self._next_offer is not None:
            (peer, offer), self._next_offer = self._next_offer, None
            try:
                await self._install_offer(peer, offer)
            except ClouddError as e:
                self.log.warning("manifest_refused", peer=peer, cloud=offer.cloud,
                                 term=offer.term, reason=str(e))
            except Exception as e:  # a bug here must not stop the next generation
                self.log.exception("manifest_refused", peer=peer, cloud=offer.cloud,
                                   term=offer.term, reason=str(e))

    def _on_event(self, event: PeerConnected | PeerUnreachable) -> None:
        if isinstance(event, PeerUnreachable) and self.member is not None:
            self.member.unreachable(event.peer)

    # -- root task ----------------------------------------------------------------------------
    def seed(self, ident: NodeIdentity, seeds: tuple[Seed, ...],
             on_manifest: Callable[[], None]) -> None:
        """A booting node: ask these members for the manifest of `ident.cloud`."""
        self._seed = (ident, seeds, on_manifest)

    def _spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start a task owned by this agent's task group (once `run` has started it)."""
        if self._group is None:
            self._later.append((name, factory))
        else:
            self._group.create_task(factory(), name=name)

    async def run(self, *, above: Above) -> None:
        """Open the port, serve the cloud once a manifest names this agent, until cancelled;
        every task started here ends with it."""
        self._above = above
        async with asyncio.TaskGroup() as tg:
            self._group = tg
            for name, factory in self._later:
                tg.create_task(factory(), name=name)
            self._later.clear()
            await self._serve(tg)

    async def _serve(self, tg: asyncio.TaskGroup) -> None:
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
                answer = await self.request(peer, msg)
                rescan()
                return answer

            fetch = tg.create_task(fetch_manifest(
                ident, seeds, ask=ask, folder=self.settings.manifest_dir,
                have=self._have_member), name="fetch-manifest")
        try:
            while True:
                # An agent that no manifest names needs no port and no certificate yet.
                await self._have_member.wait()
                if fetch is not None:
                    fetch.cancel()
                member = self.member
                if member is None:  # it left its cloud before it ran
                    self._have_member.clear()
                    continue
                if self.transport is None:
                    self.transport = await self._open_transport()
                self._peers(member.cloud)
                await self._run_member(member)
        finally:
            if self._offers is not None:
                self._offers.cancel()
            if self.transport is not None:
                await self.transport.close()

    async def _run_member(self, member: CloudMember) -> None:
        """Run `member` until it fails, this agent stops, or it leaves its cloud (`_leave`:
        then this agent serves no cloud, and waits for one as a fresh agent does)."""
        task = asyncio.get_running_loop().create_task(member.run(),
                                                      name=f"member-{member.cloud.name}")
        self._running = task
        try:
            # The member's duties run inside this root task: if one fails, the agent's one
            # shutdown path takes over (and systemd restarts the agent).
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.member is member or (current is not None and current.cancelling()):
                raise
        finally:
            self._running = None
            if member.node_side is not None:
                member.node_side.detach()

    async def _open_transport(self) -> Transport:
        """The agent's port, with its certificate; retried while either is unusable (an
        operator can fix a missing certificate without restarting the agent)."""
        pki = self.settings.pki
        failures = 0
        while True:
            try:
                if self.identity is None:
                    self.identity = identity_of_file(pki.cert)
                transport = Transport(member=self.me,
                                      files=PkiFiles(pki.ca, pki.cert, pki.key),
                                      handler=self._handle, on_event=self._on_event,
                                      codec=self.codec, rng=random.Random(),
                                      settings=self.settings.transport)
                await transport.start(str(self.settings.listen.address),
                                      self.settings.listen.port)
                return transport
            except (OSError, ssl.SSLError, ClouddError) as e:
                failures += 1
                delay = OPEN_RETRY.delay(failures, 0.0)
                self.log.error("transport_unusable", reason=f"{type(e).__name__}: {e}",
                               retry_in=delay)
            await asyncio.sleep(delay)

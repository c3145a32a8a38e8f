"""Clouds: manifests become a member, offers are installed, every message goes through the
dispatch table, and the tasks it starts end with it. No transport: the agent has no
certificate here, so it never opens its port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud, Ensure
from cloudd.config.portable import Recipient, portable_text, text_for
from cloudd.config.registry import Change, ManifestEvent
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.clouds import OPEN_RETRY, Above, Clouds
from cloudd.daemon.member.manifests import ManifestFolder
from cloudd.daemon.network.catalogue import (
    InspectWanted,
    ManifestOffer,
    OfferOrigin,
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
)
from cloudd.election.messages import Coordinator, WhoLeads
from cloudd.errors import PermanentError, TemporaryError
from cloudd.pki import Identity, MemberKind
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.backend import FakeBackend

from .fakes import DB, MANIFEST, FakeNodeSide, host, node, operator, settings, shop

#: the pool host pm2, as its certificate names it
PM2 = host("pm2")


@dataclasses.dataclass
class Agent:
    clouds: Clouds
    rescans: list[int]
    folder: Path
    events: EventLog


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    me = settings(tmp_path, "pm1")
    me.state_dir.mkdir(parents=True)
    events = EventLog.in_state_dir(me.state_dir)
    rescans: list[int] = []
    manifests = ManifestFolder(me.manifest_dir, locate=lambda cloud: None,
                               rescan=lambda: rescans.append(1))
    clouds = Clouds(me, events=events, manifests=manifests, clock=FakeClock(),
                    node_side_factory=FakeNodeSide, identity=host("pm1"))
    yield Agent(clouds, rescans, me.manifest_dir, events)
    events.close()


def loaded(cloud: Cloud) -> ManifestEvent:
    return ManifestEvent(Change.LOADED, cloud.source, cloud)


@contextlib.asynccontextmanager
async def following(clouds: Clouds) -> AsyncIterator[CloudMember]:
    """The member's election running and following pm2 in term 4 (it cannot lead: no host
    quorum here), until the block ends."""
    member = clouds.serving()
    assert member is not None
    election = asyncio.create_task(member.election.run())
    try:
        await asyncio.sleep(0)
        await clouds._handle(PM2, Coordinator(term=4))
        assert (member.election.leader, member.election.term) == ("pm2", 4)
        yield member
    finally:
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election


async def test_without_a_cloud_only_offers_are_taken(agent: Agent, tmp_path: Path) -> None:
    assert await agent.clouds._handle(PM2, WhoLeads(term=1)) is None  # refused: no roster
    cloud = shop(tmp_path / "elsewhere")
    text = portable_text(cloud, cloud.text)
    offer = ManifestOffer("shop", cloud.digest, text, OfferOrigin.SEED, 3)
    answer = await agent.clouds._handle(PM2, offer)
    assert answer == OperatorAnswer(True, json.dumps(
        f"installed as {agent.folder / 'shop.yaml'}"))
    assert (agent.folder / "shop.yaml").read_text() == text and agent.rescans == [1]
    assert await agent.clouds._handle(PM2, offer) == OperatorAnswer(
        True, json.dumps("already installed"))
    with pytest.raises(PermanentError, match="declares shop, not other"):
        await agent.clouds._handle(PM2, dataclasses.replace(offer, cloud="other", text=text
                                                              + "\n# other\n"))
    # an operator's apply is taken, but the operator's room serves nothing until the agent
    # runs; a host's relayed verbs are refused while this agent has no roster to know it by
    with pytest.raises(TemporaryError, match="pm1 is not serving its operator's duties yet"):
        await agent.clouds._handle(operator(), OperatorRequest(OperatorOp.APPLY, "shop", "{}"))
    with pytest.raises(PermanentError, match="this agent has no roster yet"):
        await agent.clouds._handle(PM2, OperatorRequest(OperatorOp.PLAN, "shop", "{}"))


async def test_a_manifest_naming_this_agent_makes_it_a_member(agent: Agent,
                                                              tmp_path: Path) -> None:
    other = shop(tmp_path / "other", MANIFEST.replace("pm1", "pm7"))
    agent.clouds.on_manifest(loaded(other))
    assert agent.clouds.serving() is None and agent.clouds.snapshot() is None
    cloud = shop(tmp_path / "manifests")
    agent.clouds.on_manifest(loaded(cloud))
    member = agent.clouds.serving()
    assert member is not None and member.is_host and member.cloud == cloud
    snap = agent.clouds.snapshot()
    assert snap is not None and snap.cloud == cloud
    # a second cloud naming this agent is refused; the first keeps running
    second = dataclasses.replace(other, name="second")
    agent.clouds.on_manifest(loaded(dataclasses.replace(second, pool=cloud.pool)))
    assert agent.clouds.serving() is member and member.cloud == cloud


async def test_a_missing_file_is_not_a_stop_order(agent: Agent, tmp_path: Path) -> None:
    """A removed manifest file changes nothing: logged, the generation in force stays, and a
    pool host writes the file back (a restart then finds it); only `ensure: stopped` stops."""
    cloud = shop(tmp_path / "manifests")
    agent.clouds.on_manifest(loaded(cloud))
    member = agent.clouds.serving()
    assert member is not None
    with capture_logs() as logs:
        agent.clouds.on_manifest(ManifestEvent(Change.REMOVED, cloud.source, cloud))
        assert member.cloud is cloud and member.cloud.ensure is Ensure.RUNNING
        (name, restore) = agent.clouds._later[-1]
        assert name == "restore-shop"
        await restore()
    assert [(e["event"], e.get("path")) for e in logs] == [
        ("manifest_file_missing", str(cloud.source)),
        ("manifest_restored_from_record", str(agent.folder / "shop.yaml"))]
    text = text_for(cloud, Recipient.HOST)
    assert (agent.folder / "shop.yaml").read_text() == text and agent.rescans == [1]
    # read back, it is the text this agent wrote: not an operator's new generation, so it
    # is not handed to the leader (a file the operator edits is)
    back = load_cloud(agent.folder / "shop.yaml", CATALOG)
    async with following(agent.clouds):
        agent.clouds.on_manifest(loaded(back))
        assert [n for n, _ in agent.clouds._later] == ["restore-shop"]
        agent.clouds.on_manifest(loaded(shop(tmp_path / "edited", MANIFEST + "# edited\n")))
        assert [n for n, _ in agent.clouds._later] == ["restore-shop", "hand-over-shop"]


async def test_a_member_takes_the_leaders_generation_only(agent: Agent,
                                                          tmp_path: Path) -> None:
    cloud = shop(tmp_path / "manifests")
    agent.clouds.on_manifest(loaded(cloud))
    member = agent.clouds.serving()
    assert member is not None
    text = portable_text(cloud, cloud.text) + "# next\n"
    seed = ManifestOffer("shop", cloud.digest, text, OfferOrigin.SEED, 4)
    leader = dataclasses.replace(seed, origin=OfferOrigin.LEADER)
    assert await agent.clouds._handle(PM2, seed) is None  # a member hears its leader only
    assert await agent.clouds._handle(PM2, leader) is None  # pm2 does not lead (yet)
    async with following(agent.clouds):
        assert await agent.clouds._handle(PM2, seed) is None
        # the leader offers this agent's own cloud, nothing else
        foreign = dataclasses.replace(leader, cloud="other", text=text.replace("shop", "other"))
        assert await agent.clouds._handle(PM2, foreign) is None
        assert agent.clouds._offers is not None
        await agent.clouds._offers  # installed off the connection, in a task of its own
        assert not agent.folder.exists() or list(agent.folder.iterdir()) == []
        assert await agent.clouds._handle(PM2, leader) is None  # a one-way message
        await agent.clouds._offers
        assert (agent.folder / "shop.yaml").read_text() == text


async def test_the_newest_of_the_leaders_offers_waiting_is_the_one_installed(
        agent: Agent, tmp_path: Path) -> None:
    cloud = shop(tmp_path / "manifests")
    agent.clouds.on_manifest(loaded(cloud))
    first, second = (portable_text(cloud, cloud.text) + f"# {n}\n" for n in ("one", "two"))
    async with following(agent.clouds):
        with capture_logs() as logs:
            for text in (first, second):
                offer = ManifestOffer("shop", cloud.digest, text, OfferOrigin.LEADER, 4)
                assert await agent.clouds._handle(PM2, offer) is None
            assert agent.clouds._offers is not None
            await agent.clouds._offers
        assert (agent.folder / "shop.yaml").read_text() == second
        assert [e["event"] for e in logs].count("manifest_installed") == 1


async def test_a_seed_must_name_its_sender_and_this_agent(agent: Agent,
                                                          tmp_path: Path) -> None:
    cloud = shop(tmp_path / "elsewhere")
    offer = ManifestOffer("shop", cloud.digest, portable_text(cloud, cloud.text),
                          OfferOrigin.SEED, 3)
    with capture_logs() as logs:
        assert await agent.clouds._handle(host("pm9"), offer) is None
        agent.clouds.identity = Identity("pm1", MemberKind.NODE, "shop")
        assert await agent.clouds._handle(PM2, offer) is None
    assert [e["reason"].split(": ", 1)[1] for e in logs] == [
        "the manifest does not list pm9 as a pool host",
        "the manifest does not list this agent (pm1, a node certificate of cloud shop) as one"]
    assert not agent.folder.exists() or list(agent.folder.iterdir()) == []
    assert agent.clouds.serving() is None


async def test_an_apply_to_another_cloud_never_moves_this_clouds_peers(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A foreign manifest whose pool reuses pm2's name, at another address: the request goes
    through a transport of its own, and this agent's link to pm2 stays where it was."""
    agent.clouds.on_manifest(loaded(shop(tmp_path / "manifests")))

    class Recording:
        def __init__(self) -> None:
            self.peers: list[tuple[str, str, int]] = []
            self.closed = False

        def add_peer(self, name: str, address: str, port: int) -> None:
            self.peers.append((name, address, port))

        async def request(self, name: str, msg: Any) -> Any:
            return OperatorAnswer(True, "{}")

        async def close(self) -> None:
            self.closed = True

    main, outside = Recording(), Recording()
    agent.clouds.transport = main  # type: ignore[assignment]
    agent.clouds._peers(agent.clouds.member.cloud)  # type: ignore[union-attr]
    before = list(main.peers)
    assert ("pm2", "192.0.2.71", 7760) in before
    monkeypatch.setattr(agent.clouds, "_outside_transport", lambda: outside)
    request = OperatorRequest(OperatorOp.APPLY, "foreign", "{}")
    assert (await agent.clouds.ask_outside("pm2", "198.51.100.9", request)).ok
    assert main.peers == before
    assert outside.peers == [("pm2", "198.51.100.9", 7760)] and outside.closed


class OperatorRoom:
    """The operator's room as Clouds sees it: records, and holds a hand-over open."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.handed: list[str] = []
        self.cancelled = asyncio.Event()

    async def operator_request(self, peer: str, msg: Any) -> Any:
        self.requests.append((peer, msg))
        return OperatorAnswer(True, "{}")

    async def inspect_wanted(self, peer: str, msg: Any) -> Any:
        self.requests.append((peer, msg))
        return "view"

    async def hand_over(self, cloud: Cloud, text: str) -> None:
        self.handed.append(cloud.name)
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()

    def above(self) -> Above:
        return Above(operator_request=self.operator_request,
                     inspect_wanted=self.inspect_wanted, hand_over=self.hand_over)


async def test_while_running_the_operators_duties_are_served_and_its_tasks_owned(
        agent: Agent, tmp_path: Path) -> None:
    above = OperatorRoom()
    cloud = shop(tmp_path / "manifests")
    agent.clouds.on_manifest(loaded(cloud))
    async with following(agent.clouds):
        # an operator drops a new generation here while pm2 leads: it goes to the leader
        newer = shop(tmp_path / "manifests", MANIFEST + "# edited\n")
        agent.clouds.on_manifest(loaded(newer))
        assert above.handed == []  # owned by the agent's task group: starts when it runs
        run = asyncio.create_task(agent.clouds.run(above=above.above()))
        try:
            for _ in range(100):
                if above.handed:
                    break
                await asyncio.sleep(0)
            assert above.handed == ["shop"]
            request = OperatorRequest(OperatorOp.PLAN, "shop", "{}")
            assert (await agent.clouds._handle(PM2, request)).ok
            assert await agent.clouds._handle(PM2, InspectWanted("shop")) == "view"
            assert above.requests == [("pm2", request), ("pm2", InspectWanted("shop"))]
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    assert above.cancelled.is_set()  # the hand-over ended with the agent


async def test_a_node_hands_no_generation_over(tmp_path: Path) -> None:
    """A node has no operator verbs: a manifest that changes in its folder stays there (its
    leader would refuse it); its leader's generation reaches it anyway."""
    me = settings(tmp_path, DB)
    me.state_dir.mkdir(parents=True)
    events = EventLog.in_state_dir(me.state_dir)
    manifests = ManifestFolder(me.manifest_dir, locate=lambda cloud: None, rescan=lambda: None)
    clouds = Clouds(me, events=events, manifests=manifests, clock=FakeClock(),
                    node_side_factory=FakeNodeSide, identity=node(DB))
    cloud = shop(tmp_path / "manifests")
    clouds.on_manifest(loaded(cloud))
    try:
        async with following(clouds) as member:
            assert member.is_node
            clouds.on_manifest(loaded(shop(tmp_path / "manifests", MANIFEST + "# edited\n")))
            assert member.cloud.text.endswith("# edited\n") and clouds._later == []
            # the leader's generation, a node's view of it, is installed all the same
            view = text_for(cloud, Recipient.NODE) + "# next\n"
            offer = ManifestOffer("shop", cloud.digest, view, OfferOrigin.LEADER, 4)
            assert await clouds._handle(PM2, offer) is None
            assert clouds._offers is not None
            await clouds._offers
            assert (me.manifest_dir / "shop.yaml").read_text() == view
    finally:
        events.close()


def test_the_port_is_retried_ever_more_slowly_up_to_half_a_minute() -> None:
    assert [OPEN_RETRY.delay(n, 0.5) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


async def test_an_offer_older_than_the_generation_held_is_refused(agent: Agent,
                                                                  tmp_path: Path) -> None:
    cloud = shop(tmp_path / "manifests")
    agent.clouds.on_manifest(loaded(cloud))
    newer, older = (portable_text(cloud, cloud.text) + f"# {n}\n" for n in ("three", "two"))
    async with following(agent.clouds):
        with capture_logs() as logs:
            for text, number in ((newer, 3), (older, 2)):
                offer = ManifestOffer("shop", cloud.digest, text, OfferOrigin.LEADER, 4, number)
                assert await agent.clouds._handle(PM2, offer) is None
                assert agent.clouds._offers is not None
                await agent.clouds._offers
    assert (agent.folder / "shop.yaml").read_text() == newer
    member = agent.clouds.serving()
    assert member is not None and member.record.newest() == 3
    assert [(e["event"], e.get("generation"), e.get("reason")) for e in logs
            if e["event"] in ("manifest_installed", "message_refused")] == [
        ("manifest_installed", 3, None),
        ("message_refused", None, "ManifestOffer (origin leader) from pm2 is generation 2 of "
                                  "shop, older than generation 3 this agent has")]


async def test_a_generation_that_no_longer_lists_this_agent_makes_it_leave(
        tmp_path: Path) -> None:
    me = settings(tmp_path, "pm1")
    me.state_dir.mkdir(parents=True)
    events = EventLog.in_state_dir(me.state_dir)
    manifests = ManifestFolder(me.manifest_dir, locate=lambda cloud: None, rescan=lambda: None)

    async def open_backend(uri: str) -> FakeBackend:
        return FakeBackend(clock=FakeClock().monotonic)

    clouds = Clouds(me, events=events, manifests=manifests, clock=FakeClock(),
                    backend_factory=open_backend, node_side_factory=FakeNodeSide,
                    identity=host("pm1"))
    cloud = shop(tmp_path / "manifests")
    clouds.on_manifest(loaded(cloud))
    member = clouds.serving()
    assert member is not None and member.host is not None
    member.record.offered = 3  # the leader's generation 3 is the one in force here
    run = asyncio.create_task(clouds._run_member(member))
    try:
        for _ in range(100):
            if member.host.agent is not None:
                break
            await asyncio.sleep(0)
        assert member.host.agent is not None  # its duties run
        without = shop(tmp_path / "next", MANIFEST.replace(
            "  - {name: pm1, address: 192.0.2.70}\n", ""))
        with capture_logs() as logs:
            clouds.on_manifest(loaded(without))
            await asyncio.wait_for(run, timeout=5)  # ends, without an error
        assert clouds.serving() is None and clouds.snapshot() is None
        assert [(e["event"], e["generation"], e["reason"]) for e in logs
                if e["event"] == "cloud_left"] == [
            ("cloud_left", 3, "the generation of shop in force no longer lists pm1: this "
                              "agent serves no cloud now")]

        # a host that has not taken that generation yet seeds the older one: refused
        text = portable_text(cloud, cloud.text)
        older = ManifestOffer("shop", cloud.digest, text, OfferOrigin.SEED, 4, 2)
        with capture_logs() as logs:
            assert await clouds._handle(PM2, older) is None
        assert [e["reason"] for e in logs if e["event"] == "message_refused"] == [
            "ManifestOffer (origin seed) from pm2 is generation 2 of shop, older than "
            "generation 3 that removed this agent from it"]
        assert not (me.manifest_dir / "shop.yaml").exists()
        # a later generation that lists this host again is taken, and makes it a member
        again = ManifestOffer("shop", cloud.digest, text + "# back\n", OfferOrigin.SEED, 5, 4)
        assert (await clouds._handle(PM2, again)).ok
        clouds.on_manifest(loaded(shop(tmp_path / "again", text + "# back\n")))
        back = clouds.serving()
        assert back is not None and back is not member
        # and the agent's own shutdown still ends a running member with a cancellation
        run = asyncio.create_task(clouds._run_member(back))
        await asyncio.sleep(0)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        events.close()

"""The replicated record through real members: two pool hosts on a fake wire (every message
through the dispatch table), a fake clock, their record files in temporary folders. A leader
gathers the record before it acts, writes to a majority before a command is done, and a new
leader inherits what the last one decided."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from shared.batchtype import C1, C2, HEAD, KEY, LOGIN, batch
from shared.batchtype import MANIFEST as BATCH_MANIFEST
from structlog.testing import capture_logs

from cloudd.config.model import Cloud
from cloudd.config.portable import Recipient, text_for
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member import keeper as keeping
from cloudd.daemon.member import record
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.clouds import timing_for
from cloudd.daemon.network.catalogue import (
    NodePhase,
    NodeReport,
    Record,
    RecordPush,
    RecordWanted,
    RoleAssignment,
    Version,
)
from cloudd.election.messages import Coordinator
from cloudd.errors import PermanentError, TemporaryError
from cloudd.vmctl.plan.model import DomainObs, DomainState

from .fakes import DB, MANIFEST, WEB1, WEB2, FakeNodeSide, Wire, host, node, settings, shop


@dataclasses.dataclass
class Host:
    member: CloudMember
    wire: Wire
    installed: list[str]
    events: EventLog
    election: asyncio.Task[None] | None = None


@pytest.fixture
async def made() -> AsyncIterator[list[Host]]:
    hosts: list[Host] = []
    yield hosts
    for h in hosts:
        if h.election is not None:
            h.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await h.election
        h.events.close()


def pool_host(tmp_path: Path, made: list[Host], name: str, *, text: str = MANIFEST,
              cloud: Cloud | None = None) -> Host:
    """Pool host `name` of the shop cloud (or `cloud`); what it installs in its folder is
    recorded."""
    agent = settings(tmp_path, name)
    agent.state_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog.in_state_dir(agent.state_dir)
    wire, installed = Wire(), []

    async def install(text: str) -> Path:
        installed.append(text)
        return agent.manifest_dir / "shop.yaml"

    member = CloudMember(settings=agent,
                         cloud=cloud or shop(tmp_path / f"{name}-manifests", text),
                         timing=timing_for(agent), send=wire.send, request=wire.request,
                         events=events, clock=FakeClock(), node_side=FakeNodeSide,
                         install=install)
    made.append(Host(member, wire, installed, events))
    return made[-1]


def link(*hosts: Host) -> None:
    """Each host's requests reach the other's dispatch table, with its host certificate."""
    by_name = {h.member.me: h for h in hosts}
    for h in hosts:
        async def answer(peer: str, msg: Any, me: str = h.member.me) -> Any:
            return await by_name[peer].member.handle(host(me), msg)
        h.wire.answer = answer


async def leads(leader: Host, term: int, *followers: Host) -> None:
    """`leader` acts in `term` (as its election would say), and the followers follow it."""
    leader.member.acting_term = lambda: term  # type: ignore[method-assign]
    for f in followers:
        if f.election is None:
            f.election = asyncio.create_task(f.member.election.run())
            await asyncio.sleep(0)
        f.member.acting_term = lambda: None  # type: ignore[method-assign]
        await f.member.handle(host(leader.member.me), Coordinator(term=term))
        assert (f.member.election.leader, f.member.election.term) == (leader.member.me, term)


@contextlib.asynccontextmanager
async def running(*hosts: Host) -> AsyncIterator[None]:
    """The members' own tasks (pushes, recoveries, installs) run in this block."""
    async with asyncio.TaskGroup() as tg:
        for h in hosts:
            h.member._group = tg
        yield
    for h in hosts:
        h.member._group = None


async def recover(h: Host, term: int) -> None:
    h.member.record.recover(term)
    for _ in range(500):  # bounded: files are written in threads
        if h.member.leading_term() == term:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{h.member.me} did not recover the record in term {term}")


def file_of(h: Host) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((h.member.state_dir / keeping.FILE).read_text())
    return data


async def test_a_new_leader_acts_only_once_a_majority_gave_it_the_record(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm2, 3, pm1)
    assert pm2.member.leading_term() is None and pm2.member.reconciling_term() is None
    async with running(pm1, pm2):
        with capture_logs() as logs:
            await recover(pm2, 3)
    assert pm2.member.reconciling_term() == 3
    # nobody had a record: it starts with the leader's manifest, and both hosts keep it
    [first] = pm2.member.record_in_force().generations
    assert (first.number, first.by, first.what) == (1, "pm2", "adopted from pm2's manifest file")
    assert first.text == text_for(pm2.member.cloud, Recipient.HOST)
    assert pm2.member.generation == 1 and pm2.installed == []  # its own file is that text
    assert file_of(pm1)["record"] == file_of(pm2)["record"]
    assert (file_of(pm1)["promised"], file_of(pm1)["record"]["version"]) == (
        3, {"term": 3, "seq": 2})
    assert oct((pm1.member.state_dir / keeping.FILE).stat().st_mode & 0o777) == "0o600"
    assert [e["event"] for e in logs if e["event"].startswith("record_")] == [
        "record_taken", "record_recovered"]


async def test_without_a_majority_the_leader_waits_and_does_not_act(
        tmp_path: Path, made: list[Host]) -> None:
    pm1 = pool_host(tmp_path, made, "pm1")  # pm2 does not answer
    pm1.member.acting_term = lambda: 3  # type: ignore[method-assign]
    task = asyncio.create_task(pm1.member.record.keeper.recover(  # type: ignore[union-attr]
        3, seed=pm1.member.record._first_generation))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done() and pm1.member.leading_term() is None
    with pytest.raises(TemporaryError, match="not the leader with the cloud's record in force"):
        await pm1.member.set_maintenance(DB, on=True)
    pm1.member.acting_term = lambda: None  # type: ignore[method-assign]
    await asyncio.wait_for(task, 5)  # it gives up once it no longer acts in that term
    assert pm1.member.leading_term() is None


async def test_a_recovery_of_an_older_term_never_takes_over_a_newer_one(
        tmp_path: Path, made: list[Host]) -> None:
    """The term-2 recovery still waits for its write when the agent leads term 4: term 4's
    write commits it past term 2's, and only term 4 is recovered (not the stale term 2)."""
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    answer = pm1.wire.answer
    assert answer is not None

    async def no_pushes(peer: str, msg: Any) -> Any:
        if isinstance(msg, RecordPush):
            raise TemporaryError(f"{peer} cannot be reached")
        return await answer(peer, msg)

    pm1.wire.answer = no_pushes
    await leads(pm1, 2, pm2)
    keeper = pm1.member.record.keeper
    assert keeper is not None
    async with running(pm1, pm2):
        with capture_logs() as logs:
            old = asyncio.create_task(keeper.recover(2, seed=pm1.member.record._first_generation))
            for _ in range(50):
                await asyncio.sleep(0.01)
            assert not old.done() and pm1.member.leading_term() is None
            pm1.wire.answer = answer
            await leads(pm1, 4, pm2)
            await recover(pm1, 4)
            await asyncio.wait_for(old, 5)
    assert pm1.member.leading_term() == 4
    assert [e["term"] for e in logs if e["event"] == "record_recovered"] == [4]


async def test_maintenance_is_written_to_a_majority_and_the_next_leader_keeps_it(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    async with running(pm1, pm2):
        await recover(pm1, 3)
        await pm1.member.set_maintenance(DB, on=True)
        with pytest.raises(PermanentError, match="unknown node 'pm9' in cloud shop"):
            await pm1.member.set_maintenance("pm9", on=True)
    assert pm1.member.maintenance.held == {DB}
    assert [n.run.value for n in pm1.member.controller.desired().nodes
            if n.name == DB] == ["manual"]
    assert file_of(pm2)["record"]["holds"] == [DB]
    # pm1 is gone; pm2 leads term 4. A damaged local maintenance file is no source.
    (pm2.member.state_dir / "maintenance.json").write_text("not json")
    again = pool_host(tmp_path, made, "pm2")  # pm2 restarted: its record from its file
    link(pm1, again)
    await leads(again, 4, pm1)
    async with running(pm1, again):
        await recover(again, 4)
    assert again.member.maintenance.held == {DB}
    assert again.member.snapshot().maintenance == {DB}
    assert [n.run.value for n in again.member.controller.desired().nodes
            if n.name == DB] == ["manual"]


async def test_a_write_not_acknowledged_by_a_majority_fails_and_may_still_land(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    async with running(pm1, pm2):
        await recover(pm1, 3)
        keeper = pm1.member.record.keeper
        assert keeper is not None
        keeper.wait = 0.05
        pm1.wire.answer = None  # pm2 cannot be reached
        with pytest.raises(TemporaryError, match=(
                r"^record version 3.3 of shop was persisted by 1 of 2 pool hosts within "
                r"0.05 s, and 2 are needed: not acknowledged, but it may still take effect$")):
            await pm1.member.set_maintenance(None, on=True)
        assert pm1.member.maintenance.held == frozenset()  # not in force: not committed
        link(pm1, pm2)  # pm2 answers again: the next round of tending pushes the record
        keeper.catch_up(frozenset({"pm2"}))
    assert pm1.member.maintenance.whole_cloud and pm1.member.reconciling_term() is None
    assert file_of(pm2)["record"]["holds"] == [""]


async def test_a_write_the_leader_cannot_persist_is_refused_in_one_sentence(
        tmp_path: Path, made: list[Host], monkeypatch: pytest.MonkeyPatch) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    async with running(pm1, pm2):
        await recover(pm1, 3)
        keeper = pm1.member.record.keeper
        assert keeper is not None
        before = keeper.held

        def full(path: Path, data: bytes) -> None:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(keeping, "write_durable", full)
        with pytest.raises(TemporaryError) as e:
            await pm1.member.set_maintenance(None, on=True)
        assert str(e.value) == (
            f"pm1 cannot persist record version 3.3 of shop in {keeper.path}: No space left "
            "on device; nothing was written, try again once it has room")
        assert keeper.held == before and pm1.member.maintenance.held == frozenset()
        monkeypatch.undo()
        await pm1.member.set_maintenance(None, on=True)
    assert pm1.member.maintenance.whole_cloud


async def test_generations_are_numbered_installed_and_prune_holds(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    async with running(pm1, pm2):
        await recover(pm1, 3)
        await pm1.member.set_maintenance(WEB1, on=True)
        await pm1.member.set_maintenance(WEB2, on=True)
        smaller = shop(tmp_path / "next", MANIFEST.replace(
            "    - {address: 192.0.2.178, image: /img/web2.qcow2}\n", ""))
        text = text_for(smaller, Recipient.HOST)
        gen, path = await pm1.member.new_generation(text, smaller, by="pm2", what="apply")
    assert (gen.number, gen.by, gen.ensure, path) == (2, "pm2", "running",
                                                      pm1.member.settings.manifest_dir
                                                      / "shop.yaml")
    assert pm1.installed == [text]  # the leader's file, read back by its folder's watcher
    assert record.latest(pm1.member.record_in_force()) == gen
    assert file_of(pm2)["record"]["generations"][1]["digest"] == record.digest_of(text)
    # the dropped node's hold went with it
    assert pm1.member.record_in_force().holds == (WEB1,)


async def test_a_leader_whose_file_is_behind_restores_it_from_the_record(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm2, 3, pm1)
    edited = shop(tmp_path / "edited", MANIFEST.replace("app_port: 8080", "app_port: 8081"))
    async with running(pm1, pm2):
        await recover(pm2, 3)
        await pm2.member.new_generation(text_for(edited, Recipient.HOST), edited, by="pm2",
                                        what="apply")
    # pm1 missed the file (its agent was down): it leads term 4 and restores it
    await leads(pm1, 4, pm2)
    with capture_logs() as logs:
        async with running(pm1, pm2):
            pm1.member.record.recover(4)
            for _ in range(500):  # bounded: files are written in threads
                if pm1.installed:
                    break
                await asyncio.sleep(0.01)
    assert pm1.installed == [text_for(edited, Recipient.HOST)]
    [restored] = [e for e in logs if e["event"] == "manifest_restored_from_record"]
    assert restored["generation"] == 2
    # it acts on nothing until it has read the record's generation back (its folder's
    # watcher hands it over): its pool, not the stale file's, is the quorum
    assert pm1.member.record.keeper is not None
    assert pm1.member.record.keeper.recovered_term == 4 and pm1.member.leading_term() is None
    pm1.member.update(shop(tmp_path / "read-back", text_for(edited, Recipient.HOST)))
    assert pm1.member.leading_term() == 4 and pm1.member.generation == 2


async def test_a_host_takes_only_its_leaders_writes(tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    await leads(pm1, 3, pm2)
    push = RecordPush(3, Record("shop", Version(3, 1)))
    wanted = RecordWanted("shop", 3)
    with capture_logs() as logs:
        for msg in (push, wanted):
            # a stranger's host certificate, and a node of this cloud (a tenant's VM: the
            # record holds every generation's secrets)
            for sender in (host("pm9"), node(DB)):
                with pytest.raises(PermanentError, match="only the leader of the current term"):
                    await pm2.member.handle(sender, msg)
        with pytest.raises(PermanentError, match="leads term 3, not 2"):
            await pm2.member.handle(host("pm1"), RecordPush(2, Record("shop", Version(2, 1))))
        with pytest.raises(PermanentError, match=r"^the record of cloud other, and this host "
                                                 r"keeps the record of shop$"):
            await pm2.member.handle(host("pm1"), RecordWanted("other", 3))
    assert [e["event"] for e in logs] == ["message_refused"] * 6
    assert not (pm2.member.state_dir / keeping.FILE).exists()
    assert (await pm2.member.handle(host("pm1"), push)).version == Version(3, 1)
    assert (await pm2.member.handle(host("pm1"), wanted)).record.version == Version(3, 1)


def test_a_damaged_record_file_is_moved_aside_and_the_host_starts_empty(
        tmp_path: Path) -> None:
    path = tmp_path / keeping.FILE
    path.write_text('{"record": {"cloud": "shop"}, "promised": "x"}')
    with capture_logs() as logs:
        held = keeping.load(path, "shop")
    assert held == record.empty("shop") and not path.exists()
    assert [p.name.startswith("record.json.corrupt-") for p in tmp_path.iterdir()] == [True]
    assert [(e["event"], e["path"]) for e in logs] == [("state_file_set_aside", str(path))]


async def test_the_same_text_again_is_the_generation_in_force(tmp_path: Path,
                                                             made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    async with running(pm1, pm2):
        await recover(pm1, 3)
        text = text_for(pm1.member.cloud, Recipient.HOST)
        gen, path = await pm1.member.new_generation(text, pm1.member.cloud, by="pm2",
                                                    what="apply")
    assert (gen.number, gen.what, path) == (1, "adopted from pm1's manifest file", None)
    assert len(pm1.member.record_in_force().generations) == 1


async def made_secrets(h: Host) -> None:
    """`h`, acting, writes the secrets its cloud needs generated (as on a round of tending)."""
    h.member.record.make_secrets()
    for _ in range(500):  # bounded: files are written in threads
        if h.member.record.generated() and not h.member.record._making:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{h.member.me} made no secret")


def batch_host(tmp_path: Path, made: list[Host], name: str) -> Host:
    """Pool host `name` of the hpc cloud (of the batch type, whose key the leader makes)."""
    return pool_host(tmp_path, made, name, cloud=batch(tmp_path / f"{name}-hpc"))


async def test_a_secret_the_leader_makes_is_made_once_and_inherited(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = batch_host(tmp_path, made, "pm1"), batch_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    assert pm1.member.cloud.generated == (KEY,)
    with capture_logs() as logs:
        async with running(pm1, pm2):
            await recover(pm1, 3)
            await made_secrets(pm1)
            first = dict(pm1.member.record.generated())
            version = pm1.member.record_in_force().version
            pm1.member.record.make_secrets()  # held now: nothing more to write
            edited = batch(tmp_path / "edited", BATCH_MANIFEST.replace(
                "/img/login.qcow2", "/img/login-2.qcow2"))
            await pm1.member.new_generation(text_for(edited, Recipient.HOST), edited,
                                            by="pm1", what="apply")
    made_here = pm1.member.record.generated()
    assert made_here == first  # not drawn again for the next generation
    [(name, value)] = made_here.items()
    assert name == "munge.key" and len(value) == 1024  # the random bytes as they are
    assert version == Version(3, 3)  # recovery's write, then the secret's
    assert pm1.member.record_in_force().version == Version(3, 4)
    # on a majority: the other host's file holds it
    assert file_of(pm2)["record"]["generated"] == [[name, base64.b64encode(value).decode()]]
    [event] = [e for e in logs if e["event"] == "secrets_generated"]
    assert (event["names"], event["term"]) == (["munge.key"], 3)
    assert not any(base64.b64encode(value).decode() in repr(e) for e in logs)
    # pm1 is gone; pm2 leads term 4 and hands out the same key to the roles that need it
    await leads(pm2, 4, pm1)
    async with running(pm1, pm2):
        pm2.member.record.recover(4)
        for _ in range(500):  # bounded: files are written in threads
            if pm2.member.record.keeper is not None and \
                    pm2.member.record.keeper.recovered_term == 4:
                break
            await asyncio.sleep(0.01)
        # its file is behind the record's latest generation: it acts once it read it back
        pm2.member.update(batch(tmp_path / "read-back", text_for(edited, Recipient.HOST)))
        assert pm2.member.leading_term() == 4
        pm2.member.record.make_secrets()
    assert pm2.member.record.generated() == made_here
    assert not pm2.member.record._making
    pm2.member.reports.update({n: NodeReport(node=n, term=4, generation="",
                                             phase=NodePhase.READY) for n in (HEAD, C1)})
    pm2.member._assign(4, frozenset({HEAD, C1, C2, LOGIN}))
    sent = {peer: a.secrets for peer, a in pm2.wire.of(RoleAssignment)}
    mine = (("munge.key", base64.b64encode(value).decode()),)
    assert sent == {HEAD: mine, C1: mine, C2: mine, LOGIN: ()}


async def test_a_generation_that_changes_two_pool_hosts_is_refused(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    hosts = "  - {name: pm2, address: 192.0.2.71, fence: [\"true\"]}\n"
    two = shop(tmp_path / "two", MANIFEST.replace(hosts, hosts + (
        "  - {name: pm3, address: 192.0.2.72}\n  - {name: pm4, address: 192.0.2.73}\n")))
    one = shop(tmp_path / "one", MANIFEST.replace(hosts, hosts + (
        "  - {name: pm3, address: 192.0.2.72}\n")))
    async with running(pm1, pm2):
        await recover(pm1, 3)
        with capture_logs() as logs, pytest.raises(PermanentError, match=(
                r"^the new generation of shop adds pm3, pm4: a generation may add or remove "
                r"one pool host at a time")):
            await pm1.member.new_generation(text_for(two, Recipient.HOST), two, by="pm2",
                                            what="apply")
        assert [(e["event"], e["op"]) for e in logs] == [("command_refused", "apply")]
        assert len(pm1.member.record_in_force().generations) == 1 and pm1.installed == []
        # one host at a time is taken
        gen, _ = await pm1.member.new_generation(text_for(one, Recipient.HOST), one, by="pm2",
                                                 what="apply")
        assert gen.number == 2
        # and the next step is measured against the record's latest generation, whatever
        # is in force in this agent's folder yet: pm3 and pm4 against {pm1, pm2, pm3}
        gen, _ = await pm1.member.new_generation(text_for(two, Recipient.HOST), two, by="pm2",
                                                 what="apply")
        assert gen.number == 3


async def test_a_host_that_a_written_generation_leaves_out_makes_it_its_manifest(
        tmp_path: Path, made: list[Host], monkeypatch: pytest.MonkeyPatch) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    edited = shop(tmp_path / "edited", MANIFEST.replace("app_port: 8080", "app_port: 8081"))
    alone = shop(tmp_path / "alone", MANIFEST.replace(
        "  - {name: pm2, address: 192.0.2.71, fence: [\"true\"]}\n", ""))
    async with running(pm1, pm2):
        await recover(pm1, 3)
        # a generation that keeps pm2 reaches it as the leader's offer, not from the record
        await pm1.member.new_generation(text_for(edited, Recipient.HOST), edited, by="pm1",
                                        what="apply")
    assert pm2.installed == []
    # the leader has listed pm2's domains: it holds none
    view = dataclasses.replace(pm1.member.controller.view(),
                               hosts={"pm1": ((), None), "pm2": ((), None)})
    monkeypatch.setattr(pm1.member.controller, "view", lambda: view)
    with capture_logs() as logs:
        async with running(pm1, pm2):
            text = text_for(alone, Recipient.HOST)
            gen, _ = await pm1.member.new_generation(text, alone, by="pm1", what="apply")
    # pm2 took the write (the pool in force still lists it) and found itself left out
    assert pm2.installed == [text]
    [removed] = [e for e in logs if e["event"] == "member_removed"]
    assert (removed["node"], removed["generation"], gen.number) == ("pm2", 3, 3)
    assert removed["reason"] == ("generation 3 of shop no longer lists pm2 in its pool: it "
                                 "leaves the cloud")
    # the same record pushed again changes nothing more
    async with running(pm1, pm2):
        await pm2.member.handle(host("pm1"), RecordPush(3, pm1.member.record_in_force()))
    assert pm2.installed == [text]


async def test_a_host_that_holds_domains_of_the_cloud_is_not_removed(
        tmp_path: Path, made: list[Host], monkeypatch: pytest.MonkeyPatch) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    alone = shop(tmp_path / "alone", MANIFEST.replace(
        "  - {name: pm2, address: 192.0.2.71, fence: [\"true\"]}\n", ""))
    text = text_for(alone, Recipient.HOST)
    controller = pm1.member.controller

    def listed(domains: tuple[DomainObs, ...]) -> None:
        view = dataclasses.replace(controller.view(), hosts={"pm1": ((), None),
                                                             "pm2": (domains, None)})
        monkeypatch.setattr(controller, "view", lambda: view)

    async with running(pm1, pm2):
        await recover(pm1, 3)
        with pytest.raises(TemporaryError, match="has not listed the domains of pm2 yet"):
            await pm1.member.new_generation(text, alone, by="pm1", what="apply")
        listed((DomainObs("pm2", WEB1, "shop", DomainState.RUNNING),))
        with capture_logs() as logs, pytest.raises(PermanentError, match=(
                f"^pm2 still holds {WEB1} of shop, and the new generation removes it")):
            await pm1.member.new_generation(text, alone, by="pm1", what="apply")
        assert [(e["event"], e["op"]) for e in logs] == [("command_refused", "apply")]
        assert len(pm1.member.record_in_force().generations) == 1
        controller.fenced.add("pm2")  # its fence command powered it off
        gen, _ = await pm1.member.new_generation(text, alone, by="pm1", what="apply")
    assert gen.number == 2


async def test_a_drain_is_written_to_a_majority_and_the_next_leader_carries_it_on(
        tmp_path: Path, made: list[Host]) -> None:
    pm1, pm2 = pool_host(tmp_path, made, "pm1"), pool_host(tmp_path, made, "pm2")
    link(pm1, pm2)
    await leads(pm1, 3, pm2)
    async with running(pm1, pm2):
        await recover(pm1, 3)
        await pm1.member.set_drain("pm2", on=True, by="pm1")
        with pytest.raises(PermanentError, match="unknown host 'pm9'"):
            await pm1.member.set_drain("pm9", on=True)
    assert pm1.member.controller.desired().drained == {"pm2"}
    assert file_of(pm2)["record"]["drains"][0]["host"] == "pm2"
    # pm1 is gone; pm2, restarted, leads term 4 with the record from its file
    again = pool_host(tmp_path, made, "pm2")
    link(pm1, again)
    await leads(again, 4, pm1)
    async with running(pm1, again):
        await recover(again, 4)
        desired = again.member.controller.desired()
        assert desired.drained == {"pm2"} and desired.move_stateful == frozenset()
        assert [d.host for d in again.member.snapshot().drains.entries] == ["pm2"]
        await again.member.set_drain("pm2", on=False)
    assert again.member.controller.desired().drained == frozenset()

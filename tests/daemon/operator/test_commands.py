"""The operator's commands: one handler each, performed by the acting leader, handed to it by
any other member, and handed to a pool host from outside the cloud. Real members and manifest
folders; a fake wire between the agents."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from cloudd.config.model import Cloud, Ensure
from cloudd.config.portable import portable_text
from cloudd.config.yamlsrc import MAX_MANIFEST_BYTES
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.drain import Drains
from cloudd.daemon.leader.maintenance import Maintenance
from cloudd.daemon.member import record
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.manifests import Checker, ManifestFolder
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.network.catalogue import (
    Generation,
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    Record,
)
from cloudd.daemon.operator.commands import LOCAL_OPS, RULES, Operator, stopped_text
from cloudd.errors import ConfigError, PermanentError, TemporaryError

from ..member.fakes import DB, MANIFEST, FakeNodeSide, Wire, member, shop


class Seat:
    """A real member, seen as acting (or following `leader`) in term 7, with a record of its
    own that every write reaches at once (the replication is tests/daemon/member's)."""

    def __init__(self, m: CloudMember, *, acting: bool, leader: str) -> None:
        self.member, self.acting, self.leader = m, acting, leader
        self.record = Record("shop")
        self.install: Callable[[str], Awaitable[Path]] | None = None

    def snapshot(self) -> MemberSnapshot:
        last = record.latest(self.record)
        return dataclasses.replace(self.member.snapshot(), acting=self.acting,
                                   leader=self.leader, term=7,
                                   maintenance=Maintenance.of(self.record.holds).held,
                                   drains=Drains(self.record.drains),
                                   generation=last.number if last else 0)

    def reset_failures(self, node: str) -> None:
        self.member.reset_failures(node)

    async def set_maintenance(self, subject: str | None, *, on: bool) -> None:
        self.record = record.with_hold(self.record, term=7, subject=subject, on=on,
                                       nodes=[n.name for n in self.member.cloud.nodes])

    async def set_drain(self, host: str, *, on: bool, move_stateful: bool = False,
                        by: str = "") -> None:
        self.record = record.with_drain(self.record, term=7, host=host, on=on,
                                        hosts=[h.name for h in self.member.cloud.pool],
                                        move_stateful=move_stateful, at=2.0, by=by)

    async def cleanup_service(self, service: str) -> None:
        await self.member.cleanup_service(service)

    async def new_generation(self, text: str, cloud: Cloud, *, by: str,
                             what: str) -> tuple[Generation, Path | None]:
        self.record = record.with_generation(self.record, term=7, text=text, at=1.0, by=by,
                                             what=what, ensure=cloud.ensure.value,
                                             nodes=[n.name for n in cloud.nodes])
        gen = record.latest(self.record)
        assert gen is not None and self.install is not None
        return gen, await self.install(text)

    def record_in_force(self) -> Record:
        return self.record


@dataclasses.dataclass
class Agent:
    op: Operator
    wire: Wire
    seat: Seat | None
    folder: Path
    rescans: list[str]
    events: EventLog
    outside: list[tuple[str, str, Any]]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[dict[str, Agent]]:
    made: dict[str, Agent] = {}
    yield made
    for a in made.values():
        a.events.close()


def agent(tmp_path: Path, agents: dict[str, Agent], name: str, *, acting: bool = False,
          leader: str = "", serving: bool = True, checker: Checker | None = None) -> Agent:
    wire, clock = Wire(), FakeClock()
    home = tmp_path / name
    home.mkdir(parents=True, exist_ok=True)
    events = EventLog.in_state_dir(home)
    seat = Seat(member(tmp_path, name, wire=wire, clock=clock, events=events),
                acting=acting, leader=leader) if serving else None
    rescans: list[str] = []
    outside: list[tuple[str, str, Any]] = []
    folder = home / "manifests"
    manifests = ManifestFolder(folder, locate=lambda c: None,
                               rescan=lambda: rescans.append("rescan"), checker=checker)
    if seat is not None:
        seat.install = lambda text: manifests.install(text, "shop")

    async def ask_outside(name: str, address: str, msg: Any) -> Any:
        outside.append((name, address, msg))
        if name in agents:
            return await agents[name].op.answer("outsider", msg)
        raise TemporaryError(f"{name} ({address}) cannot be reached")

    op = Operator(me=name, member=lambda: seat, request=wire.request, ask_outside=ask_outside,
                  manifests=manifests, events=events, clock=clock)
    made = Agent(op, wire, seat, folder, rescans, events, outside)
    agents[name] = made
    return made


def connect(a: Agent, agents: dict[str, Agent]) -> None:
    """`a`'s requests reach the other agents' operators (as the dispatch table would)."""
    async def answer(peer: str, msg: Any) -> Any:
        return await agents[peer].op.answer(a.op.me, msg)

    a.wire.answer = answer


def test_every_op_has_a_rule_and_the_local_api_offers_the_operators_verbs() -> None:
    assert set(RULES) == set(OperatorOp)
    assert [op.value for op in LOCAL_OPS] == ["apply", "stop", "cleanup", "maintenance", "plan",
                                              "history", "diff", "rollback", "drain", "undrain"]


async def test_the_leader_performs_maintenance_and_records_it(tmp_path: Path,
                                                              agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    result = await pm1.op.command(OperatorOp.MAINTENANCE, {"on": True, "subject": DB})
    assert result == {"maintenance": [DB]}
    result = await pm1.op.command(OperatorOp.MAINTENANCE, {"on": True, "subject": "shop"})
    assert result == {"maintenance": ["(cloud)", DB]}
    [first, second] = pm1.events.query(kind=LogKind.COMMAND)
    assert (first.reason, first.term, first.time) == (f"maintenance on for {DB}", 7,
                                                      1_700_000_000.0)
    assert second.reason == "maintenance on for the whole cloud"


async def test_plan_and_cleanup_on_the_leader(tmp_path: Path, agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    assert await pm1.op.command(OperatorOp.PLAN, {}) == {
        "leader": "pm1", "term": 7, "actions": [], "waiting": [], "elastic": [],
        "decided": []}
    assert pm1.seat is not None
    pm1.seat.member.controller.node_fails.failed(DB, now=1.0)
    assert await pm1.op.command(OperatorOp.CLEANUP, {"node": DB}) == {"reset": DB}
    assert pm1.seat.snapshot().controller.node_fails == {}
    with pytest.raises(PermanentError, match="unknown node 'nope' in cloud shop"):
        await pm1.op.command(OperatorOp.CLEANUP, {"node": "nope"})
    with pytest.raises(PermanentError, match="cleanup needs a node"):
        await pm1.op.command(OperatorOp.CLEANUP, {})


async def test_cleanup_of_a_service_is_sent_on_to_its_node(tmp_path: Path,
                                                           agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    node = agent(tmp_path, agents, DB, leader="pm1")
    connect(pm1, agents)
    result = await pm1.op.command(OperatorOp.CLEANUP, {"node": DB, "service": "mariadbd"})
    assert result == {"restarted": "mariadbd", "node": DB}
    assert node.seat is not None and isinstance(node.seat.member.node_side, FakeNodeSide)
    assert node.seat.member.node_side.cleaned == ["mariadbd"]
    [(peer, request)] = pm1.wire.asked
    assert (peer, request.op) == (DB, OperatorOp.CLEANUP_SERVICE)
    # a host runs no services: the leader says why
    agent(tmp_path, agents, "pm2", leader="pm1")
    with pytest.raises(PermanentError, match="pm2 runs no services"):
        await pm1.op.command(OperatorOp.CLEANUP, {"node": "pm2", "service": "x"})
    # and it is never an operator's own verb
    with pytest.raises(PermanentError, match="unknown command 'cleanup-service'"):
        await pm1.op.command(OperatorOp.CLEANUP_SERVICE, {"service": "x"})


async def test_a_follower_hands_the_command_to_its_leader(tmp_path: Path,
                                                          agents: dict[str, Agent]) -> None:
    agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    pm2 = agent(tmp_path, agents, "pm2", leader="pm1")
    connect(pm2, agents)
    result = await pm2.op.command(OperatorOp.MAINTENANCE, {"on": True, "subject": DB})
    assert result == {"maintenance": [DB]}
    [(peer, request)] = pm2.wire.asked
    assert peer == "pm1" and request == OperatorRequest(
        OperatorOp.MAINTENANCE, "shop", json.dumps({"on": True, "subject": DB, "by": "pm2"}))
    with pytest.raises(PermanentError, match="unknown node 'nope'"):
        await pm2.op.command(OperatorOp.CLEANUP, {"node": "nope"})


async def test_a_node_refuses_every_operator_verb_at_once(tmp_path: Path,
                                                         agents: dict[str, Agent]) -> None:
    """A node's certificate may send no operator command: its local API neither checks a
    manifest (the checker is busy here, and says nothing) nor hands anything on."""
    agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    node = agent(tmp_path, agents, DB, leader="pm1", checker=Busy())
    connect(node, agents)
    text = portable_text(shop(tmp_path / "manifests"), MANIFEST)
    for op in LOCAL_OPS:
        with capture_logs() as logs, pytest.raises(
                PermanentError, match=f"this agent \\({DB}\\) is a node of cloud shop, and a "
                                      "node has no operator verbs"):
            await node.op.command(op, {"text": text, "node": DB, "on": True})
        assert [(e["event"], e["op"]) for e in logs] == [("command_refused", op.value)]
    assert node.wire.asked == [] and node.outside == []
    assert not (agents["pm1"].folder / "shop.yaml").exists()


async def test_without_a_leader_the_command_waits(tmp_path: Path,
                                                  agents: dict[str, Agent]) -> None:
    pm2 = agent(tmp_path, agents, "pm2")
    with pytest.raises(TemporaryError, match="no leader right now"):
        await pm2.op.command(OperatorOp.PLAN, {})
    with pytest.raises(PermanentError, match="does not serve cloud 'other'"):
        await pm2.op.command(OperatorOp.PLAN, {"cloud": "other"})


async def test_apply_and_stop_install_a_generation_on_the_leader(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    # what cloudd-cli apply sends: the text made self-contained
    text = portable_text(shop(tmp_path / "edited", MANIFEST + "# edited\n"), MANIFEST)
    result = await pm1.op.command(OperatorOp.APPLY, {"text": text})
    path = pm1.folder / "shop.yaml"
    assert result == {"accepted_by": "pm1", "cloud": "shop", "path": str(path),
                      "ensure": "running", "generation": 1}
    assert path.read_text() == text and pm1.rescans == ["rescan"]
    result = await pm1.op.command(OperatorOp.STOP, {})
    assert (result["ensure"], result["generation"]) == ("stopped", 2)
    assert yaml.safe_load(path.read_text())["ensure"] == "stopped"
    reasons = [e.reason for e in pm1.events.query(kind=LogKind.COMMAND)]
    assert [r.split(":")[0] for r in reasons] == ["apply", "stop"]
    assert reasons[0].endswith("recorded, asked by pm1")
    with pytest.raises(ConfigError):
        await pm1.op.command(OperatorOp.APPLY, {"text": "kind: Cloud\n"})
    with pytest.raises(PermanentError, match="apply: 'text' must be the manifest's text"):
        await pm1.op.command(OperatorOp.APPLY, {})


async def test_a_pool_host_starts_a_cloud_it_does_not_serve_yet(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    cloud = shop(tmp_path / "manifests")
    pm1 = agent(tmp_path, agents, "pm1", serving=False)
    text = portable_text(cloud, cloud.text)
    result = await pm1.op.command(OperatorOp.APPLY, {"text": text})
    assert result["accepted_by"] == "pm1" and (pm1.folder / "shop.yaml").read_text() == text
    [event] = pm1.events.query(kind=LogKind.COMMAND)
    assert event.term == 0


async def test_from_outside_the_manifest_goes_to_the_first_host_that_takes_it(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    cloud = shop(tmp_path / "manifests")
    text = portable_text(cloud, MANIFEST)
    outsider = agent(tmp_path, agents, "laptop", serving=False)
    agent(tmp_path, agents, "pm2", serving=False)  # pm1 does not answer; pm2 takes it
    result = await outsider.op.command(OperatorOp.APPLY, {"text": text})
    assert result["handed_to"] == "pm2" and result["accepted_by"] == "pm2"
    assert [(n, a) for n, a, _ in outsider.outside] == [("pm1", "192.0.2.70"),
                                                        ("pm2", "192.0.2.71")]


async def test_a_command_from_the_wire_is_never_relayed_to_another_clouds_hosts(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    """An apply handed to this agent over the wire, for a cloud whose pool does not list it:
    refused here, not passed on (from the local API it would go to that cloud's hosts)."""
    cloud = shop(tmp_path / "manifests")
    text = portable_text(cloud, cloud.text)
    laptop = agent(tmp_path, agents, "laptop", serving=False)
    agent(tmp_path, agents, "pm2", serving=False)
    answer = await laptop.op.answer("somebody", OperatorRequest(
        OperatorOp.APPLY, "shop", json.dumps({"text": text})))
    assert answer == OperatorAnswer(False, "", "this agent (laptop) is not a pool host of "
                                    "cloud shop: hand the manifest to one of its hosts")
    assert laptop.outside == [] and not (agents["pm2"].folder / "shop.yaml").exists()


async def test_answers_say_what_went_wrong_in_one_line(tmp_path: Path,
                                                       agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    bad = await pm1.op.answer("pm2", OperatorRequest(OperatorOp.PLAN, "shop", "[1]"))
    assert bad == OperatorAnswer(False, "", "operator arguments must be a JSON object")
    bad = await pm1.op.answer("pm2", OperatorRequest(OperatorOp.APPLY, "shop",
                                                     json.dumps({"text": "kind: Cloud\n"})))
    assert not bad.ok and ";" in bad.error  # every problem, on one line
    unknown = await pm1.op.answer("pm2", OperatorRequest("nope", "shop", "{}"))  # type: ignore[arg-type]
    assert not unknown.ok and "nope" in unknown.error
    ok = await pm1.op.answer("pm2", OperatorRequest(OperatorOp.PLAN, "shop", "{}"))
    assert ok.ok and json.loads(ok.result)["leader"] == "pm1"


async def test_a_dropped_generation_is_handed_to_the_leader(tmp_path: Path,
                                                            agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    pm2 = agent(tmp_path, agents, "pm2", leader="pm1")
    connect(pm2, agents)
    assert pm2.seat is not None
    cloud = dataclasses.replace(pm2.seat.member.cloud, ensure=Ensure.RUNNING)
    await pm2.op.hand_over(cloud, cloud.text.replace("app_port: 8080", "app_port: 8081"))
    installed = yaml.safe_load((pm1.folder / "shop.yaml").read_text())
    assert installed["settings"] == {"app_port": 8081}
    assert installed["domain_template_text"] == cloud.template_text  # made self-contained
    assert "domain_template" not in installed
    assert not (pm2.folder / "shop.yaml").exists()


def test_stopped_text() -> None:
    assert yaml.safe_load(stopped_text("name: a\nensure: running\n")) == {
        "name": "a", "ensure": "stopped"}
    with pytest.raises(PermanentError, match="not a mapping"):
        stopped_text("- a\n")


class Busy(Checker):
    """A checker that has admitted all it may."""

    def __init__(self) -> None:
        super().__init__(isolate=False)
        self.admitted = self.limit


async def test_an_oversize_manifest_is_refused_in_one_sentence_and_changes_nothing(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    cloud = shop(tmp_path / "manifests")
    text = portable_text(cloud, cloud.text)
    text += "#" * (MAX_MANIFEST_BYTES - len(text)) + "\n"
    refusal = (f"<received manifest>: (document): the manifest is {MAX_MANIFEST_BYTES + 1} "
               f"bytes; a manifest received from outside this agent's folder may hold at most "
               f"{MAX_MANIFEST_BYTES} bytes (256 KiB)")
    with pytest.raises(ConfigError) as info:
        await pm1.op.command(OperatorOp.APPLY, {"text": text})
    assert str(info.value) == refusal
    answer = await pm1.op.answer("laptop", OperatorRequest(OperatorOp.APPLY, "shop",
                                                           json.dumps({"text": text})))
    assert answer == OperatorAnswer(False, "", refusal)
    assert not pm1.folder.exists() and pm1.rescans == []
    assert pm1.events.query(kind=LogKind.COMMAND) == []


async def test_a_busy_checker_turns_an_apply_away_and_changes_nothing(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1", checker=Busy())
    cloud = shop(tmp_path / "manifests")
    text = portable_text(cloud, cloud.text)
    answer = await pm1.op.answer("laptop", OperatorRequest(OperatorOp.APPLY, "shop",
                                                           json.dumps({"text": text})))
    assert not answer.ok and answer.error.startswith("busy: 4 manifests are being checked")
    with pytest.raises(TemporaryError, match="busy"):
        await pm1.op.command(OperatorOp.STOP, {})
    assert not pm1.folder.exists() and pm1.rescans == []


async def test_a_refusal_quotes_the_first_problems_only(tmp_path: Path,
                                                        agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    servers = "".join(f"    - {{address: 192.0.2.176, image: /img/w{i}.qcow2}}\n"
                      for i in range(30))
    text = MANIFEST.replace("    - {address: 192.0.2.176, image: /img/web1.qcow2}\n", servers)
    text = portable_text(shop(tmp_path / "manifests"), text)
    answer = await pm1.op.answer("pm2", OperatorRequest(OperatorOp.APPLY, "shop",
                                                        json.dumps({"text": text})))
    assert not answer.ok
    assert answer.error.count("is already used by") == 20
    assert answer.error.endswith("; and 9 more problems")


async def test_history_diff_and_rollback_read_and_extend_the_record(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    pm2 = agent(tmp_path, agents, "pm2", leader="pm1")
    connect(pm2, agents)
    first = portable_text(shop(tmp_path / "one"), MANIFEST)
    edited = MANIFEST.replace("app_port: 8080", "app_port: 8081")
    second = portable_text(shop(tmp_path / "two", edited), edited)
    await pm1.op.command(OperatorOp.APPLY, {"text": first})
    await pm2.op.command(OperatorOp.APPLY, {"text": second})  # handed to the leader
    await pm2.op.command(OperatorOp.MAINTENANCE, {"on": True, "subject": "shop"})
    await pm2.op.command(OperatorOp.MAINTENANCE, {"on": True, "subject": DB})
    history = await pm2.op.command(OperatorOp.HISTORY, {"cloud": "shop"})
    assert [(g["number"], g["by"], g["what"], g["ensure"]) for g in history["generations"]] == [
        (1, "pm1", "apply", "running"), (2, "pm2", "apply", "running")]
    assert (history["leader"], history["in_force"], history["maintenance"]) == (
        "pm1", 2, ["(cloud)", DB])
    assert "text" not in history["generations"][0]
    diff = await pm2.op.command(OperatorOp.DIFF, {"cloud": "shop", "a": 1, "b": 2})
    assert "-  app_port: 8080\n+  app_port: 8081\n" in diff["diff"]
    result = await pm2.op.command(OperatorOp.ROLLBACK, {"cloud": "shop", "number": 1})
    assert (result["generation"], result["accepted_by"]) == (3, "pm1")
    assert (pm1.folder / "shop.yaml").read_text() == first
    assert pm1.seat is not None and record.latest(pm1.seat.record).what == "rollback to 1"  # type: ignore[union-attr]
    # refused in one sentence each, and nothing changes
    for op, args, why in (
            (OperatorOp.ROLLBACK, {"number": 9}, "cloud shop has no generation 9 (its history "
                                                 "holds generations 1 to 3)"),
            (OperatorOp.ROLLBACK, {"number": "1"}, "rollback: 'number' must be a generation "
                                                   "number (1, 2, 3...), not '1'"),
            (OperatorOp.DIFF, {"a": 1}, "diff: 'b' must be a generation number"),
            (OperatorOp.HISTORY, {"cloud": "other"}, "does not serve cloud 'other'")):
        with pytest.raises(PermanentError, match=why.replace("(", r"\(").replace(")", r"\)")):
            await pm2.op.command(op, args)
    assert len(pm1.seat.record.generations) == 3


async def test_a_drain_is_handed_to_the_leader_recorded_and_undone(
        tmp_path: Path, agents: dict[str, Agent]) -> None:
    pm1 = agent(tmp_path, agents, "pm1", acting=True, leader="pm1")
    pm2 = agent(tmp_path, agents, "pm2", leader="pm1")
    connect(pm2, agents)
    result = await pm2.op.command(OperatorOp.DRAIN, {"host": "pm2", "move_stateful": True})
    assert result == {"cloud": "shop", "leader": "pm1", "drained": [
        {"host": "pm2", "move_stateful": True, "at": 2.0, "by": "pm2"}]}
    [(peer, request)] = pm2.wire.asked
    assert peer == "pm1" and request.op == OperatorOp.DRAIN
    with pytest.raises(PermanentError, match="^host pm2 is drained already "
                                             r"\(with --move-stateful\)$"):
        await pm1.op.command(OperatorOp.DRAIN, {"host": "pm2", "move_stateful": True})
    with pytest.raises(PermanentError, match=r"^unknown host 'pm7': the pool of cloud shop is "):
        await pm1.op.command(OperatorOp.DRAIN, {"host": "pm7"})
    with pytest.raises(PermanentError, match=r"^drain and undrain need a pool host's name$"):
        await pm1.op.command(OperatorOp.UNDRAIN, {"host": 3})
    assert await pm1.op.command(OperatorOp.UNDRAIN, {"host": "pm2"}) == {
        "cloud": "shop", "leader": "pm1", "drained": []}
    reasons = [e.reason for e in pm1.events.query(kind=LogKind.COMMAND)]
    assert reasons == ["drain pm2 --move-stateful, asked by pm2", "undrain pm2, asked by pm1"]

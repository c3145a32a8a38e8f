"""A node's role acting for the leader: the checks before `act` (a table), the bounds on its
answer and its time, one sentence on failure, and the node side's `act` with its log."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud, Ensure, Node, PoolHost
from cloudd.config.plain import Plain
from cloudd.daemon.network.catalogue import RoleAssignment
from cloudd.daemon.node import actions
from cloudd.daemon.node.converge import NodeSide
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import ACT_ANSWER_LIMIT, Assignment, Provider, Role
from cloudd.providers.registry import Registry


class Head(Role):
    name = "head"
    actions = {"register": ("node", "address"), "list": ()}

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], str]] = []
        self.answer: object = {"registered": "yes"}
        self.error: BaseException | None = None
        self.hang = False

    async def act(self, assignment: Assignment, action: str,
                  args: Mapping[str, str]) -> Mapping[str, str]:
        self.calls.append((action, dict(args), assignment.node))
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.answer  # type: ignore[return-value]


ROLE = Head()


@pytest.mark.parametrize(("role", "action", "args", "reason"), [
    (ROLE, "register", (("node", "c1"), ("address", "10.0.0.2")), None),
    (ROLE, "register", (("address", "10.0.0.2"), ("node", "c1")), None),  # any order
    (ROLE, "list", (), None),
    (None, "list", (), "n1 has no role yet, so no action 'list'"),
    (ROLE, "reboot", (), "role head of n1 has no action 'reboot' (actions: list, register)"),
    (ROLE, "register", (("node", "c1"),),
     "action 'register' of role head misses address (it takes node, address)"),
    (ROLE, "list", (("node", "c1"),),
     "action 'list' of role head has no argument node (it takes no arguments)"),
    (ROLE, "register", (("node", "c1"), ("addr", "x")),
     "action 'register' of role head misses address and has no argument addr (it takes "
     "node, address)"),
    (ROLE, "register", (("node", "c1"), ("node", "c2"), ("address", "x")),
     "action 'register' got argument 'node' twice"),
])
def test_only_the_roles_own_actions_with_exactly_their_arguments(
        role: Role | None, action: str, args: tuple[tuple[str, str], ...],
        reason: str | None) -> None:
    assert actions.refusal(role, action, args, node="n1") == reason


@pytest.mark.parametrize(("answer", "error"), [
    ({"b": "2", "a": "1"}, None),
    ({}, None),
    ({"k": "x" * (ACT_ANSWER_LIMIT - 1)}, None),
    ({"k": "x" * ACT_ANSWER_LIMIT}, f"answered {ACT_ANSWER_LIMIT + 1} characters, more than "
                                    f"the {ACT_ANSWER_LIMIT} an answer may hold"),
    ({"k": 3}, "answered a field that is not text: 'k'"),
    ("done", "answered str, not a mapping of text"),
])
def test_an_answer_is_a_few_text_fields(answer: object, error: str | None) -> None:
    if error is None:
        assert actions.bounded(answer, action="list") == tuple(sorted(answer.items()))
    else:
        with pytest.raises(PermanentError, match=error):
            actions.bounded(answer, action="list")


@pytest.mark.parametrize(("raised", "kind", "message"), [
    (PermanentError("scontrol said no"), PermanentError, "action 'list' failed: scontrol said no"),
    (TemporaryError("the head is busy", delay=3.0), TemporaryError, "the head is busy"),
    (KeyError("x"), PermanentError, "action 'list' failed: KeyError: 'x'"),
    (RuntimeError("line one\nline two"), PermanentError,
     "action 'list' failed: RuntimeError: line one"),
])
async def test_a_failure_is_one_sentence(raised: BaseException, kind: type,
                                         message: str) -> None:
    role = Head()
    role.error = raised
    with pytest.raises(kind) as caught:
        await actions.perform(role, assignment(Path("/tmp")), "list", ())
    assert str(caught.value) == message
    if isinstance(raised, TemporaryError):
        assert caught.value.delay == 3.0  # type: ignore[attr-defined]


async def test_an_action_that_does_not_finish_is_given_up() -> None:
    role = Head()
    role.hang = True
    with pytest.raises(TemporaryError, match=r"action 'list' did not finish within 0\.05s"):
        await actions.perform(role, assignment(Path("/tmp")), "list", (), within=0.05)


def assignment(root: Path) -> Assignment:
    return Assignment(cloud="t", node="n1", role="head", address=ip_address("10.0.0.1"),
                      root=root, secrets_dir=root / "secrets")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings(Plain):
    """No settings."""


class HeadProvider(Provider):
    cloud_type = "tiny"

    def __init__(self, role: Head) -> None:
        self.roles = {"head": role}


def side(tmp_path: Path, role: Head) -> NodeSide:
    cloud = Cloud(name="t", type="tiny", ensure=Ensure.RUNNING, source=tmp_path / "t.yaml",
                  digest="g1", domain_template=tmp_path / "t.xml",
                  pool=(PoolHost("pm1", "10.0.0.9"),), roles=("head",),
                  nodes=(Node("n1", "head", 1, "10.0.0.1", None, 64, 1, managed=False),),
                  settings=Settings(), secrets={})
    settings = AgentSettings(name="n1", state_dir=tmp_path / "state")
    return NodeSide(me="n1", cloud=cloud, settings=settings, report=lambda r: None,
                    registry=Registry([HeadProvider(role)]))


async def test_the_node_side_acts_for_its_current_role_and_logs_what_it_refuses(
        tmp_path: Path) -> None:
    role = Head()
    node = side(tmp_path, role)
    with capture_logs() as logs, pytest.raises(PermanentError, match="has no role yet"):
        await node.act("list", (), peer="pm1", term=3)
    node.assign(RoleAssignment(term=3, cloud="t", node="n1", role="head",
                               address=ip_address("10.0.0.1"), generation="g1"))
    answer = await node.act("register", (("address", "10.0.0.2"), ("node", "c1")),
                            peer="pm1", term=3)
    assert answer == (("registered", "yes"),)
    assert role.calls == [("register", {"node": "c1", "address": "10.0.0.2"}, "n1")]
    with capture_logs() as more, pytest.raises(PermanentError, match="no action 'halt'"):
        await node.act("halt", (), peer="pm1", term=3)
    role.error = PermanentError("the head said no")
    with capture_logs() as failed, pytest.raises(PermanentError, match="the head said no"):
        await node.act("list", (), peer="pm1", term=3)
    assert len(role.calls) == 2  # the refused action never reached the role
    assert [(e["event"], e["peer"], e["term"]) for e in logs + more + failed] == [
        ("action_refused", "pm1", 3), ("action_refused", "pm1", 3),
        ("action_failed", "pm1", 3)]
    assert failed[0]["reason"] == "action 'list' failed: the head said no"

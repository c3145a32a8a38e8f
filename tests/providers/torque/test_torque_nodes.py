"""pbs_server's view of the nodes: parsed on the head, checked on the leader, judged purely."""

from __future__ import annotations

import json

import pytest

from cloudd.errors import PermanentError
from cloudd.providers.base import NodeUse, Peer
from cloudd.providers.torque import nodes
from cloudd.providers.torque.nodes import LEAVING, TorqueNode

PBSNODES = (
    "<Data><Node><name>hpc-c1</name><state>free</state><power_state>Running</power_state>"
    "<np>2</np><ntype>cluster</ntype><jobs>0/7.hpc-head,1/8.hpc-head</jobs>"
    "<status>rectime=1,state=free</status><mom_service_port>15002</mom_service_port></Node>"
    "<Node><name>hpc-c2</name><state>down,job-exclusive</state><np>1</np>"
    "<ntype>cluster</ntype><jobs>0-1/9[3].hpc-head</jobs></Node>"
    "<Node><name>hpc-c3</name><state>down</state><np>1</np><ntype>cluster</ntype></Node>"
    "</Data>")
C1 = TorqueNode("hpc-c1", frozenset({"free"}), 2, ("7.hpc-head", "8.hpc-head"))
C2 = TorqueNode("hpc-c2", frozenset({"down", "job-exclusive"}), 1, ("9[3].hpc-head",))
C3 = TorqueNode("hpc-c3", frozenset({"down"}), 1)


def test_pbsnodes_xml_is_parsed() -> None:
    assert nodes.parse_pbsnodes(PBSNODES) == (C1, C2, C3)
    assert nodes.parse_pbsnodes("") == ()
    with pytest.raises(PermanentError, match="pbsnodes -x printed no XML"):
        nodes.parse_pbsnodes("pbsnodes: cannot connect to server")


def test_the_answer_survives_the_wire() -> None:
    answer = nodes.encode((C1, C2, C3))
    assert json.loads(answer["hpc-c2"]) == {"state": ["down", "job-exclusive"], "np": 1,
                                            "jobs": ["9[3].hpc-head"], "leaving": False,
                                            "moving": False}
    assert nodes.decode(answer) == {"hpc-c1": C1, "hpc-c2": C2, "hpc-c3": C3}


def test_a_node_cloudd_drained_to_leave_is_told_as_leaving_its_note_kept_on_the_head() -> None:
    xml = ("<Data><Node><name>hpc-c4</name><state>offline</state><np>1</np>"
           f"<note>{LEAVING}</note></Node><Node><name>hpc-c5</name><state>offline</state>"
           "<np>1</np><note>bad disk</note></Node></Data>")
    c4, c5 = nodes.parse_pbsnodes(xml)
    assert c4.leaving and not c5.leaving
    told = nodes.decode(nodes.encode((c4, c5)))
    assert told["hpc-c4"].leaving and told["hpc-c4"].note == ""
    assert not told["hpc-c5"].leaving and told["hpc-c5"].note == ""
    # A head of an earlier version says nothing of it: not leaving.
    assert not nodes.decode({"hpc-c4": _one()})["hpc-c4"].leaving


@pytest.mark.parametrize(("view", "use"), [
    (None, NodeUse()),
    (TorqueNode("c", frozenset({"down"}), 1), NodeUse()),  # booting: not yet ready
    (TorqueNode("c", frozenset({"free"}), 1), NodeUse(ready=True)),
    (TorqueNode("c", frozenset({"job-exclusive"}), 1, ("3.h",)), NodeUse(ready=True, busy=True)),
    (TorqueNode("c", frozenset({"offline"}), 1, ("3.h",), leaving=True),
     NodeUse(busy=True, released=True)),
    (TorqueNode("c", frozenset({"offline"}), 1, leaving=True), NodeUse(released=True)),
    (TorqueNode("c", frozenset({"offline"}), 1, ("3.h",), moving=True),
     NodeUse(busy=True, moving=True)),
    # an operator's offline is not cloudd's drain
    (TorqueNode("c", frozenset({"offline"}), 1), NodeUse()),
])
def test_the_elastic_loop_reads_a_node_s_use(view: TorqueNode | None, use: NodeUse) -> None:
    assert nodes.use_of(view) == use


def _one(**fields: object) -> str:
    return json.dumps({"state": ["free"], "np": 1, "jobs": [], **fields})


@pytest.mark.parametrize(("answer", "why"), [
    ({"Bad_Name": _one()}, "not a node name"),
    ({"c1\n": _one()}, "not a node name"),
    ({"c1": _one(jobs=["1.h\n"])}, "jobs are not TORQUE job ids"),
    ({"c1": "{"}, "not JSON"),
    ({"c1": json.dumps({"state": ["free"], "np": 1})}, "not a node's state, np, jobs"),
    ({"c1": _one(extra=1)}, "not a node's state, np, jobs and cloudd's drain"),
    ({"c1": _one(leaving="yes")}, "leaving or moving is not true or false"),
    ({"c1": _one(moving=1)}, "leaving or moving is not true or false"),
    ({"c1": _one(state=["free", "on-fire"])}, "unknown state"),
    ({"c1": _one(state="free")}, "unknown state"),
    ({"c1": _one(np=True)}, "np is not a count of slots"),
    ({"c1": _one(np=-1)}, "np is not a count of slots"),
    ({"c1": _one(jobs=["1.h; rm -rf /"])}, "jobs are not TORQUE job ids"),
    ({"c1": _one(jobs=[f"{i}.h" for i in range(65)])}, "jobs are not TORQUE job ids"),
    ({f"c{i}": _one() for i in range(4097)}, "more than 4096 nodes"),
])
def test_a_malformed_answer_is_refused(answer: dict[str, str], why: str) -> None:
    with pytest.raises(PermanentError, match=f"the head's node list is malformed: .*{why}"):
        nodes.decode(answer)


@pytest.mark.parametrize(("computes", "registered", "create", "delete"), [
    ({}, {}, (), ()),
    ({"hpc-c1": 1, "hpc-c2": 1}, {}, (("hpc-c1", 1), ("hpc-c2", 1)), ()),
    ({"hpc-c1": 4}, {"hpc-c1": C1}, (), ()),
    ({"hpc-c1": 1, "hpc-c4": 2}, {"hpc-c1": C1, "hpc-c3": C3}, (("hpc-c4", 2),), ("hpc-c3",)),
    ({}, {"hpc-c1": C1, "hpc-c2": C2}, (), ("hpc-c1", "hpc-c2")),
])
def test_registration(computes: dict[str, int], registered: dict[str, TorqueNode],
                      create: tuple[tuple[str, int], ...], delete: tuple[str, ...]) -> None:
    assert nodes.registration(computes, registered) == nodes.Registration(create, delete)


def _peer(name: str, healthy: bool = True) -> Peer:
    return Peer(name, "compute", "10.2.0.11", healthy)


OFFLINE = TorqueNode("hpc-c3", frozenset({"down", "offline"}), 1)


@pytest.mark.parametrize(("peers", "registered", "findings", "nudge"), [
    ((_peer("hpc-c1"),), {"hpc-c1": C1},
     [("hpc-c1", True, "free, 2 job(s): 7.hpc-head, 8.hpc-head")], ()),
    # pbs_mom died and was restarted: TORQUE still says down, the agent says healthy.
    ((_peer("hpc-c3"),), {"hpc-c3": C3},
     [("hpc-c3", False, "down, no job in TORQUE although its agent is healthy: pbs_mom "
       "asked to report (momctl -C)")], ("hpc-c3",)),
    # The node itself is gone: cloudd replaces it; nothing to nudge.
    ((_peer("hpc-c2", healthy=False),), {"hpc-c2": C2},
     [("hpc-c2", False, "down,job-exclusive, 1 job(s): 9[3].hpc-head (its agent is not "
       "healthy either)")], ()),
    # Offline is an operator's decision, never undone by a nudge.
    ((_peer("hpc-c3"),), {"hpc-c3": OFFLINE}, [("hpc-c3", False, "down,offline, no job")], ()),
    # An elastic role's node cloudd drained to leave: as it should be, its job finishing.
    ((_peer("hpc-c3"),), {"hpc-c3": TorqueNode("hpc-c3", frozenset({"offline"}), 1, ("4.h",),
                                               leaving=True)},
     [("hpc-c3", True, "offline, 1 job(s): 4.h: leaving the cloud, no longer needed")], ()),
    ((_peer("hpc-c4"),), {"hpc-c1": C1},
     [("hpc-c4", False, "not registered with pbs_server"),
      ("hpc-c1", False, "registered with pbs_server but not a compute node of the cloud")],
     ()),
])
def test_judge(peers: tuple[Peer, ...], registered: dict[str, TorqueNode],
               findings: list[tuple[str, bool, str]], nudge: tuple[str, ...]) -> None:
    verdict = nodes.judge(peers, registered)
    assert [(f.check, f.node, f.ok, f.message) for f in verdict.findings] == [
        (nodes.CHECK, node, ok, message) for node, ok, message in findings]
    assert verdict.nudge == nudge
    # The scheduler's own state and jobs of each node it knows ride along, for inspect.
    for f in verdict.findings:
        view = registered.get(f.node)
        assert (f.state, f.jobs) == ((view.state, view.jobs) if view else ("", ()))


DRAINED = TorqueNode("hpc-c3", frozenset({"offline"}), 1, note=nodes.DRAIN_NOTE)
BY_HAND = TorqueNode("hpc-c3", frozenset({"offline"}), 1, note="bad disk")


@pytest.mark.parametrize(("view", "done"), [
    (None, nodes.OnCreate.CREATE),
    (C1, nodes.OnCreate.KEEP),
    (DRAINED, nodes.OnCreate.RESUME),  # it came back before its jobs ended
    (BY_HAND, nodes.OnCreate.KEEP),  # an operator's offline is theirs to undo
    (TorqueNode("hpc-c3", frozenset({"offline"}), 1), nodes.OnCreate.KEEP),
])
def test_on_create(view: TorqueNode | None, done: nodes.OnCreate) -> None:
    assert nodes.on_create(view) == done


@pytest.mark.parametrize(("view", "done"), [
    (None, nodes.OnDelete.GONE),
    (C3, nodes.OnDelete.DELETE),
    (DRAINED, nodes.OnDelete.DELETE),
    (C1, nodes.OnDelete.DRAIN),  # qmgr delete node hangs while jobs run there
    (C2, nodes.OnDelete.DRAIN),
])
def test_on_delete(view: TorqueNode | None, done: nodes.OnDelete) -> None:
    assert nodes.on_delete(view) == done


def test_the_note_is_read_on_the_head_and_never_sent() -> None:
    xml = ("<Data><Node><name>hpc-c3</name><state>offline</state><np>1</np>"
           f"<note>{nodes.DRAIN_NOTE}</note></Node></Data>")
    (view,) = nodes.parse_pbsnodes(xml)
    assert view == DRAINED
    assert "note" not in nodes.encode((view,))["hpc-c3"]

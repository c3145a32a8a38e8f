"""The leader's TORQUE hooks against a fake head: what is asked, in what order, and why."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers import batchqueue
from cloudd.providers.base import Assignment, ClusterView, Finding, NodeUse, Peer
from cloudd.providers.torque import nodes
from cloudd.providers.torque.nodes import TorqueNode
from cloudd.providers.torque.provider import PROVIDER

HEAD = Peer("hpc-head", "head", "10.2.0.10", True)


class FakeHead:
    """Answers the leader's asks as a head would, keeping pbs_server's node list."""

    def __init__(self, registered: dict[str, TorqueNode] | None = None, *,
                 fail: str = "") -> None:
        self.registered = dict(registered or {})
        self.asked: list[tuple[str, str, dict[str, str]]] = []
        self.fail = fail
        self.queue = batchqueue.Queue()

    async def ask(self, node: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        self.asked.append((node, action, dict(args)))
        if action == self.fail:
            raise TemporaryError(f"cannot ask {node} for {action!r}: unreachable")
        if action == "nodes":
            return nodes.encode(tuple(self.registered.values()))
        if action == "queue":
            return batchqueue.encode(self.queue)
        if action == "create_node":
            self.registered[args["name"]] = TorqueNode(args["name"], frozenset({"down"}),
                                                     int(args["np"]))
        if action == "delete_node":
            view = self.registered.get(args["name"])
            if view is not None and view.jobs:
                self.registered[args["name"]] = TorqueNode(
                    view.name, view.states | {"offline"}, view.np, view.jobs,
                    note=nodes.DRAIN_NOTE)
                return {"node": args["name"], "done": "drain", "jobs": str(len(view.jobs))}
            self.registered.pop(args["name"], None)
            return {"node": args["name"], "done": "delete", "jobs": "0"}
        return {}

    def actions(self) -> list[str]:
        return [f"{action} {args.get('name', '')}".strip() for _, action, args in self.asked]


def _cluster(head: FakeHead, *computes: Peer, healthy_head: bool = True,
             **settings: object) -> ClusterView:
    return ClusterView(cloud="hpc", settings=settings, ask=head.ask,
                       nodes=(Peer("hpc-head", "head", "10.2.0.10", healthy_head), *computes))


def _c(name: str, healthy: bool = True) -> Peer:
    return Peer(name, "compute", "10.2.0.11", healthy)


def _view(name: str, *states: str) -> TorqueNode:
    return TorqueNode(name, frozenset(states), 1)


async def test_configure_head_applies_the_server_settings() -> None:
    head = FakeHead()
    await PROVIDER.configure(_cluster(head), "head")
    assert head.asked == [("hpc-head", "setup", {})]


async def test_configure_compute_registers_new_nodes_and_deletes_gone_ones() -> None:
    head = FakeHead({"hpc-c1": _view("hpc-c1", "free"), "hpc-old": _view("hpc-old", "down")})
    await PROVIDER.configure(_cluster(head, _c("hpc-c1"), _c("hpc-c2"), np=4), "compute")
    assert head.actions() == ["nodes", "create_node hpc-c2", "delete_node hpc-old"]
    assert head.asked[1][2] == {"name": "hpc-c2", "np": "4"}
    assert sorted(head.registered) == ["hpc-c1", "hpc-c2"]
    # Level-triggered: the same view again asks for nothing more than the list.
    head.asked.clear()
    await PROVIDER.configure(_cluster(head, _c("hpc-c1"), _c("hpc-c2")), "compute")
    assert head.actions() == ["nodes"]


async def test_a_node_that_leaves_with_jobs_is_drained_then_deleted() -> None:
    busy = TorqueNode("hpc-c2", frozenset({"job-exclusive"}), 1, ("7.hpc-head",))
    head = FakeHead({"hpc-c1": _view("hpc-c1", "free"), "hpc-c2": busy})
    with pytest.raises(TemporaryError, match=r"offline in TORQUE until their jobs end, then "
                       r"deleted: hpc-c2 \(1 job\(s\)\)"):
        await PROVIDER.configure(_cluster(head, _c("hpc-c1")), "compute")
    assert "offline" in head.registered["hpc-c2"].states
    # Its job ended: the next try deletes it.
    head.registered["hpc-c2"] = _view("hpc-c2", "offline")
    await PROVIDER.configure(_cluster(head, _c("hpc-c1")), "compute")
    assert sorted(head.registered) == ["hpc-c1"]


async def test_configure_waits_for_a_healthy_head() -> None:
    head = FakeHead()
    with pytest.raises(TemporaryError, match="cloud hpc has no healthy TORQUE head"):
        await PROVIDER.configure(_cluster(head, _c("hpc-c1"), healthy_head=False), "compute")
    assert head.asked == []


async def test_monitor_reports_each_node_and_nudges_a_down_one_with_a_healthy_agent() -> None:
    head = FakeHead({"hpc-c1": _view("hpc-c1", "free"), "hpc-c2": _view("hpc-c2", "down")})
    findings = await PROVIDER.monitor(_cluster(head, _c("hpc-c1"), _c("hpc-c2")))
    assert [(f.node, f.ok) for f in findings] == [
        ("hpc-c1", True), ("hpc-c2", False), ("", True)]
    assert head.actions() == ["nodes", "cycle_node hpc-c2", "queue"]
    assert (findings[-1].check, findings[-1].message, findings[-1].state) == (
        "queue", "no job waiting", "no job waiting")


async def test_monitor_sums_the_waiting_jobs_and_stands_without_them() -> None:
    head = FakeHead({"hpc-c1": _view("hpc-c1", "free")})
    head.queue = batchqueue.Queue(2, 1, 2, (("held", 1), ("queued", 1)), blocked=1)
    *_, waiting = await PROVIDER.monitor(_cluster(head, _c("hpc-c1")))
    assert (waiting.check, waiting.ok, waiting.message, waiting.state) == (
        "queue", True, "jobs waiting",
        "2 job(s) waiting, 1 for nodes asking 1 node(s) and 2 CPU(s); 1 for something else "
        "(held 1, queued 1)")
    head.fail = "queue"
    findings = await PROVIDER.monitor(_cluster(head, _c("hpc-c1")))
    assert [(f.check, f.ok) for f in findings] == [(nodes.CHECK, True), ("queue", False)]
    assert findings[-1].message == ("no queue from pbs_server: cannot ask hpc-head for "
                                    "'queue': unreachable")


async def test_monitor_says_so_when_the_head_cannot_answer() -> None:
    head = FakeHead(fail="nodes")
    findings = await PROVIDER.monitor(_cluster(head, _c("hpc-c1")))
    assert findings == (Finding(nodes.CHECK, False, "no view from pbs_server: cannot ask "
                                "hpc-head for 'nodes': unreachable"),)


async def test_a_failed_nudge_does_not_hide_the_findings() -> None:
    head = FakeHead({"hpc-c2": _view("hpc-c2", "down")}, fail="cycle_node")
    findings = await PROVIDER.monitor(_cluster(head, _c("hpc-c2")))
    assert [(f.node, f.ok) for f in findings] == [("hpc-c2", False), ("", True)]


def _head_assignment() -> Assignment:
    return Assignment(cloud="hpc", node="hpc-head", role="head", address="10.2.0.10",
                      root=Path("/nonexistent/hpc-head"), secrets_dir=Path("/nonexistent"),
                      exec_prefix=("false",))


@pytest.mark.parametrize(("action", "args", "error"), [
    ("create_node", {"name": "c1; reboot", "np": "1"}, "refusing to render node name"),
    ("create_node", {"name": "hpc-c1", "np": "0"}, "create_node: np '0' is not a count"),
    ("create_node", {"name": "hpc-c1", "np": "1 properties=x"}, "is not a count of slots"),
    ("delete_node", {"name": "ALL"}, "refusing to render node name 'ALL'"),
    ("cycle_node", {}, "refusing to render node name None"),
    ("reboot", {}, "role 'head' has no action 'reboot'"),
])
async def test_the_head_refuses_bad_arguments_before_running_anything(
        action: str, args: dict[str, str], error: str) -> None:
    with pytest.raises(PermanentError, match=error):
        await PROVIDER.role("head").act(_head_assignment(), action, args)


def test_the_head_declares_its_actions() -> None:
    assert dict(PROVIDER.role("head").actions) == {
        "setup": (), "nodes": (), "queue": (), "create_node": ("name", "np"),
        "delete_node": ("name",), "cycle_node": ("name",), "drain_node": ("name", "why"),
        "resume_node": ("name",)}
    assert dict(PROVIDER.role("compute").actions) == {}


async def test_demand_reads_the_queue_and_each_compute_node_s_use() -> None:
    head = FakeHead({"hpc-c1": TorqueNode("hpc-c1", frozenset({"job-exclusive"}), 1, ("3.h",)),
                     "hpc-c2": TorqueNode("hpc-c2", frozenset({"offline"}), 1, leaving=True)})
    head.queue = batchqueue.summed([(1, 1, "queued", True), (2, 2, "queued", True),
                                    (1, 1, "held", False)])
    demand = await PROVIDER.demand(_cluster(head, _c("hpc-c1"), _c("hpc-c2"), _c("hpc-c3")),
                                   "compute")
    assert (demand.jobs, demand.nodes, demand.cpus) == (2, 3, 3)  # the held job waits not
    assert demand.use == {"hpc-c1": NodeUse(ready=True, busy=True),
                          "hpc-c2": NodeUse(released=True), "hpc-c3": NodeUse()}


async def test_demand_without_a_word_from_pbs_server_is_a_temporary_error() -> None:
    with pytest.raises(TemporaryError, match="no queue or node list from pbs_server on "
                                             "hpc-head: cannot ask hpc-head for 'queue'"):
        await PROVIDER.demand(_cluster(FakeHead(fail="queue"), _c("hpc-c1")), "compute")
    with pytest.raises(PermanentError, match="cloud type 'torque' has no elastic role 'head'"):
        await PROVIDER.demand(_cluster(FakeHead()), "head")


async def test_release_and_keep_ask_the_head_to_drain_and_resume() -> None:
    head = FakeHead()
    cluster = _cluster(head, _c("hpc-c1"))
    await PROVIDER.release(cluster, "compute", "hpc-c1")
    await PROVIDER.keep(cluster, "compute", "hpc-c1")
    assert head.actions() == ["drain_node hpc-c1", "resume_node hpc-c1"]
    with pytest.raises(TemporaryError, match="drain_node hpc-c1 on hpc-head: cannot ask"):
        await PROVIDER.release(_cluster(FakeHead(fail="drain_node"), _c("hpc-c1")),
                               "compute", "hpc-c1")

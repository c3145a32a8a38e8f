"""The leader's hooks of the slurm type against a head that answers from a script."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers import batchqueue
from cloudd.providers.base import RELEASE_NOTES, ClusterView, NodeUse, Peer, Release
from cloudd.providers.slurm import sched
from cloudd.providers.slurm.provider import PROVIDER
from cloudd.providers.slurm.sched import SchedNode


@dataclass
class Head:
    """The head's agent as the leader sees it: answers `nodes` and `queue`, records the rest."""

    view: list[SchedNode]
    queue: batchqueue.Queue = field(default_factory=batchqueue.Queue)
    asked: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    down: bool = False
    refuse: set[str] = field(default_factory=set)

    async def ask(self, node: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        self.asked.append((node, action, dict(args)))
        if self.down:
            raise TemporaryError(f"cannot reach {node}")
        if action in self.refuse:
            raise TemporaryError(f"`scontrol delete` on {node} failed: Node has jobs")
        if action == "nodes":
            return sched.encode(self.view)
        if action == "queue":
            return batchqueue.encode(self.queue)
        state = "drained" if action == "drain_node" else "idle"
        reason = (RELEASE_NOTES[Release(args["why"])] if action == "drain_node" else "")
        self.view = [n for n in self.view if n.name != args["node"]] if (
            action == "delete_node") else [
            SchedNode(n.name, state, "root" if reason else "", reason)
            if n.name == args["node"] else n for n in self.view]
        return {"node": args["node"]}


def _cluster(head: Head, **computes: bool) -> ClusterView:
    nodes = (Peer("b-head", "head", "10.2.0.1", True),
             *(Peer(name.replace("_", "-"), "compute", "10.2.0.9", ok)
               for name, ok in computes.items()))
    return ClusterView(cloud="batch", nodes=nodes, ask=head.ask)


def _actions(head: Head) -> list[tuple[str, str]]:
    return [(action, args.get("node", "")) for _, action, args in head.asked
            if action not in ("nodes", "queue")]


async def test_configure_head_needs_slurmctld_to_answer() -> None:
    head = Head([], down=True)
    with pytest.raises(TemporaryError, match="slurmctld on b-head did not answer: cannot reach"):
        await PROVIDER.configure(_cluster(head), "head")
    head.down = False
    await PROVIDER.configure(_cluster(head), "head")
    assert head.asked[-1] == ("b-head", "nodes", {})


async def test_configure_compute_deletes_who_left_and_waits_for_who_came() -> None:
    head = Head([SchedNode("b-c1", "idle"), SchedNode("b-old", "idle")])
    with pytest.raises(TemporaryError, match=r"compute node\(s\) b-c2 not registered with "
                                             "slurmctld yet"):
        await PROVIDER.configure(_cluster(head, b_c1=True, b_c2=True, b_c3=False), "compute")
    assert _actions(head) == [("delete_node", "b-old")]
    head.view.append(SchedNode("b-c2", "idle"))
    await PROVIDER.configure(_cluster(head, b_c1=True, b_c2=True, b_c3=False), "compute")
    assert _actions(head) == [("delete_node", "b-old")]  # nothing more to do


async def test_configure_of_an_unknown_role_is_refused() -> None:
    with pytest.raises(PermanentError, match="has no role 'balancer'"):
        await PROVIDER.configure(_cluster(Head([])), "balancer")


async def test_monitor_shows_the_scheduler_view_and_acts_on_it() -> None:
    head = Head([SchedNode("b-c1", "allocated", jobs=("4",)),
                 SchedNode("b-c2", "drained", "slurm", "Kill task failed"),
                 SchedNode("b-c3", "drained", "root", "bios update"),
                 SchedNode("b-old", "idle")])
    findings = await PROVIDER.monitor(_cluster(head, b_c1=True, b_c2=True, b_c3=True))
    assert [(f.check, f.node, f.ok, f.state, f.jobs) for f in findings] == [
        ("slurmctld", "b-head", True, "", ()),
        ("scheduler", "b-c1", True, "allocated", ("4",)),
        ("scheduler", "b-c2", False, "drained", ()),
        ("scheduler", "b-c3", False, "drained", ()),
        ("scheduler", "b-old", False, "idle", ()),
        ("queue", "", True, "no job waiting", ()),
    ]
    assert _actions(head) == [("resume_node", "b-c2"), ("delete_node", "b-old")]
    again = await PROVIDER.monitor(_cluster(head, b_c1=True, b_c2=True, b_c3=True))
    assert [(f.node, f.ok) for f in again] == [
        ("b-head", True), ("b-c1", True), ("b-c2", True), ("b-c3", False), ("", True)]


async def test_monitor_sums_the_jobs_that_wait_for_the_whole_cloud() -> None:
    head = Head([SchedNode("b-c1", "allocated", jobs=("4",))],
                queue=batchqueue.Queue(3, 4, 8, (("Resources", 2), ("Priority", 1))))
    *_, queue = await PROVIDER.monitor(_cluster(head, b_c1=True))
    assert (queue.check, queue.node, queue.ok, queue.message, queue.state) == (
        "queue", "", True, "jobs waiting",
        "3 job(s) waiting, 3 for nodes asking 4 node(s) and 8 CPU(s) (Resources 2, "
        "Priority 1)")
    # A head that cannot say its queue: the rest of the view stands, the queue fails.
    head.refuse = {"queue"}
    findings = await PROVIDER.monitor(_cluster(head, b_c1=True))
    assert [(f.check, f.ok) for f in findings] == [
        ("slurmctld", True), ("scheduler", True), ("queue", False)]
    assert findings[-1].message.startswith("no queue from slurmctld: `scontrol delete`")


async def test_monitor_reports_what_it_could_not_do_or_see() -> None:
    head = Head([SchedNode("b-old", "allocated", jobs=("5",))], refuse={"delete_node"})
    findings = await PROVIDER.monitor(_cluster(head))
    assert (findings[-2].check, findings[-2].node, findings[-2].ok) == (
        "delete_node", "b-old", False)
    assert "Node has jobs" in findings[-2].message
    head.down = True
    (finding,) = await PROVIDER.monitor(_cluster(head))
    assert (finding.check, finding.node, finding.ok) == ("slurmctld", "b-head", False)
    assert finding.message == "slurmctld on b-head did not answer: cannot reach b-head"


async def test_a_cloud_without_a_head_says_so() -> None:
    view = ClusterView(cloud="batch", nodes=(), ask=Head([]).ask)
    (finding,) = await PROVIDER.monitor(view)
    assert (finding.check, finding.ok, finding.message) == (
        "slurmctld", False, "cloud batch has no head node")


async def test_an_elastic_compute_role_reads_its_demand_and_drains_to_leave() -> None:
    head = Head([SchedNode("b-c1", "allocated", jobs=("4",)), SchedNode("b-c2", "idle"),
                 SchedNode("b-c3", "draining", "root", sched.ELASTIC_REASON, ("9",))],
                queue=batchqueue.Queue(3, 2, 4, (("Resources", 2), ("JobHeldUser", 1)),
                                       blocked=1))
    cluster = _cluster(head, b_c1=True, b_c2=True, b_c3=True, b_c4=True)
    demand = await PROVIDER.demand(cluster, "compute")
    assert (demand.jobs, demand.nodes, demand.cpus) == (2, 2, 4)
    assert demand.use == {
        "b-c1": NodeUse(ready=True, busy=True), "b-c2": NodeUse(ready=True),
        "b-c3": NodeUse(busy=True, released=True), "b-c4": NodeUse()}
    await PROVIDER.release(cluster, "compute", "b-c2")
    assert _actions(head) == [("drain_node", "b-c2")]
    assert (await PROVIDER.demand(cluster, "compute")).use["b-c2"] == NodeUse(released=True)
    # cloudd's own drain is neither resumed nor left to an operator: the node is leaving.
    findings = {f.node: f for f in await PROVIDER.monitor(cluster)}
    assert (findings["b-c2"].ok, findings["b-c2"].message) == (
        True, "drained in Slurm: leaving the cloud, no longer needed")
    assert _actions(head) == [("drain_node", "b-c2")]
    await PROVIDER.keep(cluster, "compute", "b-c2")
    assert _actions(head)[-1] == ("resume_node", "b-c2")
    # Drained to move off a drained host: told apart, and not resumed by the monitor either.
    await PROVIDER.release(cluster, "compute", "b-c2", Release.MOVE)
    assert head.asked[-1][2] == {"node": "b-c2", "why": "move"}
    assert (await PROVIDER.demand(cluster, "compute")).use["b-c2"] == NodeUse(moving=True)
    findings = {f.node: f for f in await PROVIDER.monitor(cluster)}
    assert (findings["b-c2"].ok, findings["b-c2"].message) == (
        True, "drained in Slurm: moving off a drained host once its jobs end")
    assert _actions(head)[-1] == ("drain_node", "b-c2")
    with pytest.raises(PermanentError, match="has no elastic role 'head'"):
        await PROVIDER.demand(cluster, "head")

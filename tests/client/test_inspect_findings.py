"""The provider's findings in the inspect document: the scheduler's view of each node beside
cloudd's, the other checks, and a cloud held for its provider's stop; JSON and text."""

from __future__ import annotations

import json
from pathlib import Path

from cloudd.client.inspectdoc import (
    CloudView,
    ElectionState,
    FindingView,
    InspectDoc,
    LeadershipView,
    LivenessView,
    NodeView,
    Source,
)
from cloudd.client.render import plain, render

NOW = 1_796_000_000.0


def node(name: str, role: str, *findings: FindingView) -> NodeView:
    return NodeView(name=name, role=role, address="192.0.2.10", domain_state="unmanaged",
                    agent_liveness=LivenessView.ALIVE, findings=findings)


def batch(*, held: bool = False) -> InspectDoc:
    cloud = CloudView(
        name="hpc", type="slurm", ensure="running", source=Source.LEADER, observed_at=NOW,
        leadership=LeadershipView(state=ElectionState.STABLE, term=3, leader="pm1",
                                  quorum_reached=1, quorum_needed=1),
        nodes=(node("hpc-head-1", "head"),
               node("hpc-compute-1", "compute",
                    FindingView("scheduler", True, "allocated", state="alloc",
                                jobs=("12", "13"))),
               node("hpc-compute-2", "compute",
                    FindingView("scheduler", False, "down: Not responding", state="down"))),
        findings=(FindingView("partition", True, "partition batch up"),),
        held_for_stop=held)
    return InspectDoc(answered_by="pm1", generated_at=NOW, clouds=(cloud,))


def test_findings_round_trip_and_are_documented() -> None:
    doc = batch(held=True)
    data = json.loads(json.dumps(doc.to_json()))
    assert InspectDoc.from_json(data) == doc
    finding = data["clouds"][0]["nodes"][1]["findings"][0]
    assert finding == {"check": "scheduler", "ok": True, "message": "allocated",
                       "state": "alloc", "jobs": ["12", "13"]}
    text = (Path(__file__).resolve().parents[2] / "docs" / "inspect.md").read_text()
    for key in [*finding, "findings", "held_for_stop"]:
        assert f"`{key}`" in text, f"{key} is not documented in docs/inspect.md"


def test_the_schedulers_view_shows_beside_each_node() -> None:
    lines = render(batch(), now=NOW).splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("  NODE"))
    head = lines[at]
    assert head.split()[-2:] == ["SCHEDULER", "WAITING"]
    column = head.index("SCHEDULER")
    rows = {ln.split()[0]: ln for ln in lines[at + 1:at + 4]}
    assert rows["hpc-compute-1"][column:].startswith("alloc, jobs 12 13")
    assert rows["hpc-compute-2"][column:].startswith("down")
    assert rows["hpc-head-1"][column:].startswith("-")
    # the failing one in red
    assert "\x1b[31mdown" in render(batch(), now=NOW, color=True)


def test_other_checks_and_failing_ones_are_listed() -> None:
    lines = render(batch(), now=NOW).splitlines()
    at = lines.index("  PROVIDER CHECKS")
    rows = [ln.split(None, 3) for ln in lines[at + 1:at + 3]]
    assert rows == [["(cloud)", "partition", "ok", "partition batch up"],
                    ["hpc-compute-2", "scheduler", "failing", "down: Not responding"]]


def test_a_cloud_held_for_its_providers_stop_says_so() -> None:
    text = plain(render(batch(held=True), now=NOW))
    assert "stopping: waiting for the provider's stop" in text
    assert "waiting for the provider's stop" not in render(batch(), now=NOW)


def test_no_scheduler_column_or_checks_without_findings() -> None:
    doc = batch()
    bare = doc.clouds[0].__class__(**{**doc.clouds[0].__dict__, "findings": (), "nodes": (
        node("hpc-head-1", "head"),)})
    text = render(InspectDoc(answered_by="pm1", generated_at=NOW, clouds=(bare,)), now=NOW)
    assert "SCHEDULER" not in text and "PROVIDER CHECKS" not in text


def test_a_finding_for_the_whole_cloud_shows_its_figures() -> None:
    doc = batch()
    queue = FindingView("queue", True, "jobs waiting",
                        state="2 job(s) waiting, asking 2 node(s) and 2 CPU(s) (Resources 2)")
    cloud = doc.clouds[0].__class__(**{**doc.clouds[0].__dict__, "findings": (queue,)})
    lines = plain(render(InspectDoc(answered_by="pm1", generated_at=NOW, clouds=(cloud,)),
                         now=NOW)).splitlines()
    at = lines.index("  PROVIDER CHECKS")
    assert lines[at + 1].split(None, 3) == [
        "(cloud)", "queue", "ok",
        "jobs waiting: 2 job(s) waiting, asking 2 node(s) and 2 CPU(s) (Resources 2)"]
    # figures that say no more than the message are not said twice
    quiet = FindingView("queue", True, "no job waiting", state="no job waiting")
    cloud = doc.clouds[0].__class__(**{**doc.clouds[0].__dict__, "findings": (quiet,)})
    text = plain(render(InspectDoc(answered_by="pm1", generated_at=NOW, clouds=(cloud,)),
                        now=NOW))
    lines = text.splitlines()
    assert lines[lines.index("  PROVIDER CHECKS") + 1].split(None, 3) == [
        "(cloud)", "queue", "ok", "no job waiting"]

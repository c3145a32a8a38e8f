"""The inspect document: JSON round trip, validation of a peer's bytes, and the text form."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.inspectdoc import (
    VERSION,
    CloudView,
    ElectionState,
    EventView,
    FailedAction,
    HostView,
    InspectDoc,
    LeadershipView,
    LivenessView,
    ManifestInfo,
    NodeView,
    ServiceView,
    Source,
)
from cloudd.client.render import ago, plain, render
from cloudd.errors import RemoteProtocolError

NOW = 1_796_000_000.0  # 2026-11-30 ...
NODE_DEAD = ("no ack to a direct probe within 1 s, nor through 3 helpers within 1 s; no "
             "answer in 10 s of suspicion")


def sample(*, source: Source = Source.LEADER, state: ElectionState = ElectionState.STABLE,
           reached: int = 2) -> InspectDoc:
    db = NodeView(name="shop-database-0", role="database", address="192.0.2.177",
                  domain_state="running", agent_liveness=LivenessView.ALIVE, host="pm1",
                  uptime=7380.0, services=(
                      ServiceView(name="mariadbd", state="running", ready=True, pid=4242,
                                  restarts=1),))
    web = NodeView(name="shop-server-1", role="server", address="192.0.2.178",
                   domain_state="crashed", agent_liveness=LivenessView.DEAD, host="pm2",
                   waiting="waiting for database", services=(
                       ServiceView(name="webrick", state="fatal", restarts=5, fatal_count=2,
                                   last_error="exited with status 1 in 0.1 s"),),
                   agent_liveness_since=NOW - 75, agent_liveness_reason=NODE_DEAD)
    cloud = CloudView(
        name="shop", type="web", ensure="running", source=source, observed_at=NOW - 2,
        leadership=LeadershipView(state=state, term=7, leader="pm2", since=NOW - 900,
                              quorum_reached=reached, quorum_needed=2),
        manifest=ManifestInfo(generation=3, digest="ab" * 32, loaded_at=NOW - 300),
        hosts=(HostView(name="pm1", address="192.0.2.70", liveness=LivenessView.ALIVE,
                        reachable=True, free_memory_mib=3072, domains=2),
               HostView(name="pm2", address="192.0.2.71", liveness=LivenessView.SUSPECT,
                        reachable=False, free_memory_mib=None, domains=1,
                        liveness_since=NOW - 4, liveness_reason="gossip: pm3 suspects it")),
        nodes=(db, web),
        failed_actions=(FailedAction(action="start", subject="shop-server-1", fail_count=3,
                                     last_error="qemu unexpectedly closed the monitor",
                                     next_retry=NOW + 40),),
        events=(EventView(id=9, time=NOW - 60, cloud="shop", kind="failure",
                          subject="shop-server-1", reason="domain crashed", term=7),))
    return InspectDoc(answered_by="pm1", generated_at=NOW, clouds=(cloud,))


def test_json_round_trip_through_text() -> None:
    doc = sample()
    data = json.loads(json.dumps(doc.to_json()))
    assert InspectDoc.from_json(data) == doc


def test_json_keys_are_stable() -> None:
    """The documented keys (docs/inspect.md); a change here is a change of the format."""
    data = sample().to_json()
    assert list(data) == ["answered_by", "generated_at", "clouds", "version", "agent"]
    assert list(data["agent"]) == ["events_dropped", "unproven"]
    assert data["version"] == VERSION == 1
    cloud = data["clouds"][0]
    assert list(cloud) == ["name", "type", "ensure", "source", "observed_at", "leadership",
                           "manifest", "hosts", "nodes", "failed_actions", "events",
                           "maintenance", "findings", "held_for_stop", "drains"]
    assert cloud["source"] == "leader"
    assert cloud["leadership"] == {"state": "stable", "term": 7, "leader": "pm2",
                                   "since": NOW - 900, "quorum_reached": 2, "quorum_needed": 2}
    assert list(cloud["hosts"][0]) == ["name", "address", "liveness", "reachable",
                                       "free_memory_mib", "domains", "liveness_since",
                                       "liveness_reason"]
    assert list(cloud["nodes"][0]) == ["name", "role", "address", "domain_state",
                                       "agent_liveness", "host", "uptime", "waiting",
                                       "services", "agent_liveness_since",
                                       "agent_liveness_reason", "findings"]
    assert (cloud["hosts"][0]["liveness_since"], cloud["hosts"][0]["liveness_reason"]) == (
        None, "")  # alive: no doubt
    assert list(cloud["nodes"][0]["services"][0]) == ["name", "state", "ready", "pid",
                                                      "restarts", "fatal_count", "last_error"]
    assert list(cloud["failed_actions"][0]) == ["action", "subject", "fail_count",
                                                "last_error", "next_retry"]
    assert list(cloud["events"][0]) == ["id", "time", "cloud", "kind", "subject", "reason",
                                        "term"]
    docs = Path(__file__).resolve().parents[2] / "docs" / "inspect.md"
    text = docs.read_text()
    for key in [*data, *cloud, *cloud["leadership"], *cloud["hosts"][0], *cloud["nodes"][0],
                *cloud["nodes"][0]["services"][0], *cloud["failed_actions"][0],
                *cloud["manifest"]]:
        assert f"`{key}`" in text, f"{key} is not documented in docs/inspect.md"


def _set(data: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    bad = copy.deepcopy(data)
    target: Any = bad
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return bad


@pytest.mark.parametrize(("path", "value", "message"), [
    (["clouds", 0, "hosts", 1, "liveness"], "zombie",
     "clouds[0].hosts[1].liveness: expected one of alive, suspect, dead, got 'zombie'"),
    (["clouds", 0, "leadership", "term"], "7", "clouds[0].leadership.term: expected int, "
                                               "got '7'"),
    (["clouds", 0, "leadership", "term"], True, "clouds[0].leadership.term: expected int"),
    (["clouds", 0, "nodes", 0, "services"], {}, "clouds[0].nodes[0].services: expected a "
                                                "list, got dict"),
    (["clouds", 0, "name"], KeyError, "clouds[0].name: missing"),
    (["clouds", 0, "source"], None, "clouds[0].source: expected one of leader, local, stale"),
    (["clouds"], [3], "clouds[0]: expected an object, got int"),
    (["version"], 2, "inspect document version 2 is not the version 1"),
])
def test_bad_document_names_the_key(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        InspectDoc.from_json(_set(sample().to_json(), path, value))
    assert message in str(err.value)


def test_optional_keys_may_be_absent_and_extra_keys_are_ignored() -> None:
    data = sample().to_json()
    del data["clouds"][0]["events"]
    data["clouds"][0]["nodes"][0]["future_key"] = 1
    doc = InspectDoc.from_json(data)
    assert doc.clouds[0].events == ()
    assert doc.clouds[0].nodes == sample().clouds[0].nodes


def test_text_shows_everything_on_one_screen_without_colour() -> None:
    text = render(sample(), now=NOW)
    assert "\x1b[" not in text
    lines = text.splitlines()
    assert lines[0] == "cloud shop  type web  ensure running"
    assert lines[1].startswith("  manifest generation 3, sha256 abababababab, loaded ")
    assert lines[1].endswith("(5m00s ago)")
    assert lines[2].startswith("  answered by pm1 at ")
    assert lines[2].endswith("cluster view from the leader, observed 2s ago")
    assert "leader pm2  term 7  since " in lines[3]
    assert lines[3].endswith("(15m00s ago)  election stable  quorum 2/2 hosts")
    # tables are aligned: the second column starts at the same offset on every row
    head = next(i for i, ln in enumerate(lines) if ln.startswith("  HOST"))
    host_rows = lines[head:head + 3]
    assert [ln.index("192.0.2.7") for ln in host_rows[1:]] == [host_rows[0].index("ADDRESS")] * 2
    assert any("pm2" in ln and "suspect" in ln and " no " in ln for ln in host_rows)
    node = next(ln for ln in lines if ln.split()[:2] == ["shop-server-1", "server"])
    assert "crashed" in node and "dead" in node and node.endswith("waiting for database")
    db = next(ln for ln in lines if ln.split()[:2] == ["shop-database-0", "database"])
    assert "2h03m" in db
    svc = next(ln for ln in lines if "webrick" in ln)
    assert "fatal" in svc and svc.endswith("exited with status 1 in 0.1 s")
    failed = next(ln for ln in lines if ln.startswith("  start shop-server-1"))
    assert "3 failures" in failed and "retry in 40s" in failed
    assert failed.endswith("qemu unexpectedly closed the monitor")
    assert any("failure" in ln and "domain crashed" in ln for ln in lines)


def test_why_an_agent_is_suspect_or_dead_and_since_when() -> None:
    lines = render(sample(), now=NOW).splitlines()
    at = lines.index("  AGENTS NOT ALIVE")
    host, node = lines[at + 1], lines[at + 2]
    assert host.split()[:4] == ["pm2", "host", "suspect", "since"]
    assert "(4s ago)" in host and host.endswith("  gossip: pm3 suspects it")
    assert node.split()[:4] == ["shop-server-1", "node", "dead", "since"]
    assert "(1m15s ago)" in node and node.endswith(f"  {NODE_DEAD}")
    # columns aligned; the alive ones are not listed
    assert host.index("since") == node.index("since")
    assert host.index("gossip") == node.index("no ack")
    assert not any("pm1" in ln or "shop-database-0" in ln for ln in lines[at:at + 3])


def test_a_document_without_reasons_still_says_who_is_not_alive() -> None:
    """From an agent that predates the reasons: the keys are absent."""
    data = sample().to_json()
    for view in (data["clouds"][0]["hosts"][1], data["clouds"][0]["nodes"][1]):
        for key in [k for k in view if k.endswith(("_since", "_reason"))]:
            del view[key]
    lines = render(InspectDoc.from_json(data), now=NOW).splitlines()
    at = lines.index("  AGENTS NOT ALIVE")
    assert lines[at + 1].split() == ["pm2", "host", "suspect", "-", "no", "reason", "given"]
    assert lines[at + 2].split() == ["shop-server-1", "node", "dead", "-", "no", "reason",
                                     "given"]


def test_no_section_when_every_agent_is_alive() -> None:
    doc = sample()
    cloud = doc.clouds[0]
    alive = dataclasses.replace(
        cloud, hosts=tuple(dataclasses.replace(h, liveness=LivenessView.ALIVE)
                           for h in cloud.hosts),
        nodes=tuple(dataclasses.replace(n, agent_liveness=LivenessView.ALIVE)
                    for n in cloud.nodes))
    text = render(dataclasses.replace(doc, clouds=(alive,)), now=NOW)
    assert "AGENTS NOT ALIVE" not in text


def test_colour_only_when_asked_and_same_text_underneath() -> None:
    coloured = render(sample(), now=NOW, color=True)
    assert "\x1b[31mdead" in coloured and "\x1b[32malive" in coloured
    assert plain(coloured) == render(sample(), now=NOW)


@pytest.mark.parametrize(("source", "state", "reached", "expect"), [
    (Source.STALE, ElectionState.STABLE, 2, "cluster view: STALE, the leader's as of 2s ago"),
    (Source.LOCAL, ElectionState.ELECTING, 2, "cluster view: this agent's own"),
    (Source.LEADER, ElectionState.NO_QUORUM, 1, "election no quorum  quorum 1/2 hosts"),
])
def test_where_the_view_came_from_is_said(source: Source, state: ElectionState,
                                          reached: int, expect: str) -> None:
    text = render(sample(source=source, state=state, reached=reached), now=NOW)
    assert expect in text


def test_narrow_terminal_cuts_the_last_column_only() -> None:
    text = render(sample(), now=NOW, width=60)
    failed = next(ln for ln in text.splitlines() if ln.startswith("  start shop-server-1"))
    assert len(failed) == 60 and failed.endswith("…")
    wide = render(sample(), now=NOW, width=500)
    assert wide == render(sample(), now=NOW)


def test_no_clouds() -> None:
    assert render(InspectDoc(answered_by="n1", generated_at=NOW), now=NOW) == \
        "no clouds (answered by n1)\n"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
    (86399, "23h59m"), (86400 * 5 + 7200, "5d02h"), (-3, "0s")])
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text

"""The drained hosts in the inspect document: each with the nodes still on it and what each
waits for; JSON and text."""

from __future__ import annotations

import json

from cloudd.client.inspectdoc import (
    CloudView,
    DrainNodeView,
    DrainView,
    ElectionState,
    InspectDoc,
    LeadershipView,
    Source,
)
from cloudd.client.render import render

NOW = 1_796_000_000.0


def drained() -> InspectDoc:
    cloud = CloudView(
        name="hpc", type="slurm", ensure="running", source=Source.LEADER, observed_at=NOW,
        leadership=LeadershipView(state=ElectionState.STABLE, term=3, leader="pm1",
                                  quorum_reached=3, quorum_needed=2),
        drains=(DrainView(host="pm2", since=NOW - 90, by="pm1", left=(
            DrainNodeView("hpc-head-1", "head", "stateful (its disk is local and holds the "
                                                "role's data): moved only with `cloudd-cli "
                                                "drain pm2 --move-stateful`"),)),
                DrainView(host="pm3", move_stateful=True, since=NOW - 30, by="pm1")))
    return InspectDoc(answered_by="pm1", generated_at=NOW, clouds=(cloud,))


def test_a_drain_round_trips_and_shows_what_is_left_and_why() -> None:
    doc = drained()
    assert InspectDoc.from_json(json.loads(json.dumps(doc.to_json()))) == doc
    text = render(doc, now=NOW)
    at = text.index("DRAINED HOSTS")
    assert text[at:].splitlines()[1:4] == [
        "  pm2: 1 node left; drained 00:51:50Z (1m30s ago) by pm1",
        "    hpc-head-1 (head): stateful (its disk is local and holds the role's data): moved "
        "only with `cloudd-cli drain pm2 --move-stateful`",
        "  pm3: empty: drain complete; drained 00:52:50Z (30s ago) by pm1, stateful nodes move "
        "too"]


def test_no_drain_no_section() -> None:
    doc = drained()
    bare = doc.clouds[0].__class__(**{**doc.clouds[0].__dict__, "drains": ()})
    assert "DRAINED HOSTS" not in render(InspectDoc(answered_by="pm1", generated_at=NOW,
                                                    clouds=(bare,)), now=NOW)

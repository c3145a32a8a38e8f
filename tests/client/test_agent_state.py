"""The answering agent's own state in the inspect document: events its log dropped, and why
it grants no lease yet; decoded from the peer's bytes and shown in the text form."""

from __future__ import annotations

import dataclasses
import json

from test_inspectdoc import NOW, sample

from cloudd.client.inspectdoc import AgentState, InspectDoc
from cloudd.client.render import render


def test_agent_state_round_trips_and_older_documents_read_as_healthy() -> None:
    doc = dataclasses.replace(sample(), agent=AgentState(events_dropped=4, unproven="why"))
    assert InspectDoc.from_json(json.loads(json.dumps(doc.to_json()))) == doc
    older = sample().to_json()
    del older["agent"]
    assert InspectDoc.from_json(older).agent == AgentState()


def test_the_text_says_what_the_answering_agent_lost() -> None:
    healthy = render(sample(), now=NOW)
    assert "could not store" not in healthy and "grants no lease" not in healthy
    doc = dataclasses.replace(sample(), agent=AgentState(
        events_dropped=4, unproven="relearning its terms after a state file was set aside"))
    text = render(doc, now=NOW)
    assert "pm1 could not store 4 event(s) (a full or failing disk)" in text
    assert ("pm1 grants no lease and runs no host command: relearning its terms after a "
            "state file was set aside") in text

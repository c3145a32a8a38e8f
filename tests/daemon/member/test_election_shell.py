"""The election shell: refusals logged as `message_refused`, and the host's lease question.

No event loop runs: the shell is started and fed by hand, time moves on a FakeClock.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import structlog

from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.member.election import ElectionShell
from cloudd.durable import TermFile
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import (
    Coordinator,
    LeaseGrant,
    LeaseReject,
    LeaseRequest,
    Message,
    WhoLeads,
)
from cloudd.election.swim import Status

ROSTER = Roster([Member("a", host=True), Member("b", host=True), Member("c")])
TIMING = Timing.local()


class Host:
    """Host b's election shell, with what it sent and what it logged."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.sent: list[tuple[str, Message]] = []
        self.term_file = TermFile(tmp_path / "term")
        self.shell = ElectionShell(
            me="b", cloud="shop", roster=ROSTER, timing=TIMING,
            send=lambda peer, msg: self.sent.append((peer, msg)), term_file=self.term_file,
            clock=self.clock, rng=random.Random(5))
        self.shell.start()
        # A freshly started host grants nothing for one lease (it forgot whom it granted).
        self.clock.advance(TIMING.lease_duration + 0.01)

    def grant_a(self, term: int) -> None:
        self.sent.clear()
        self.shell.receive("a", LeaseRequest(term=term, seq=1))
        assert [type(m) for p, m in self.sent if p == "a"] == [LeaseGrant]


def refusals(logs: list[dict[str, Any]]) -> list[tuple[str, object, str]]:
    return [(e["peer"], e["term"], e["reason"]) for e in logs if e["event"] == "message_refused"]


def test_holds_lease_for_the_granted_peer_and_term_until_it_expires(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.grant_a(5)
    assert host.term_file.load() == 5  # a host learns terms from the leases it grants
    shell = host.shell
    assert shell.holds_lease("a", 5)
    assert not shell.holds_lease("a", 4) and not shell.holds_lease("a", 6)
    assert not shell.holds_lease("c", 5) and not shell.holds_lease("b", 5)
    host.clock.advance(TIMING.lease_duration - 0.001)
    assert shell.holds_lease("a", 5)
    host.clock.advance(0.002)
    assert not shell.holds_lease("a", 5)  # expired by this host's clock


def test_a_nodes_claims_are_logged_as_refusals_and_change_nothing(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.grant_a(5)
    host.shell.receive("a", Coordinator(5))
    assert (host.shell.leader, host.shell.term) == ("a", 5)
    host.sent.clear()
    with structlog.testing.capture_logs() as logs:
        host.shell.receive("c", Coordinator(12))
        host.shell.receive("c", LeaseRequest(term=2**60, seq=9))
    (coordinator, lease) = refusals(logs)
    assert coordinator[:2] == ("c", 12) and "may not lead" in coordinator[2]
    assert lease[:2] == ("c", 2**60) and "pool hosts only" in lease[2]
    assert [(p, type(m)) for p, m in host.sent] == [("c", LeaseReject)]
    assert (host.shell.leader, host.shell.term) == ("a", 5)
    assert host.term_file.load() == 5 and not host.shell.holds_lease("c", 2**60)
    assert host.shell.holds_lease("a", 5)


def test_a_malformed_or_foreign_message_is_logged_as_a_refusal(tmp_path: Path) -> None:
    host = Host(tmp_path)
    with structlog.testing.capture_logs() as logs:
        host.shell.receive("zz", WhoLeads(3))
    ((peer, term, reason),) = refusals(logs)
    assert (peer, term) == ("zz", 3) and "non-member 'zz'" in reason


def test_a_host_that_backs_the_leader_reads_suspect_never_dead(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    """What the leader's controller reads: a host whose grant holds this agent's leadership
    up is at worst suspect (the planner waits), so nothing is moved off a host that answers
    while gossip still has it dead (a host back from a power cut)."""
    shell = Host(tmp_path).shell
    monkeypatch.setattr(shell.core, "status", lambda name: Status.DEAD)
    monkeypatch.setattr(shell.core, "backs_me", lambda name, now: name == "a")
    assert shell.host_status("a") is Status.SUSPECT
    assert shell.host_status("c") is Status.DEAD
    assert shell.host_status("b") is Status.ALIVE  # itself

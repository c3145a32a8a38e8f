"""The election shell and its term files: a term is acted on only once saved, and a lost term
file makes a pool host relearn its terms instead of stopping the agent.

No event loop runs: the shell is started and fed by hand, time moves on a FakeClock; the disk
fills by a TermFile whose saves fail while `full` is set.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import structlog

from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.member.election import PERSIST_RETRY, ElectionShell
from cloudd.durable import StoredTerm, TermFile
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import (
    Coordinator,
    LeaderIs,
    LeaseGrant,
    LeaseReject,
    LeaseRequest,
    Message,
    WhoLeads,
)
from cloudd.election.states import ElectionRole

ROSTER = Roster([Member("a", host=True), Member("b", host=True), Member("c", host=True),
                 Member("n1")])
TIMING = Timing.local()


class Disk(TermFile):
    """A term file on a disk that may be full."""

    full = False

    def save(self, term: int, *, proven: bool = True) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(term, proven=proven)


class Host:
    """Host b's election shell, with what it sent."""

    def __init__(self, tmp_path: Path, *, fence: bool = False) -> None:
        self.clock = FakeClock()
        self.sent: list[tuple[str, Message]] = []
        self.term_file = Disk(tmp_path / "term")
        self.fence_file = TermFile(tmp_path / "highest-term") if fence else None
        self.shell = ElectionShell(
            me="b", cloud="shop", roster=ROSTER, timing=TIMING,
            send=lambda peer, msg: self.sent.append((peer, msg)), term_file=self.term_file,
            fence_file=self.fence_file, clock=self.clock, rng=random.Random(5))

    def start(self) -> None:
        self.shell.start()
        self.clock.advance(TIMING.lease_duration + 0.01)

    def of(self, kind: type) -> list[tuple[str, Message]]:
        return [(p, m) for p, m in self.sent if isinstance(m, kind)]

    def tick(self) -> None:
        self.shell._perform(self.shell.core.tick(self.clock.monotonic()))


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_lease_is_granted_only_once_its_term_is_saved(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.start()
    host.term_file.full = True
    with structlog.testing.capture_logs() as logs:
        host.shell.receive("a", LeaseRequest(term=5, seq=1))
        host.shell.receive("a", LeaseRequest(term=5, seq=2))
    assert host.of(LeaseGrant) == [] and not host.shell.holds_lease("a", 5)
    assert host.shell.core.describe(host.clock.monotonic())["persisted_term"] == 0
    (failed,) = events(logs, "term_persist_failed")  # once per burst
    assert failed["term"] == 5 and "No space left" in failed["reason"]
    host.term_file.full = False
    with structlog.testing.capture_logs() as logs:
        host.shell.receive("a", LeaseRequest(term=5, seq=3))
    assert [(p, m.term) for p, m in host.of(LeaseGrant)] == [("a", 5)]  # type: ignore[attr-defined]
    assert host.term_file.load() == 5 and host.shell.holds_lease("a", 5)
    assert events(logs, "term_persisted")


def test_a_new_leader_is_followed_only_once_its_term_is_saved(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.start()
    host.term_file.full = True
    host.shell.receive("a", Coordinator(7))
    assert (host.shell.leader, host.shell.term) == ("", 0)
    host.term_file.full = False
    host.shell.receive("a", Coordinator(7))
    assert (host.shell.leader, host.shell.term) == ("a", 7) and host.term_file.load() == 7


def test_a_proposal_is_not_made_on_a_full_disk_and_is_retried(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.start()
    host.term_file.full = True
    failed = 0
    for _ in range(40):  # long enough for the top host to run, were it able to
        host.clock.advance(0.05)
        with structlog.testing.capture_logs() as logs:
            host.tick()
        if events(logs, "term_persist_failed"):
            failed += 1  # the retry comes later, not in a busy loop
            now = host.clock.monotonic()
            assert now < host.shell._wake_at <= now + PERSIST_RETRY
    assert failed == 1  # logged once for the burst
    assert host.of(LeaseRequest) == [] and host.shell.core.role is not ElectionRole.CANDIDATE
    host.term_file.full = False
    for _ in range(40):
        host.clock.advance(0.05)
        host.tick()
    assert host.of(LeaseRequest) and host.term_file.load() >= 1


def test_a_garbage_term_file_is_set_aside_and_the_host_relearns(tmp_path: Path) -> None:
    (tmp_path / "term").write_text("garbage\n")
    with structlog.testing.capture_logs() as logs:
        host = Host(tmp_path)
    (aside,) = events(logs, "state_file_set_aside")
    assert aside["path"] == str(tmp_path / "term") and "not a term number" in aside["reason"]
    assert Path(aside["moved_to"]).read_text() == "garbage\n"
    assert host.term_file.read() == StoredTerm(0, proven=False)
    host.start()
    assert "relearning" in host.shell.unproven()
    host.shell.receive("a", LeaseRequest(term=3, seq=1))
    assert host.of(LeaseReject) and not host.of(LeaseGrant)
    host.shell.receive("a", Coordinator(4))  # followed, and kept as a floor only
    assert host.shell.leader == "a" and host.term_file.read() == StoredTerm(4, proven=False)
    host.tick()
    assert sorted(p for p, _ in host.of(WhoLeads)) == ["a", "c"]
    host.shell.receive("a", LeaderIs("a", 4, 6))
    host.shell.receive("c", LeaderIs("a", 4, 5))
    assert host.shell.unproven() == "" and not host.shell.relearning
    assert host.term_file.read() == StoredTerm(6) and host.shell.host_fence() == 6


def test_a_restart_before_relearning_is_still_unproven(tmp_path: Path) -> None:
    (tmp_path / "term").write_text("")
    Host(tmp_path).start()
    again = Host(tmp_path)
    again.start()
    assert again.shell.relearning and "relearning" in again.shell.unproven()
    assert len(list(tmp_path.glob("term.corrupt-*"))) == 1  # set aside once


def test_a_corrupt_host_fence_makes_the_host_relearn_from_its_term_upward(
        tmp_path: Path) -> None:
    (tmp_path / "term").write_text("9\n")
    (tmp_path / "highest-term").write_text("\x00\x00\x07")
    host = Host(tmp_path, fence=True)
    host.start()
    assert host.shell.relearning and host.shell.host_fence() is None
    host.tick()
    host.shell.receive("a", LeaderIs("", 0, 3))
    host.shell.receive("c", LeaderIs("", 0, 4))
    assert host.shell.host_fence() == 9  # the term file's floor: proven, and not below it
    assert host.term_file.read() == StoredTerm(9)


def test_a_readable_host_fence_is_handed_over_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "term").write_text("9\n")
    (tmp_path / "highest-term").write_text("7\n")
    host = Host(tmp_path, fence=True)
    host.start()
    assert not host.shell.relearning and host.shell.host_fence() == 7

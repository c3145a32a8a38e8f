"""The wire messages of membership and election, as frozen dataclasses.

Theory of operation: every message an agent core sends or receives is one of the classes
below. They hold only str, int, float, bool, tuples of those and nested frozen dataclasses,
so that the codec (in the daemon) can serialize them from their fields alone; each class has
a stable `TYPE` name that the codec writes on the wire and that never changes when a class
is renamed. The cores never see bytes: the codec validates shapes, and the cores validate
meaning (a ping for somebody else, a negative term) with `RemoteProtocolError`.

Three families:
- SWIM (`Ping`, `Ack`, `PingReq`) carry piggybacked `Gossip` and the sender's view of the
  leader (`leader`, `term`), so that a split heals as soon as any probe crosses it.
- Bully (`WhoLeads`, `LeaderIs`, `Election`, `Answer`, `Coordinator`, `Resign`).
- Lease (`LeaseRequest`, `LeaseGrant`, `LeaseReject`): a candidate or leader asks the pool's
  host agents for a lease of `duration` seconds for `term`; the grant echoes `seq` so that
  the leader can date it by its own clock.
Who may send which is the table in authority.py (only pool hosts lead, grant or claim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Gossip:
    """One membership fact: `member` is `status` ('alive', 'suspect', 'dead') at `incarnation`.

    `origin` names the member that first said so (for suspicion confirmations).
    """

    TYPE: ClassVar[str] = "gossip"
    status: str
    member: str
    incarnation: int
    origin: str


@dataclass(frozen=True)
class Ping:
    """A direct probe; `target` must be the receiver. Answered by `Ack` with the same `seq`."""

    TYPE: ClassVar[str] = "ping"
    seq: int
    target: str
    leader: str
    term: int
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True)
class Ack:
    """`target` answered the probe numbered `seq` (directly, or relayed by a helper)."""

    TYPE: ClassVar[str] = "ack"
    seq: int
    target: str
    leader: str
    term: int
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True)
class PingReq:
    """Ask the receiver to probe `target` and relay its `Ack` back under our `seq`."""

    TYPE: ClassVar[str] = "ping-req"
    seq: int
    target: str
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True)
class WhoLeads:
    """A (re)starting agent asks who leads before it would ever run for leader."""

    TYPE: ClassVar[str] = "who-leads"
    term: int


@dataclass(frozen=True)
class LeaderIs:
    """The answer to `WhoLeads` or to a stale `Election`: `leader` ('' if unknown) of `term`.
    `highest` is the answerer's persisted term (the highest it ever saw, granted or proposed),
    from which a pool host that lost its own relearns its terms (`recovery.py`); -1 when the
    answerer cannot vouch for it (it is relearning its own)."""

    TYPE: ClassVar[str] = "leader-is"
    leader: str
    term: int
    highest: int = -1


@dataclass(frozen=True)
class Election:
    """Bully: a lower-priority agent found no leader and asks the higher ones if they live."""

    TYPE: ClassVar[str] = "election"
    term: int


@dataclass(frozen=True)
class Answer:
    """Bully: "I am alive and outrank you; I take the election from here"."""

    TYPE: ClassVar[str] = "answer"
    term: int


@dataclass(frozen=True)
class Coordinator:
    """The sender won `term` (it holds a majority of host leases) and leads."""

    TYPE: ClassVar[str] = "coordinator"
    term: int


@dataclass(frozen=True)
class Resign:
    """The sender stopped leading `term` (it lost its host quorum); elect another."""

    TYPE: ClassVar[str] = "resign"
    term: int


@dataclass(frozen=True)
class LeaseRequest:
    """Candidate or leader asks a host agent for a lease for `term`; `seq` dates the ask."""

    TYPE: ClassVar[str] = "lease-request"
    term: int
    seq: int


@dataclass(frozen=True)
class LeaseRelease:
    """A candidate that failed (or a leader that resigned, after its acting ended) frees
    the host's lease for `term` at once, instead of blocking rivals until it lapses."""

    TYPE: ClassVar[str] = "lease-release"
    term: int


@dataclass(frozen=True)
class LeaseGrant:
    """A host grants the requester its lease for `term`, for `duration` seconds from receipt."""

    TYPE: ClassVar[str] = "lease-grant"
    term: int
    seq: int
    duration: float


@dataclass(frozen=True)
class LeaseReject:
    """A host refuses: it has seen `term` led by `leader` ('' if unknown) or is bound to
    `holder` for `remaining` more seconds; `reason` says which, for the logs."""

    TYPE: ClassVar[str] = "lease-reject"
    seq: int
    term: int
    leader: str
    holder: str
    remaining: float
    reason: str


Message = (
    Ping | Ack | PingReq | WhoLeads | LeaderIs | Election | Answer | Coordinator | Resign
    | LeaseRequest | LeaseRelease | LeaseGrant | LeaseReject
)

#: Every message class by its wire name, for the codec.
MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Gossip, Ping, Ack, PingReq, WhoLeads, LeaderIs, Election, Answer, Coordinator,
                Resign, LeaseRequest, LeaseRelease, LeaseGrant, LeaseReject)
}

#: The message types that belong to the election proper (the rest is SWIM liveness).
ELECTION_TYPES = frozenset(
    {WhoLeads, LeaderIs, Election, Answer, Coordinator, Resign, LeaseRequest, LeaseRelease,
     LeaseGrant, LeaseReject}
)

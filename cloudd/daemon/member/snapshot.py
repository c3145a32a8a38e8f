"""What one member knows of its cloud at one instant, for readers that must not reach in.

`CloudMember.snapshot()` builds a `MemberSnapshot` on request: the operator's room (`status`,
`inspect`, the metrics feed, the operator's commands) reads it, and never the member's,
election's or controller's own dictionaries. It is frozen and holds copies; taking one costs
a few small copies and no I/O.

Times: `taken_at` is wall time, for people; the controller's times (when a domain started,
when a failed node may be tried again) and the membership's (since when a member is suspect
or dead) are on the monotonic clock, and `wall_of` turns one into wall time as of
`taken_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudd.config.model import Cloud
from cloudd.daemon.leader.controller import ControllerView
from cloudd.daemon.leader.drain import Drains
from cloudd.daemon.leader.elasticity import ElasticView
from cloudd.daemon.leader.hooks import HooksView
from cloudd.daemon.leader.hostcalls import CallTiming
from cloudd.daemon.network.catalogue import NodeReport
from cloudd.election.swim import Doubt, Status


@dataclass(frozen=True)
class MemberSnapshot:
    me: str
    cloud: Cloud
    """The manifest generation in force."""
    generation: int
    """The record's number of the generation in force (0: not known here)."""
    loaded_at: float
    """Wall time the generation in force was taken."""
    taken_at: float
    """Wall time of the snapshot."""
    monotonic: float
    """The monotonic clock at the same instant."""
    leader: str
    """The leader this member follows ("" while an election runs)."""
    term: int
    acting: bool
    """Whether this member may act on the cloud now (it leads and holds its quorum)."""
    leader_since: float | None
    elections: int
    lease_duration: float
    members: tuple[str, ...]
    """The roster in force, hosts first."""
    hosts: frozenset[str]
    quorum: int
    """Host leases a leader needs."""
    liveness: Mapping[str, Status]
    """Each member of the roster, as this member's membership sees it."""
    doubts: Mapping[str, Doubt]
    """Each member not alive in `liveness`: since when (monotonic) and why, in words."""
    reports: Mapping[str, NodeReport]
    """What the nodes last reported to this member (the leader hears them all)."""
    controller: ControllerView
    maintenance: frozenset[str | None]
    """The operator's holds: node names, None for the whole cloud."""
    node: NodeReport | None
    """This agent's own node side, when it is a node."""
    timings: tuple[CallTiming, ...]
    """The leader's recent host calls, numbered."""
    unproven: str = ""
    """Why this agent grants no lease and runs no host command yet: it lost a term file and
    relearns its terms ('' when it may)."""
    hooks: HooksView = field(default_factory=HooksView)
    """What the provider's hooks last found (the acting leader's; empty elsewhere)."""
    drains: Drains = field(default_factory=Drains)
    """The operator's drained hosts, as the record in force has them."""
    elastic: ElasticView = field(default_factory=ElasticView)
    """The elastic roles' states and the elastic loop's last decisions (this agent's)."""

    @property
    def quorum_reached(self) -> int:
        return sum(1 for h in self.hosts if self.liveness.get(h) is Status.ALIVE)

    def status(self, member: str) -> Status:
        return self.liveness.get(member, Status.DEAD)

    def doubt(self, member: str) -> Doubt | None:
        """Why `member` is not alive here and since when; None while it is alive."""
        if self.status(member) is Status.ALIVE:
            return None
        return self.doubts.get(member)

    def wall_of(self, monotonic: float) -> float:
        """A monotonic reading as wall time, as of this snapshot."""
        return self.taken_at + (monotonic - self.monotonic)

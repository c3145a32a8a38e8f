"""The election's roles, the legal moves between them, and the events they emit.

Theory of operation: an agent's election state is one `ElectionRole`; `TRANSITIONS` lists, for each
role, the roles it may move to (h11's state tables). `Bully._goto` consults it and raises
`LocalProtocolError` for anything else, before changing anything, so that a bug shows up as
an error instead of a silently impossible state. In words:
INIT -> INQUIRING on start (ask who leads); then FOLLOWER when a leader is known, AWAITING
when none is (waiting for a Coordinator, or for our turn); AWAITING -> ELECTING (bully
round to the higher pool hosts) or CANDIDATE (ask the hosts; pool hosts only, a node never
runs); CANDIDATE -> LEADER with a host majority; any of them back to FOLLOWER on news of a
leader, or AWAITING on failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ElectionRole(Enum):
    INIT = "init"
    INQUIRING = "inquiring"
    FOLLOWER = "follower"
    AWAITING = "awaiting"
    ELECTING = "electing"
    CANDIDATE = "candidate"
    LEADER = "leader"


R = ElectionRole
TRANSITIONS: dict[ElectionRole, frozenset[ElectionRole]] = {
    R.INIT: frozenset({R.INQUIRING}),
    R.INQUIRING: frozenset({R.FOLLOWER, R.AWAITING}),
    R.FOLLOWER: frozenset({R.FOLLOWER, R.AWAITING}),
    R.AWAITING: frozenset({R.FOLLOWER, R.AWAITING, R.ELECTING, R.CANDIDATE}),
    R.ELECTING: frozenset({R.FOLLOWER, R.AWAITING, R.CANDIDATE}),
    R.CANDIDATE: frozenset({R.FOLLOWER, R.AWAITING, R.LEADER}),
    R.LEADER: frozenset({R.FOLLOWER, R.AWAITING}),
}


@dataclass(frozen=True)
class ElectionEvent:
    """One line for the log: `kind` is 'role', 'term', 'leader', 'acting' or 'member';
    `reason` says why, in words; `peer` is the member concerned (the leader, or the member
    whose liveness changed). The shell logs it with the fixed keys `term` and `peer`."""

    kind: str
    reason: str
    term: int
    peer: str = ""

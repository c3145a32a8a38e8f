"""Who may say what in the election: the roster decides, by the sender's kind.

Theory of operation: every sender that reaches the core is a member of the roster (the shell
names it by its certificate; a stranger is a protocol error before any rule is read). The
roster says which members are pool hosts, and only pool hosts may lead (`Roster.may_lead`):
a node is a tenant's VM that may be compromised, and a leader acts on every host's VMs.
`RULES` is the one table of the election's messages and who may send them; a message that
breaks its rule changes nothing in the receiver and comes back to the shell as a `Refusal`,
which the shell logs (`message_refused`, with the sender, the term it claimed and the
reason). The table:

| message | only from | why |
|---|---|---|
| `Coordinator`, `Resign` | a pool host | leading (or ceasing to) is a pool host's claim |
| `Answer` | a pool host that outranks the receiver | "I take over the election" |
| `Election` | a lower member, to a pool host | only pool hosts stand for election |
| `LeaderIs`, probe headers | anyone, naming a pool host (or nobody) | a node never leads |
| `LeaseRequest`, `LeaseRelease` | a pool host | hosts grant leases to pool hosts only |
| `LeaseGrant`, `LeaseReject` | a pool host | only hosts grant |
| `WhoLeads`, `Ping`, `Ack`, `PingReq` | anyone | liveness is everybody's business |

A probe whose header breaks its rule is still a probe: SWIM takes it, the election does not.
One rule needs the receiver's state and lives in `Bully.observe`: a node's word (`LeaderIs`,
probe headers) never teaches a term or a leader; only pool hosts' messages do. What gossip
may claim about a third member is SWIM's (see swim.py): at most a suspicion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cloudd.election.members import Roster
from cloudd.election.messages import (
    Ack,
    Answer,
    Coordinator,
    Election,
    LeaderIs,
    LeaseGrant,
    LeaseReject,
    LeaseRelease,
    LeaseRequest,
    Message,
    Ping,
    Resign,
)


@dataclass(frozen=True)
class Refusal:
    """A message from `peer` that it had no right to send; `term` is the term it claimed."""

    peer: str
    term: int
    reason: str


Rule = Callable[[Roster, str, str, Message], str | None]


def _from_host(what: str) -> Rule:
    def rule(roster: Roster, me: str, sender: str, msg: Message) -> str | None:
        return None if roster.may_lead(sender) else f"{sender} is not a pool host: {what}"
    return rule


def _answer(roster: Roster, me: str, sender: str, msg: Message) -> str | None:
    if not roster.may_lead(sender):
        return f"{sender} is not a pool host: it may not take over an election"
    if not roster.outranks(sender, me):
        return f"{sender} does not outrank {me}: it may not take over its election"
    return None


def _election(roster: Roster, me: str, sender: str, msg: Message) -> str | None:
    return None if roster.may_lead(me) else (
        f"{me} is not a pool host: it does not stand for election")


def _names_host(roster: Roster, me: str, sender: str, msg: Message) -> str | None:
    leader: str = getattr(msg, "leader", "")
    if leader and not roster.may_lead(leader):
        return f"{sender} names {leader} as leader, which is not a pool host"
    return None


#: The election's messages and who may send them (see the table above); absent: anyone.
RULES: dict[type, Rule] = {
    Coordinator: _from_host("it may not lead"),
    Resign: _from_host("it leads nothing to resign"),
    Answer: _answer,
    Election: _election,
    LeaderIs: _names_host,
    Ping: _names_host,
    Ack: _names_host,
    LeaseRequest: _from_host("leases go to pool hosts only"),
    LeaseRelease: _from_host("it holds no lease to release"),
    LeaseGrant: _from_host("only pool hosts grant leases"),
    LeaseReject: _from_host("only pool hosts grant leases"),
}


def refusal(roster: Roster, me: str, sender: str, msg: Message) -> str | None:
    """Why `sender` may not send `msg` to `me`, or None when it may."""
    rule = RULES.get(type(msg))
    return None if rule is None else rule(roster, me, sender, msg)

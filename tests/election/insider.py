"""An insider's repertoire: what a node's stolen certificate can put on the election's wire.

`forge(sim, insider, kind, pick, k)` sends one kind of forgery from `insider` to every other
member (or to the hosts, for lease messages): leadership claims with terms far above the
cloud's, lease requests and releases, answers, resignations, probe headers naming a node,
and gossip that declares a live host dead (or alive) with a huge incarnation. `pick`
chooses the host the gossip is about, `k` how far the forged term or incarnation jumps.
Every forged term is at least `FORGED` above anything honest, so a persisted term that high
can only have come from a forgery.
"""

from __future__ import annotations

from cloudd.election.messages import (
    Ack,
    Answer,
    Coordinator,
    Election,
    Gossip,
    LeaderIs,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    Message,
    Ping,
    Resign,
)

from .sim import Sim

#: Added to every forged term and incarnation.
FORGED = 2**40

KINDS = ("coordinator", "leader-is-self", "leader-is-host", "answer", "election", "resign",
         "lease-request", "lease-release", "lease-grant", "header", "gossip-dead",
         "gossip-suspect", "gossip-alive")


def insider_of(sim: Sim) -> str | None:
    """The lowest-ranked node of the cloud, or None when every member is a host."""
    nodes = [n for n in sim.roster.by_priority if n not in sim.roster.hosts]
    return nodes[-1] if nodes else None


def highest_term(sim: Sim) -> int:
    return max([a.term for a in sim.live()] + [0])


def forge(sim: Sim, insider: str, kind: str, pick: int, k: int) -> None:
    hosts = sorted(sim.roster.hosts)
    host = hosts[pick % len(hosts)]
    term = highest_term(sim) + FORGED + k
    others = [n for n in sim.names if n != insider]
    for dst in (hosts if kind.startswith("lease") else others):
        if dst == insider:
            continue
        for msg in _messages(sim, insider, kind, dst=dst, host=host, term=term, k=k):
            sim.forge(insider, dst, msg)


def _messages(sim: Sim, insider: str, kind: str, *, dst: str, host: str, term: int,
              k: int) -> list[Message]:
    agent = sim.agents[host]
    incarnation = FORGED + k + (0 if agent is None else agent.members.incarnation)
    if kind == "coordinator":
        return [Coordinator(term)]
    if kind == "leader-is-self":
        return [LeaderIs(insider, term)]
    if kind == "leader-is-host":
        return [LeaderIs(host, term)]
    if kind == "answer":
        return [Answer(term)]
    if kind == "election":
        return [Election(term)]
    if kind == "resign":
        return [Resign(highest_term(sim))]
    if kind == "lease-request":
        return [LeaseRequest(term=term, seq=k), LeaseRequest(term=highest_term(sim), seq=k)]
    if kind == "lease-release":
        return [LeaseRelease(highest_term(sim))]
    if kind == "lease-grant":  # posing as a host to whoever asks for leases
        return [LeaseGrant(highest_term(sim), seq, 60.0) for seq in range(1, 4)]
    if kind == "header":
        return [Ack(k, insider, insider, term), Ping(k, dst, host, term)]
    status = kind.removeprefix("gossip-")
    origin = host if status == "alive" else insider
    fact = Gossip(status, host, incarnation, origin)
    return [Ping(k, dst, "", 0, gossip=(fact,))]

"""Leader leases: the safety half of the election (quorum and fencing by term).

Theory of operation: a leader *acts* only while a strict majority of the pool's host agents
hold an unexpired lease for it. Two sides, each with its own monotonic clock:
- `Grantor` (every host agent) grants its lease to at most one leader per term, never for a
  term below the highest it has seen (the agent's persisted term), and, while a lease to one
  leader is unexpired, to nobody else: the incumbent's renewals keep it, which is also what
  stops a returning higher-priority member from deposing a healthy leader. A host that
  restarts has forgotten whom it granted, so it grants nothing for one lease duration.
- `Holder` (candidate, then leader) dates each request by its own clock when it sends it
  and counts a grant valid until send time + duration - margin. The host counted from its
  later receipt, so the leader's deadline passes first (the margin absorbs clock-rate drift
  and the shell's reaction time).
Why two leaders never act at once: if M acts, a majority granted M after their leases to L
expired (or refused L's later, lower term); any majority L could count intersects it in a
host whose lease L already counts as expired.
The grantor is also what a host asks before it runs a host command (`holds_lease`): only the
member it granted its lease to, for exactly the command's term, while that lease is
unexpired by the host's own clock. A host learns terms from the leases it grants, so no
message can talk it into a term nobody holds (the agent's `Bully` keeps its fence that way).
A two-host pool (twohost.py) is the one exception to counting grants: a host its fence command
has powered off grants nothing and counts as granted (`Holder.stand_ins`) until it is seen
again. No other host is left to grant anyone else a lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cloudd.election.config import Timing
from cloudd.election.messages import LeaseGrant, LeaseReject, LeaseRequest


@dataclass
class Grantor:
    """A host agent's lease: whom it is bound to, for which term, until when (host clock)."""

    duration: float
    holder: str = ""
    holder_term: int = -1
    expires: float = 0.0

    @classmethod
    def after_start(cls, now: float, timing: Timing) -> Grantor:
        """A fresh start: bound to nobody we know, so bound to everybody for one lease."""
        return cls(duration=timing.lease_duration, expires=now + timing.lease_duration)

    def decide(self, candidate: str, req: LeaseRequest, now: float, *, term: int,
               leader: str) -> LeaseGrant | LeaseReject:
        """Grant or refuse `req` from `candidate`, given the agent's highest `term` seen and
        the `leader` it knows for that term ('' when unknown). Mutates only on a grant."""
        remaining = max(0.0, self.expires - now) if self.holder != candidate else 0.0
        if req.term < term:
            return self._reject(req, term=term, leader=leader, remaining=remaining,
                                reason=f"term {req.term} is below {term}")
        mine = self.holder == candidate and self.holder_term == req.term
        if req.term == term and not mine and leader != candidate:
            return self._reject(req, term=term, leader=leader, remaining=remaining,
                                reason=f"term {term} is taken by {leader or 'another'}")
        if remaining > 0:
            why = f"bound to {self.holder}" if self.holder else "restarted, waiting out leases"
            return self._reject(req, term=term, leader=leader, remaining=remaining, reason=why)
        self.holder, self.holder_term = candidate, req.term
        self.expires = now + self.duration
        return LeaseGrant(term=req.term, seq=req.seq, duration=self.duration)

    def holds_lease(self, member: str, term: int, now: float) -> bool:
        """True when this host granted its lease to `member` for exactly `term` and it has
        not expired at `now` (this host's clock) nor been released."""
        return bool(member) and self.holder == member and self.holder_term == term \
            and now < self.expires

    def release(self, candidate: str, term: int, now: float) -> bool:
        """Free the lease if `candidate` holds it for `term`; the term stays used."""
        if self.holder != candidate or self.holder_term != term:
            return False
        self.holder, self.expires = "", min(self.expires, now)
        return True

    def _reject(self, req: LeaseRequest, *, term: int, leader: str, remaining: float,
                reason: str) -> LeaseReject:
        holder = self.holder if remaining > 0 else ""
        return LeaseReject(seq=req.seq, term=term, leader=leader, holder=holder,
                           remaining=remaining, reason=reason)


class Holder:
    """The leases a candidate or leader holds for one `term`, by its own clock."""

    def __init__(self, *, term: int, hosts: frozenset[str], quorum: int, timing: Timing,
                 stand_ins: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.term = term
        self.hosts = hosts
        self.quorum = quorum
        self.timing = timing
        #: Hosts that count as granted until the given instant though they grant nothing (a
        #: two-host pool's fenced peer), asked at every count: it changes with the fence.
        self.stand_ins = stand_ins
        self.valid_until: dict[str, float] = {}
        self._sent: dict[int, float] = {}
        self._seq = 0

    def request(self, now: float) -> LeaseRequest:
        """A new request, dated `now`; send the same one to every host."""
        self._seq += 1
        self._sent[self._seq] = now
        horizon = now - self.timing.lease_duration * 2
        self._sent = {s: t for s, t in self._sent.items() if t >= horizon}
        return LeaseRequest(term=self.term, seq=self._seq)

    def granted(self, host: str, grant: LeaseGrant) -> None:
        sent = self._sent.get(grant.seq)
        if grant.term != self.term or sent is None or host not in self.hosts:
            return  # a late answer to an older request or term: worthless
        until = sent + min(grant.duration, self.timing.lease_duration) - self.timing.lease_margin
        self.valid_until[host] = max(until, self.valid_until.get(host, until))

    def backed_by(self, host: str, now: float) -> bool:
        """`host` granted one of this term's leases that is still valid at `now`."""
        return self.valid_until.get(host, float("-inf")) > now

    def quorum_until(self) -> float:
        """The instant the majority lapses if no grant arrives meanwhile (-inf: none)."""
        valid = dict(self.valid_until)
        for host, until in (self.stand_ins() if self.stand_ins is not None else {}).items():
            if host in self.hosts:
                valid[host] = max(until, valid.get(host, until))
        ends = sorted(valid.values(), reverse=True)
        return ends[self.quorum - 1] if len(ends) >= self.quorum else float("-inf")

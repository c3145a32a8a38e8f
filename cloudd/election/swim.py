"""SWIM membership: who of the cloud's static member list is alive, as seen by one agent.

Theory of operation (SWIM, with hashicorp/memberlist's refinements, minus its timers):
- Each protocol period (`probe_interval`) the agent pings the next member of a shuffled
  round-robin over the members it does not believe dead. No `Ack` after `probe_timeout`
  (or the shell reports the peer unreachable): it asks `indirect_checks` random members to
  ping the target for it (`PingReq`), so that one lossy link does not condemn anybody.
  No ack, direct or relayed, by the end of the period: the target becomes *suspect*.
- The suspicion timeout scales with log10(n) and shrinks as independent members confirm the
  suspicion (memberlist's suspicion.go). Incarnation numbers order the facts about one
  member: a member that hears itself suspected or declared dead refutes by raising its
  incarnation and gossiping `alive`; the higher incarnation wins.
- Facts travel piggybacked on pings and acks, each a bounded number of times
  (`retransmit_mult * ceil(log10(n + 1))`), least-sent first.
- Dead members are still pinged, one every `dead_probe_interval`, with the fact of their
  death attached: a member back from a partition or a restart refutes it in its ack and
  rejoins; so a healed partition heals the views too.
Two kinds of member, two patiences. Pool hosts keep the timing above: the leader is a host,
and its death must be seen in a few hundred milliseconds. A *node* (a member that is not a
pool host: a VM, often under TCG, whose agent stalls for seconds on a busy machine) gets
`node_probe_timeout` for its direct ack and as long again for its helpers' (helpers always
get that full window, even after a late tick of ours), and stays suspect for a flat
`node_suspicion` before our own failed probe may declare it dead. A probe of a node thus
outlives the protocol period: probes run side by side, keyed by their seq, one at a time
per target, while the round goes on probing the others at the usual pace.
Where cloudd departs from memberlist: any member may gossip, and a node may be a tenant's
compromised VM, so gossip about a third member is a reason to look, never a verdict.
- Death only on our own evidence. A `suspect` or `dead` fact heard about X makes X at most
  *suspect* here; X becomes dead only when the suspicion timeout has passed *and* our own
  latest probe of X (direct and indirect) failed. A suspect we have not probed since the
  suspicion began is probed first, in the next period; if our probe is answered (relayed
  acks count), the suspicion lapses at its timeout and X is alive again here. Our own
  death verdicts are gossiped as `dead`, which makes others look for themselves.
- Only X raises X's incarnation. An `alive` fact counts only in a message X sent itself (its
  refutation, its announcements); a `suspect`/`dead` fact from anyone counts at most at
  the incarnation we last heard from X. A forged "X dead, incarnation + 1000" thus makes X
  suspect at its real incarnation, and X refutes it when our probe carries the doubt to it.
  Refutation needs no relay: whoever suspects X probes X, and X answers with its
  incarnation in the ack.
- An ack counts for our probe only from its target or from a helper we asked; a helper
  relays an ack only from the target it probed. Acks and helpers are members' word too,
  but a lie there can only delay a death, never cause one.
A probe proves what any message proves: a member alive is a member that speaks. A member
we are due to probe that sent us anything (`heard`: an election message, a lease renewal or
its reply, its own ping or ack) within the last protocol period is not pinged this period
when we have no gossip waiting to piggyback: its turn in the round counts as answered, and
the round moves on. The evidence is as fresh as our ping's ack would have been; a member
that dies just after it spoke has its turn passed, so this member may see that death up to
one round later (any other member probing it in that round still does, and gossips it);
followers stop pinging the leader whose renewals they get, the leader stops
pinging the hosts that answer them, and two members that probed each other in the same
period do not both do it (`skipped` counts the pings saved).
Every suspicion keeps its reason in words (what began it: our own failed probe, another
member's gossip, a lease that stopped being renewed; and what our own probes found since),
for `doubt()` and the operator's `inspect`: why a member is suspect or dead, and since when.
Nothing here reads a clock or draws entropy of its own: `now` and an injected
`random.Random` come in; messages to send and status changes, each with its reason in
words, go out (`drain`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from cloudd.election.config import Timing
from cloudd.election.members import Roster
from cloudd.election.messages import Ack, Gossip, Message, Ping, PingReq
from cloudd.errors import RemoteProtocolError


class Status(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class _Verdict(Enum):
    """Our own latest probe of a suspect, since the suspicion began."""

    FAILED = "failed"
    ANSWERED = "answered"


@dataclass(frozen=True)
class Doubt:
    """Why this agent does not believe a member alive, for people (`inspect`)."""

    status: Status
    """SUSPECT or DEAD."""
    since: float
    """When the member became `status` here, on the clock the core is given (`now`)."""
    reason: str
    """What began the suspicion and what our own probes found since, in words."""


@dataclass
class _Peer:
    status: Status = Status.ALIVE
    incarnation: int = 0
    suspected_at: float = 0.0
    confirmations: set[str] = field(default_factory=set)
    verdict: _Verdict | None = None
    cause: str = ""
    """What began the current suspicion, in words."""
    evidence: str = ""
    """What our own latest probe during the suspicion found, in words."""
    dead_at: float = 0.0


@dataclass
class _Probe:
    target: str
    seq: int
    started: float
    ask_at: float
    """When we ask helpers if the target has not acked."""
    ends_at: float
    """When the probe fails if no ack, direct or relayed, has come."""
    asked_at: float | None = None
    """When we asked helpers (None while the probe is direct only)."""
    unreachable: bool = False
    helpers: tuple[str, ...] = ()


class _Relay(NamedTuple):
    """A probe we run for `requester` (its `seq`) of `target`, relayed back until `until`."""

    requester: str
    seq: int
    target: str
    until: float


class Membership:
    """One agent's SWIM state. Call `probe_tick`, `receive`, `unreachable`; then `drain`."""

    def __init__(self, me: str, roster: Roster, *, timing: Timing, rng: random.Random) -> None:
        self.me = me
        self.roster = roster
        self.timing = timing
        self.rng = rng
        self.incarnation = 0
        #: The leader header (leader, term) stamped on probes; the agent keeps it current.
        self.header: tuple[str, int] = ("", 0)
        # Only members we have heard something about get a record: at 1,000 members a
        # full table per agent would be a million objects in a simulation.
        self.peers: dict[str, _Peer] = {}
        self._dead: set[str] = set()
        self._order: list[str] = []
        self._seq = 0
        #: Probes under way by seq: a node's outlives the protocol period (one per target).
        self._probes: dict[int, _Probe] = {}
        self._next_probe = 0.0
        self._next_dead_probe = 0.0
        self._relays: dict[int, _Relay] = {}
        self._queue: dict[str, tuple[Gossip, int]] = {}
        self._suspects: set[str] = set()
        self._limit = timing.retransmits(len(roster))
        self._out: list[tuple[str, Message]] = []
        self._changes: list[tuple[str, Status, str]] = []
        #: when each member last sent us anything (`heard`)
        self._heard: dict[str, float] = {}
        #: probes not sent because their target had just spoken (for benches and tests)
        self.skipped = 0

    # -- queries ------------------------------------------------------------------------
    def status(self, name: str) -> Status:
        peer = self.peers.get(name)
        return Status.ALIVE if peer is None else peer.status

    def live(self, name: str) -> bool:
        """Not believed dead (a suspect may still refute)."""
        return self.status(name) is not Status.DEAD

    def doubt(self, name: str) -> Doubt | None:
        """Why `name` is suspect or dead here, and since when; None while it is alive."""
        peer = self.peers.get(name)
        if peer is None or peer.status is Status.ALIVE:
            return None
        reason = peer.cause
        if peer.evidence and peer.evidence != peer.cause:
            reason += f"; then our own probe: {peer.evidence}"
        if peer.status is Status.DEAD:
            reason += f"; no answer in {_s(peer.dead_at - peer.suspected_at)} of suspicion"
            return Doubt(Status.DEAD, peer.dead_at, reason)
        return Doubt(Status.SUSPECT, peer.suspected_at, reason)

    def doubts(self) -> dict[str, Doubt]:
        """`doubt` of every member not alive here, by name."""
        return {n: d for n in sorted(self._suspects | self._dead)
                if (d := self.doubt(n)) is not None}

    def next_deadline(self) -> float:
        times = [self._next_probe, self._next_dead_probe]
        for probe in self._probes.values():
            times.append(probe.ask_at if probe.asked_at is None else probe.ends_at)
        # A suspect without our own verdict waits for our probe of it (next period), not time.
        times += [self._suspicion_deadline(n) for n in self._suspects
                  if self.peers[n].verdict is not None]
        return min(times)

    def drain(self) -> tuple[list[tuple[str, Message]], list[tuple[str, Status, str]]]:
        """Messages to send, and status changes as (member, new status, why in words)."""
        out, changes = self._out, self._changes
        self._out, self._changes = [], []
        return out, changes

    # -- inputs -------------------------------------------------------------------------
    def start(self, now: float) -> None:
        # Spread the first probes of agents started together over one period.
        self._next_probe = now + self.rng.uniform(0, self.timing.probe_interval)
        self._next_dead_probe = now + self.timing.dead_probe_interval
        self._enqueue(Gossip("alive", self.me, self.incarnation, self.me))

    def change_roster(self, roster: Roster) -> None:
        """A new generation's member list: forget what this agent knew of the members it
        drops (records, suspicions, facts waiting to be gossiped, a probe of one of them);
        the members it adds count as alive until probed, like every member at start, and
        join the probe order from the next round."""
        self.roster = roster
        self.peers = {n: p for n, p in self.peers.items() if n in roster}
        self._dead = {n for n in self._dead if n in roster}
        self._suspects = {n for n in self._suspects if n in roster}
        self._queue = {n: q for n, q in self._queue.items() if n in roster}
        self._relays = {s: r for s, r in self._relays.items()
                        if r.target in roster and r.requester in roster}
        self._probes = {s: p for s, p in self._probes.items() if p.target in roster}
        self._heard = {n: t for n, t in self._heard.items() if n in roster}
        self._order = []
        self._limit = self.timing.retransmits(len(roster))

    def probe_tick(self, now: float) -> None:
        t = self.timing
        for probe in list(self._probes.values()):
            if probe.asked_at is None and now >= probe.ask_at:
                self._ask_helpers(probe, now)
        for seq, probe in list(self._probes.items()):
            if now >= probe.ends_at:  # an acked probe is gone already
                del self._probes[seq]
                self._probe_failed(probe, now)
        self._settle(now)
        if now >= self._next_probe:
            self._next_probe = _after(self._next_probe, t.probe_interval, now)
            target = self._next_target()
            if target is not None and self._spoke_lately(target, now):
                self.skipped += 1
            elif target is not None:
                self._seq += 1
                if target in self.roster.hosts:  # a host's probe ends with the period
                    probe = _Probe(target, self._seq, now, now + t.probe_timeout,
                                   self._next_probe)
                else:
                    asks = now + t.node_probe_timeout
                    probe = _Probe(target, self._seq, now, asks, asks + t.node_probe_timeout)
                self._probes[self._seq] = probe
                self._ping(target, self._seq)
        if now >= self._next_dead_probe:
            self._next_dead_probe = _after(self._next_dead_probe, t.dead_probe_interval, now)
            if self._dead:
                self._seq += 1
                self._ping(self.rng.choice(sorted(self._dead)), self._seq)
        self._relays = {s: r for s, r in self._relays.items() if r.until > now}

    def heard(self, sender: str, now: float) -> None:
        """`sender` (named by its certificate) sent us a message at `now`: proof of life."""
        if sender != self.me and sender in self.roster:
            self._heard[sender] = now

    def unreachable(self, peer: str, now: float) -> None:
        """The shell could not reach `peer`: do not wait out the direct probe timeout."""
        for probe in list(self._probes.values()):
            if probe.target == peer and probe.asked_at is None:
                probe.unreachable = True
                self._ask_helpers(probe, now)

    def suspect(self, name: str, now: float, *, why: str) -> None:
        """Local evidence against `name`, `why` in words (the election's: a leader whose
        renewals stopped): suspect it, and probe it next; it refutes like any suspicion, and
        others' suspicions confirm."""
        if name != self.me and self.status(name) is not Status.DEAD:
            self._apply(Gossip("suspect", name, self._peer(name).incarnation, self.me), now,
                        sender=self.me, why=why)

    def receive(self, sender: str, msg: Ping | Ack | PingReq, now: float) -> None:
        if isinstance(msg, PingReq) and msg.target in (sender, self.me):
            raise RemoteProtocolError(f"{sender} asked {self.me} to probe {msg.target}")
        if isinstance(msg, Ping) and msg.target != self.me:
            raise RemoteProtocolError(f"{sender} sent {self.me} a ping meant for {msg.target}")
        if isinstance(msg, PingReq) and msg.target not in self.roster:
            raise RemoteProtocolError(f"{sender} asked {self.me} to probe unknown "
                                      f"{msg.target!r}")
        for fact in msg.gossip:
            if fact.member not in self.roster or fact.origin not in self.roster \
                    or fact.status not in ("alive", "suspect", "dead"):
                raise RemoteProtocolError(f"{sender} gossiped an invalid fact {fact!r}")
        for fact in msg.gossip:
            self._apply(fact, now, sender=sender)
        if isinstance(msg, Ping):
            # Tell a sender we think dead or suspect so at once: it refutes in its next ack.
            # And a sender that doubts us hears our own current incarnation: if its news of
            # our death is older than our last refutation, nothing else would correct it.
            doubted = any(f.member == self.me and f.status != "alive" for f in msg.gossip)
            mine = Gossip("alive", self.me, self.incarnation, self.me) if doubted else None
            self._out.append((sender, Ack(msg.seq, self.me, *self.header,
                                          gossip=self._piggyback(self._fact_about(sender),
                                                                 mine))))
        elif isinstance(msg, PingReq):
            self._seq += 1
            # As patient for the requester as it is itself with that kind of member.
            patience = (self.timing.probe_interval if msg.target in self.roster.hosts
                        else self.timing.node_probe_timeout)
            self._relays[self._seq] = _Relay(sender, msg.seq, msg.target, now + patience)
            self._ping(msg.target, self._seq)
        else:
            probe = self._probes.get(msg.seq)
            if probe is not None and probe.target == msg.target \
                    and (sender == msg.target or sender in probe.helpers):
                del self._probes[msg.seq]
                peer = self.peers.get(msg.target)
                if peer is not None and peer.status is Status.SUSPECT:
                    peer.verdict = _Verdict.ANSWERED
                    peer.evidence = "it answered (the suspicion lapses when it ends)"
            relay = self._relays.get(msg.seq)
            if relay is not None and sender == relay.target == msg.target:
                del self._relays[msg.seq]
                self._out.append((relay.requester, Ack(relay.seq, msg.target, *self.header)))

    # -- internals ----------------------------------------------------------------------
    def _next_target(self) -> str | None:
        # A suspect we have no verdict of our own about goes first: only our own probe can
        # make it dead here (or let its suspicion lapse).
        # A member whose probe is still under way (a slow node's) is not probed twice.
        busy = {p.target for p in self._probes.values()}
        unprobed = [n for n in self._suspects if self.peers[n].verdict is None and n not in busy]
        if unprobed:
            return min(unprobed, key=lambda n: (self.peers[n].suspected_at, n))
        for _ in range(2):
            while self._order:
                # A lazy Fisher-Yates shuffle: one random pick per probe, not n per round.
                order = self._order
                i = self.rng.randrange(len(order))
                order[i], order[-1] = order[-1], order[i]
                name = order.pop()
                if name not in self._dead and name not in busy:
                    return name
            self._order = [n for n in self.roster.names if n != self.me]
        return None

    def _spoke_lately(self, target: str, now: float) -> bool:
        """Whether `target`'s own message within the last period stands for our ping of it:
        only while we believe it alive (a suspect must be probed: only that settles it) and
        have no gossip to piggyback (the pings carry it round)."""
        said = self._heard.get(target)
        return (said is not None and now - said < self.timing.probe_interval
                and not self._queue and self.status(target) is Status.ALIVE)

    def _ping(self, target: str, seq: int) -> None:
        first = self._fact_about(target)
        mine = Gossip("alive", self.me, self.incarnation, self.me) if first else None
        self._out.append((target, Ping(seq, target, *self.header,
                                       gossip=self._piggyback(first, mine))))

    def _ask_helpers(self, probe: _Probe, now: float) -> None:
        probe.asked_at = now
        if probe.target not in self.roster.hosts:
            # The helpers of a node's probe get their full window even after a late tick:
            # a prober that stalled itself must not blame the node for it.
            probe.ends_at = max(probe.ends_at, now + self.timing.node_probe_timeout)
        # Draw a few more than needed and keep the live ones: O(k), not O(n).
        names = self.roster.names
        drawn = self.rng.sample(names, min(len(names), 3 * self.timing.indirect_checks + 2))
        helpers = [n for n in drawn if n not in (self.me, probe.target)
                   and self.status(n) is Status.ALIVE]
        probe.helpers = tuple(helpers[:self.timing.indirect_checks])
        for helper in probe.helpers:
            self._out.append((helper, PingReq(probe.seq, probe.target,
                                              gossip=self._piggyback(None))))

    def _fact_about(self, name: str) -> Gossip | None:
        peer = self.peers.get(name)
        if peer is None or peer.status is Status.ALIVE:
            return None
        return Gossip(peer.status.value, name, peer.incarnation, self.me)

    def _piggyback(self, *first: Gossip | None) -> tuple[Gossip, ...]:
        lead = tuple(f for f in first if f is not None)
        room = self.timing.max_piggyback - len(lead)
        chosen = sorted(self._queue.items(), key=lambda kv: kv[1][1])[:room]
        for name, (fact, sent) in chosen:
            if sent + 1 >= self._limit:
                del self._queue[name]
            else:
                self._queue[name] = (fact, sent + 1)
        return lead + tuple(fact for _, (fact, _) in chosen)

    def _enqueue(self, fact: Gossip) -> None:
        self._queue[fact.member] = (fact, 0)

    def _suspicion_deadline(self, name: str) -> float:
        peer = self.peers[name]
        if name not in self.roster.hosts:
            # Flat: a stalled guest is silent to everyone at once, so others' confirmations
            # are no extra evidence against it.
            return peer.suspected_at + self.timing.node_suspicion
        low, high = self.timing.suspicion_timeouts(len(self.roster))
        expected = max(1.0, self.timing.suspicion_mult - 2)
        seen = len(peer.confirmations) - 1
        frac = math.log(seen + 1) / math.log(expected + 1)
        return peer.suspected_at + max(low, high - (high - low) * frac)

    def _peer(self, name: str) -> _Peer:
        peer = self.peers.get(name)
        if peer is None:
            peer = self.peers[name] = _Peer()
        return peer

    def _set(self, name: str, status: Status, incarnation: int, now: float, *,
             why: str = "") -> None:
        peer = self._peer(name)
        changed = peer.status is not status
        peer.status, peer.incarnation = status, incarnation
        if status is Status.SUSPECT:
            if changed:
                peer.suspected_at, peer.confirmations, peer.verdict = now, set(), None
                peer.cause, peer.evidence = why, ""
            self._suspects.add(name)
        else:
            self._suspects.discard(name)
        if status is Status.DEAD:
            if changed:
                peer.dead_at = now
            self._dead.add(name)
        else:
            self._dead.discard(name)
        if changed:
            doubt = self.doubt(name)
            self._changes.append((name, status, why if doubt is None else doubt.reason))

    def _apply(self, fact: Gossip, now: float, *, sender: str, why: str = "") -> None:
        """memberlist's aliveNode/suspectNode, one fact heard from `sender` (ourselves for
        our own observations, `why` saying what we saw); deaths are ours alone (`_settle`)."""
        if fact.member == self.me:
            if fact.status != "alive":
                if fact.incarnation >= self.incarnation:
                    self.incarnation = fact.incarnation + 1  # refute
                # Stale or not, the doubt circulates: send our truth around again.
                self._enqueue(Gossip("alive", self.me, self.incarnation, self.me))
            return
        peer = self._peer(fact.member)
        if fact.status == "alive":
            # Only the member itself raises its incarnation: anybody else could inflate it
            # past the member's own refutations.
            if sender == fact.member and fact.incarnation > peer.incarnation:
                self._set(fact.member, Status.ALIVE, fact.incarnation, now,
                          why=f"it spoke for itself at incarnation {fact.incarnation}")
                self._enqueue(fact)
            return
        # 'suspect' or 'dead', from whoever: a reason to look for ourselves, no more, and at
        # no higher incarnation than we heard from the member itself.
        if fact.incarnation < peer.incarnation or peer.status is Status.DEAD:
            return
        if peer.status is Status.SUSPECT:
            if fact.origin in peer.confirmations:
                return  # heard already (gossip is retransmitted): the common case
        else:
            if not why:
                said = "declared it dead" if fact.status == "dead" else "suspects it"
                heard = "" if sender == fact.origin else f" (heard from {sender})"
                why = f"gossip: {fact.origin} {said}{heard}"
            self._set(fact.member, Status.SUSPECT, peer.incarnation, now, why=why)
        peer.confirmations.add(fact.origin)
        self._enqueue(Gossip("suspect", fact.member, peer.incarnation, fact.origin))

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        """No ack, direct or relayed, by the end of the probe: our own evidence. Also when
        already suspect: it is an independent confirmation, which shortens a host's
        suspicion (memberlist does the same)."""
        peer = self._peer(probe.target)
        if peer.status is Status.DEAD:
            return
        words = _failure(probe, now)
        self._apply(Gossip("suspect", probe.target, peer.incarnation, self.me), now,
                    sender=self.me, why=words)
        peer.verdict, peer.evidence = _Verdict.FAILED, words

    def _settle(self, now: float) -> None:
        """Suspicions whose timeout passed end on our own latest probe of the suspect: dead
        if it failed, alive again (here only) if it was answered."""
        # Sorted for a deterministic order, after filtering: most suspicions are not due.
        due = sorted(n for n in self._suspects if self.peers[n].verdict is not None
                     and now >= self._suspicion_deadline(n))
        for name in due:
            peer = self.peers[name]
            if peer.verdict is _Verdict.FAILED:
                self._set(name, Status.DEAD, peer.incarnation, now)
                self._enqueue(Gossip("dead", name, peer.incarnation, self.me))
            else:
                self._set(name, Status.ALIVE, peer.incarnation, now,
                          why="our own probe was answered: the suspicion lapsed")


def _failure(probe: _Probe, now: float) -> str:
    """A failed probe in words: what the direct and the indirect probes got."""
    asked = now if probe.asked_at is None else probe.asked_at
    direct = ("could not reach it" if probe.unreachable else
              f"no ack to a direct probe within {_s(asked - probe.started)}")
    k = len(probe.helpers)
    if not k:
        return f"{direct}, and no live member could probe it for us"
    return f"{direct}, nor through {k} helper{'s' if k > 1 else ''} within {_s(now - asked)}"


def _s(seconds: float) -> str:
    return f"{seconds:.2g} s"


def _after(due: float, interval: float, now: float) -> float:
    """The next period's start; after a late tick, a full period from now (no catch-up)."""
    nxt = due + interval
    return nxt if nxt > now else now + interval

"""The bully election in its improved O(n) form, fenced by terms and host leases.

Theory of operation. Liveness comes from SWIM (`live(name)`); this module decides who leads.
- A (re)starting agent first asks everyone `WhoLeads` and follows the answer: a returning
  higher-priority member never deposes a healthy leader (and could not: the hosts' leases
  stay bound to the incumbent while it renews them).
- When the leader is declared dead (or resigns), every member waits, except the one that
  believes itself the highest-priority live member: it runs at once. That is what keeps an
  election O(n) in messages: one candidate asks the h hosts for leases and, on a majority,
  tells the n members `Coordinator`; nobody else speaks. A member that hears nothing for
  `coordinator_timeout` falls back to the classic bully round: `Election` to the live
  higher members; an `Answer` means "I take over", silence means "run yourself".
- A candidate proposes term = highest seen + 1 (persisted before asking), and becomes
  leader only with a majority of host grants; every leadership change thus raises the term,
  and a restart, which reloads the persisted term, never proposes a used one.
- The leader renews its leases every `renew_interval`; it *acts* while a majority is valid
  (`Holder.quorum_until`). Without it: policy 'stop' resigns, 'freeze' stays leader idle.
- Any message revealing a higher term (coordinator, answers, lease refusals, the leader
  header on SWIM probes) makes the agent follow that term's leader, stepping down if needed.
- A leader refused by a host for a higher term nobody leads (a failed candidate's, or the
  persisted term of a restarted host) asks every host for a term above it (a refresh), acting
  on its current leases meanwhile; it steps down only when more hosts are fenced than a
  majority can spare. A host bound to the leader's refresh refuses its older term naming
  the leader itself, and does not count as fenced.
Who may claim what (authority.py). Only pool hosts stand for election, and the roster ranks
every pool host above every node (members.py), so a node never outranks a live pool host.
It could not lead anyway: acting needs a majority of host leases, and a host grants its
lease only to a pool host (a node's `LeaseRequest` is refused). So a node never runs: it
follows, and without a leader it only nudges the live hosts with `Election`. A leadership
claim must be backed: `Coordinator`, `Answer` and `Resign` count only from pool hosts, and a
`LeaderIs` or probe header naming a node as leader is refused. A node's word never teaches a
term or a leader (it may still ask, and be answered); so a forged `Coordinator(term + 5)`
from a node's certificate changes nothing anywhere, and no node can push up the terms that
members persist. A host raises its fence (the term below which it grants nothing) only on
the leases it grants and from its own persisted term, never on what it hears.
Roles and their legal moves are the table `states.TRANSITIONS`; anything else raises and
changes nothing. Outputs are collected in `out`/`events`/`refused` and drained by the agent
facade.
Persisting. A term raised here is acted on only once it is durable: the facade hands the
shell `persist` before any message, and when the shell cannot write it (a full disk) the
facade puts back the state of `snapshot()` taken before the step, as if the message had not
arrived; the next message or tick tries again.
A pool host that lost its term file (`proof`, see recovery.py) follows but never runs, grants
nothing, and answers `WhoLeads` without vouching, until enough other hosts told it their terms.
In a two-host pool (`pair`, twohost.py) a host runs only while its peer is there or fenced,
and a fenced peer counts as a grant (`Holder.stand_ins`); a host relearning its terms still
neither runs nor grants, whatever its pair says.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

from cloudd.election.authority import Refusal
from cloudd.election.config import Timing
from cloudd.election.lease import Grantor, Holder
from cloudd.election.members import Roster
from cloudd.election.messages import (
    Answer,
    Coordinator,
    Election,
    LeaderIs,
    LeaseGrant,
    LeaseReject,
    LeaseRelease,
    LeaseRequest,
    Message,
    Resign,
    WhoLeads,
)
from cloudd.election.recovery import UNKNOWN, TermProof, witnesses_needed
from cloudd.election.states import TRANSITIONS, ElectionEvent, ElectionRole
from cloudd.election.twohost import Pair
from cloudd.errors import LocalProtocolError, RemoteProtocolError

#: What a snapshot does not copy: the configuration and the collaborators, never changed by a
#: step. A two-host pool's `pair` is the agent's (like SWIM's view, what it learned stays).
_SHARED = ("me", "roster", "timing", "rng", "live", "pair")


def _copied(value: object) -> object:
    """A copy of one part of the state, as deep as a step's changes in place go."""
    kind = type(value)
    if kind in _CONTAINERS:
        return value.copy()  # type: ignore[attr-defined]
    if kind in _PARTS:
        twin = copy.copy(value)
        for k, v in vars(twin).items():
            if type(v) in _CONTAINERS:
                setattr(twin, k, v.copy())
        return twin
    return value  # immutable: numbers, strings, enums, frozen messages


_CONTAINERS = frozenset({list, set, dict})
#: The state's own objects that a step changes in place.
_PARTS = frozenset({Grantor, Holder, TermProof})


class Bully:
    """One agent's election state; `live` answers "not believed dead" from SWIM."""

    def __init__(self, me: str, roster: Roster, *, timing: Timing, rng: random.Random,
                 live: Callable[[str], bool]) -> None:
        self.me, self.roster, self.timing, self.rng, self.live = me, roster, timing, rng, live
        self.role = ElectionRole.INIT
        self.term = 0
        self.leader = ""
        self.persisted = 0
        self.fence = 0
        self.deadline = float("inf")
        self.grantor: Grantor | None = None
        self.holder: Holder | None = None
        self.rejected: set[str] = set()
        self.fenced: set[str] = set()
        #: A leader fenced out of some host re-establishes itself under a higher term.
        self.refresh: Holder | None = None
        self.retry_at = 0.0
        self.not_before = float("-inf")
        self.out: list[tuple[str, Message]] = []
        self.events: list[ElectionEvent] = []
        self.refused: list[Refusal] = []
        self.persist: int | None = None
        #: Members this agent has reason to suspect (a host missing its leader's renewals);
        #: the facade hands them to SWIM, which confirms or refutes.
        self.suspects: list[str] = []
        self._leader_silent_reported = False
        #: A two-host pool's rule about the other host (twohost.py), set by the agent.
        self.pair: Pair | None = None
        #: Set while this pool host relearns the terms its lost term file held (recovery.py).
        self.proof: TermProof | None = None

    # -- persisting ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """This state, to be put back by `restore` when a term it raised could not be saved.
        Two levels deep (the state's containers, and those of its grantor, holders and proof),
        which is all a step changes in place: a few microseconds, taken at every step."""
        return {k: _copied(v) for k, v in vars(self).items() if k not in _SHARED}

    def restore(self, snapshot: dict[str, object]) -> None:
        vars(self).update(snapshot)

    # -- queries ------------------------------------------------------------------------
    def acting_until(self) -> float | None:
        if self.role is not ElectionRole.LEADER or self.holder is None:
            return None
        return self.holder.quorum_until()

    def next_deadline(self, now: float) -> float:
        until = self.acting_until()
        lapse = until if until is not None and until > now else float("inf")
        silent = self._leader_silent_at()
        ask = self.proof.next_ask if self.proof is not None and self.proof.possible \
            else float("inf")
        return min(self.deadline, lapse, silent if silent > now else float("inf"), ask)

    def _leader_silent_at(self) -> float:
        """When a host should suspect the leader it follows: after missing 2.5 renewals.
        Renewals are heartbeats the hosts get anyway; this makes a leader's death known
        to SWIM well before a random probe would find it (one suspicion per host)."""
        g = self.grantor
        if g is None or self.role is not ElectionRole.FOLLOWER or g.holder != self.leader \
                or self._leader_silent_reported:
            return float("inf")
        return g.expires - g.duration + 2.5 * self.timing.renew_interval

    # -- transitions --------------------------------------------------------------------
    def _goto(self, role: ElectionRole, reason: str) -> None:
        if role not in TRANSITIONS[self.role]:
            raise LocalProtocolError(f"{self.me}: no transition from {self.role.value} to "
                                     f"{role.value} ({reason})")
        if role is not self.role:
            self.events.append(ElectionEvent("role", f"{self.role.value} -> {role.value}: {reason}",
                                     self.term, self.leader))
        self.role = role

    def _raise_term(self, term: int, leader: str) -> None:
        # Not the fence: a host learns that from the leases it grants (`_grant`, winning).
        if term > self.term:
            self.term, self.leader = term, leader
            self.events.append(ElectionEvent("term", f"term {term} seen", term, leader))
        self._persist(term)

    def _persist(self, term: int) -> None:
        if term > self.persisted:
            self.persisted = self.persist = term

    def _follow(self, leader: str, term: int, now: float, reason: str) -> None:
        self._raise_term(term, leader)
        self.leader = leader
        self.holder = self.refresh = None
        self._goto(ElectionRole.FOLLOWER, reason)
        self.deadline = float("inf")
        self.events.append(ElectionEvent("leader", reason, term, leader))

    def _await(self, now: float, delay: float, reason: str) -> None:
        """No leader known: run at `now + delay`. A leader stepping down says so to all."""
        if self.role is ElectionRole.LEADER:
            self.out += [(n, Resign(self.term)) for n in self.roster.names if n != self.me]
        self.leader, self.holder, self.refresh = "", None, None
        self._goto(ElectionRole.AWAITING, reason)
        self.deadline = now + delay

    def _higher_hosts(self) -> list[str]:
        """The live members that outrank us and may lead, highest first."""
        return [n for n in self.roster.higher_than(self.me)
                if self.roster.may_lead(n) and self.live(n)]

    def _top(self) -> bool:
        return not self._higher_hosts()

    def _lost_leader(self, now: float, reason: str) -> None:
        """The top live member runs (almost) at once; the others give it time to win."""
        if self._top():
            base = self.timing.retry_backoff
            self._await(now, self.rng.uniform(0, base) if self.role is ElectionRole.LEADER else 0.0,
                        reason)
        else:
            self._await(now, self.timing.coordinator_timeout, reason)

    def _run(self, now: float, *, ask_higher: bool = True) -> None:
        """AWAITING's deadline: the top live host asks the hosts; others bully upward."""
        higher = self._higher_hosts() if ask_higher else []
        if higher:
            self._goto(ElectionRole.ELECTING, f"asking {len(higher)} higher members")
            self.out += [(n, Election(self.term)) for n in higher]
            self.deadline = now + self.timing.answer_timeout
            return
        if not self.roster.may_lead(self.me) or self.proof is not None:
            # A node never runs (no host would grant it a lease), nor a host that may have
            # granted the term it would propose: it waits for a Coordinator and nudges the
            # live hosts again after a while.
            self._goto(ElectionRole.AWAITING, "a node waits for a pool host to lead"
                       if self.proof is None else "relearning its terms: it does not run")
            self.deadline = now + self.timing.coordinator_timeout
            return
        if now < self.not_before:
            if self.role is not ElectionRole.AWAITING:
                self._goto(ElectionRole.AWAITING, "waiting out the leases of a previous life")
            self.deadline = self.not_before
            return
        if self.pair is not None and not self.pair.may_run():
            if self.role is not ElectionRole.AWAITING:
                self._goto(ElectionRole.AWAITING, f"two-host pool: {self.pair.peer} is "
                                                  f"{self.pair.state.value}, not fenced")
            self.deadline = now + self.timing.inquiry_timeout
            return
        proposed = max(self.term, self.persisted) + 1
        self._goto(ElectionRole.CANDIDATE, f"asking hosts for term {proposed}")
        self._persist(proposed)  # before any request for it leaves (see Output)
        self.holder = Holder(term=proposed, hosts=self.roster.hosts,
                             quorum=self.roster.quorum, timing=self.timing,
                             stand_ins=self._stand_ins)
        self.rejected = set()
        self.retry_at = 0.0
        self.deadline = now + self.timing.candidate_timeout
        self._ask_hosts(now)

    def _stand_ins(self) -> dict[str, float]:
        return dict(self.pair.stand_ins()) if self.pair is not None else {}

    def _ask_hosts(self, now: float) -> None:
        assert self.holder is not None
        self._ask(self.holder, now)
        if self.refresh is not None and self.role is ElectionRole.LEADER:
            self._ask(self.refresh, now)

    def _ask(self, holder: Holder, now: float) -> None:
        req = holder.request(now)
        for host in sorted(self.roster.hosts):
            if host == self.me:
                self._lease_answer(self.me, self._grant(self.me, req, now), now)
            else:
                self.out.append((host, req))

    def _grant(self, candidate: str, req: LeaseRequest, now: float) -> LeaseGrant | LeaseReject:
        assert self.grantor is not None
        if self.proof is not None:
            return LeaseReject(seq=req.seq, term=self.fence, leader="", holder="", remaining=0.0,
                               reason=f"{self.me} is relearning its terms (a state file was "
                                      f"set aside): it grants no lease yet")
        # Who may use the highest term we have seen: we know our own proposals, and the
        # leader of that term if we follow it; anybody else must propose a higher one.
        followed = self.leader if self.term == self.fence else ""
        owner = self.me if candidate == self.me else followed
        if self.grantor.holder == candidate and self.grantor.holder_term == self.fence:
            # The candidate holds our highest term itself (a leader's refresh, see
            # `_lease_answer`): a refusal of its older term says so, so that it knows this
            # host is not fenced against it but bound to it.
            owner = candidate
        answer = self.grantor.decide(candidate, req, now, term=self.fence, leader=owner)
        if isinstance(answer, LeaseGrant) and candidate != self.me:
            # Our own proposals do not fence: a failed candidacy of ours (released) must
            # not lock the incumbent out of this host; winning raises the fence anyway.
            self._leader_silent_reported = False
            self.fence = max(self.fence, req.term)
            self._persist(req.term)
        return answer

    def _backoff(self, now: float, at_least: float, reason: str) -> None:
        """Give up this candidacy (or leadership, whose acting has ended): free the hosts we
        bound, and retry after a jittered pause that is longer for lower priorities, so that
        two candidates that split the hosts do not split them again."""
        acting_over = self.holder is not None and self.holder.quorum_until() <= now
        if self.holder is not None and (self.role is ElectionRole.CANDIDATE or acting_over):
            release = LeaseRelease(self.holder.term)
            for host in sorted(self.holder.valid_until):
                if host == self.me:
                    assert self.grantor is not None
                    self.grantor.release(self.me, release.term, now)
                else:
                    self.out.append((host, release))
        base = self.timing.retry_backoff
        outranked = min(3, sum(1 for n in self.roster.higher_than(self.me)[:3] if self.live(n)))
        pause = self.rng.uniform(base, 2 * base) * (1 + outranked)
        self._await(now, max(at_least, pause), reason)

    # -- inputs -------------------------------------------------------------------------
    def start(self, now: float, persisted_term: int, *, proven: bool = True) -> None:
        """`proven` False: a state file holding this agent's terms was lost, and
        `persisted_term` is only a floor (what survived); a pool host then relearns its terms
        before it grants or runs (recovery.py)."""
        if persisted_term < 0:
            raise LocalProtocolError(f"persisted term must be >= 0, got {persisted_term}")
        self._goto(ElectionRole.INQUIRING, f"started with persisted term {persisted_term}"
                   + ("" if proven else " at least (a term file was lost)"))
        # `term` is the term of the leader we know (none yet); `persisted` the highest term
        # ever seen or proposed, which fences grants and seeds our own proposals.
        # `fence` is the highest term granted or led (a host grants nothing below it);
        # after a restart only the persisted term is known, so it is the fence.
        self.term, self.persisted, self.fence = 0, persisted_term, persisted_term
        # A previous life of this agent may have led and may still be counted by hosts as
        # the holder (same name): never run before its leases have surely lapsed, so that
        # even two lives of one agent never hold overlapping leases.
        self.not_before = now + self.timing.lease_duration
        if self.me in self.roster.hosts:
            self.grantor = Grantor.after_start(now, self.timing)
        asked = [n for n in sorted(self.roster.hosts) if n != self.me]
        if not proven and self.roster.may_lead(self.me):
            # Asked from the end of the leases on, not now (recovery.py, "Freshness").
            self.proof = TermProof(
                others=frozenset(asked), ready_at=self.not_before, floor=persisted_term,
                needed=witnesses_needed(len(self.roster.hosts), self.roster.quorum),
                ask_every=self.timing.inquiry_timeout)
            asked = []
        # Ask the hosts: they bind their leases to the leader, so they know it, and only a
        # pool host's word teaches a leader (a node's answer would be refused anyway). O(h)
        # per start, not O(n), so a whole cloud can cold-start at once.
        self.out += [(n, WhoLeads(self.term)) for n in asked]
        self.deadline = now + self.timing.inquiry_timeout

    def tick(self, now: float) -> None:
        if self.proof is not None and self.proof.possible:
            self.out += [(n, WhoLeads(self.term)) for n in self.proof.asks(now)]
        if now >= self._leader_silent_at():
            self._leader_silent_reported = True
            self.suspects.append(self.leader)
        role = self.role
        if role is ElectionRole.LEADER:
            assert self.holder is not None
            if self.holder.quorum_until() <= now and self.timing.no_quorum == "stop":
                self._backoff(now, self.timing.renew_interval, "lost the host quorum, resigned")
                return
            if now >= self.deadline:
                self.deadline = now + self.timing.renew_interval
                self._ask_hosts(now)
        elif now < self.deadline:
            return
        elif role is ElectionRole.INQUIRING:
            self._lost_leader(now, "nobody answered who leads")
            if now >= self.deadline:
                self._run(now)
        elif role is ElectionRole.AWAITING:
            self._run(now)
        elif role is ElectionRole.ELECTING:
            self._run(now, ask_higher=False)
        else:
            self._backoff(now, self.retry_at - now, "no host majority in time")

    def member_changed(self, name: str, live: bool, now: float) -> None:
        if not live and name == self.leader and self.role is ElectionRole.FOLLOWER:
            self._lost_leader(now, f"leader {name} is dead")
        elif not live and self.role is ElectionRole.AWAITING and self._top():
            self.deadline = min(self.deadline, now)

    def observe(self, sender: str, leader: str, term: int, now: float, *,
                header: bool = False) -> None:
        """A claim "`leader` leads `term`" (LeaderIs, or the `header` of a SWIM probe).

        A higher term without a leader is ignored here on purpose: a member that only
        *proposed* it (and failed) must not disturb a healthy leader (Raft's disruptive
        server); leaders are fenced by the hosts' refusals instead (`_lease_answer`).
        A node's claim is never believed. Its probe headers are ignored quietly (an honest
        node may simply have heard the news first); a `LeaderIs` from a node that would
        have changed something is refused: nobody asks nodes who leads."""
        if term < 0 or (leader and leader not in self.roster):
            raise RemoteProtocolError(f"{sender} claimed leader {leader!r} for term {term}")
        if not self.roster.may_lead(sender):
            if not header and leader and (leader != self.leader or term > self.term):
                self.refused.append(Refusal(sender, term, f"{sender} is not a pool host: its "
                                            f"word names no leader and raises no term"))
            return
        if leader == self.me and term >= self.term and self.role is not ElectionRole.LEADER:
            # Others follow a previous life of ours: we are their incumbent, so run at once
            # (no bully round); the hosts still bound to that life will grant us first.
            self._raise_term(term, "")
            if self.proof is not None:  # we may not run: let them elect another
                self.out.append((sender, Resign(term)))
                return
            if self.role in (ElectionRole.INQUIRING, ElectionRole.FOLLOWER, ElectionRole.ELECTING):
                self._await(now, 0.0, f"{sender} still follows our previous life")
            if self.role is ElectionRole.AWAITING:
                self._run(now, ask_higher=False)
            return
        followable = bool(leader) and leader != self.me and self.live(leader)
        if followable and (term > self.term or (term == self.term and not self.leader
                                                and self.role is not ElectionRole.LEADER)):
            self._follow(leader, term, now, f"{sender} says {leader} leads term {term}")

    def receive(self, sender: str, msg: Message, now: float) -> None:
        if isinstance(msg, WhoLeads):
            leading = self.role in (ElectionRole.FOLLOWER, ElectionRole.LEADER)
            self.out.append((sender, LeaderIs(self.leader if leading else "", self.term,
                                              self._vouch())))
        elif isinstance(msg, LeaderIs):
            if msg.highest < UNKNOWN:
                raise RemoteProtocolError(f"{sender} vouched for a negative term {msg.highest}")
            if self.proof is not None and self.roster.may_lead(sender) \
                    and self.proof.report(sender, msg.highest, now):
                self._relearned()
            self.observe(sender, msg.leader, msg.term, now)
        elif isinstance(msg, Election):
            if self.roster.outranks(sender, self.me):
                raise RemoteProtocolError(f"{sender} sent an election to lower {self.me}")
            if self.role is ElectionRole.LEADER:
                self.out.append((sender, Coordinator(self.term)))
            elif self.role is ElectionRole.FOLLOWER or self.proof is not None:
                # a follower names its leader; a host relearning its terms does not take
                # the election over (it may not run): the sender runs after its timeout
                following = self.role is ElectionRole.FOLLOWER
                self.out.append((sender, LeaderIs(self.leader if following else "", self.term,
                                                  self._vouch())))
            else:
                self.out.append((sender, Answer(self.term)))
                if self.role in (ElectionRole.AWAITING, ElectionRole.INQUIRING):
                    if self.role is ElectionRole.INQUIRING:
                        self._await(now, 0.0, f"{sender} called an election")
                    self._run(now)
        elif isinstance(msg, Answer):
            self.observe(sender, "", msg.term, now)
            if self.role is ElectionRole.ELECTING:
                self._await(now, self.timing.coordinator_timeout, f"{sender} answered")
        elif isinstance(msg, Coordinator):
            if msg.term == self.term and self.role is ElectionRole.LEADER:
                raise RemoteProtocolError(f"{sender} claims term {msg.term}, which we lead")
            if msg.term >= self.term:
                self._follow(sender, msg.term, now, f"{sender} won term {msg.term}")
            elif self.roster.may_lead(self.me):  # a node's word would not count
                self.out.append((sender, LeaderIs(self.leader, self.term, self._vouch())))
        elif isinstance(msg, Resign):
            if (sender == self.leader and msg.term == self.term
                    and self.role is ElectionRole.FOLLOWER):
                self._lost_leader(now, f"leader {sender} resigned")
        elif isinstance(msg, LeaseRequest):
            if self.grantor is None:
                raise RemoteProtocolError(f"{sender} asked non-host {self.me} for a lease")
            self.out.append((sender, self._grant(sender, msg, now)))
        elif isinstance(msg, LeaseRelease):
            if self.grantor is None:
                raise RemoteProtocolError(f"{sender} released a lease at non-host {self.me}")
            self.grantor.release(sender, msg.term, now)
        elif isinstance(msg, LeaseGrant | LeaseReject):
            self._lease_answer(sender, msg, now)  # from a pool host (authority.RULES)

    def _vouch(self) -> int:
        """The persisted term this agent tells others, or UNKNOWN while it relearns its own."""
        return UNKNOWN if self.proof is not None else self.persisted

    def _relearned(self) -> None:
        """Enough other hosts vouched (recovery.py): no term this host gave away is above the
        proven floor, which becomes its fence; written as proven before anything relies on it."""
        assert self.proof is not None
        proven, heard = self.proof.proven(), len(self.proof.heard)
        if proven is None:
            return
        self.proof = None
        self.fence = max(self.fence, proven)
        self.persisted = max(self.persisted, proven)
        self.persist = self.persisted  # even when not higher: the file still says unproven
        self.events.append(ElectionEvent(
            "term", f"terms relearned from {heard} pool hosts: persisted {self.persisted}",
            self.persisted))

    def refuse(self, sender: str, msg: Message, reason: str) -> None:
        """`sender` had no right to send `msg` (authority.py): change nothing, report it.
        A lease asked of a host by a node is answered no, so that it stops asking."""
        self.refused.append(Refusal(sender, getattr(msg, "term", 0), reason))
        if isinstance(msg, LeaseRequest) and self.grantor is not None:
            self.out.append((sender, LeaseReject(seq=msg.seq, term=self.fence, leader="",
                                                 holder="", remaining=0.0, reason=reason)))

    def _lease_answer(self, host: str, msg: LeaseGrant | LeaseReject, now: float) -> None:
        if self.holder is None or self.role not in (ElectionRole.CANDIDATE, ElectionRole.LEADER):
            return
        if isinstance(msg, LeaseGrant):
            refresh = self.refresh
            if refresh is not None and msg.term == refresh.term:
                refresh.granted(host, msg)
                if refresh.quorum_until() > now:
                    # Same leader, higher term: followers and hosts learn it at once.
                    self.holder, self.refresh, self.fenced = refresh, None, set()
                    self.fence = max(self.fence, refresh.term)
                    self._raise_term(refresh.term, self.me)
                    self.out += [(n, Coordinator(refresh.term)) for n in self.roster.names
                                 if n != self.me]
                    self.events.append(ElectionEvent("leader", "re-established under a higher term",
                                             refresh.term, self.me))
                return
            self.holder.granted(host, msg)
            if self.role is ElectionRole.CANDIDATE and self.holder.quorum_until() > now:
                term = self.holder.term
                self.fence = max(self.fence, term)  # our own lease is bound to it too
                self._raise_term(term, self.me)
                self.leader = self.me
                self._goto(ElectionRole.LEADER, f"{self.roster.quorum} host leases for term {term}")
                self.fenced = set()
                self.deadline = now + self.timing.renew_interval
                self.out += [(n, Coordinator(term)) for n in self.roster.names if n != self.me]
                self.events.append(ElectionEvent("leader", "won the election", term, self.me))
            return
        if msg.leader and msg.leader != self.me:
            self.observe(host, msg.leader, msg.term, now)
            if self.role not in (ElectionRole.CANDIDATE, ElectionRole.LEADER):
                return
        self._persist(msg.term)  # propose above it next time
        if self.role is ElectionRole.LEADER and msg.term > self.term:
            # A failed candidate's higher term fences us out of this host for good; step
            # down only when too few hosts are left to ever renew a majority. A host bound
            # to us under a higher term of ours (it granted our refresh: `msg.leader` is us)
            # refuses our older term but is not lost: counting it would make a leader whose
            # refresh is being granted step down, and the term move, for nothing.
            ours = msg.leader == self.me
            if not ours:
                self.fenced.add(host)
            if len(self.fenced) > len(self.roster.hosts) - self.roster.quorum:
                self._lost_leader(now, f"fenced out by {len(self.fenced)} hosts")
            elif self.refresh is None or self.refresh.term < msg.term or (
                    self.refresh.term == msg.term and not ours):
                # Still leading on the other hosts: ask all for a term above the fence,
                # keeping the current leases (and acting) until a majority grants it.
                proposed = max(self.persisted, msg.term) + 1
                self._persist(proposed)
                self.refresh = Holder(term=proposed, hosts=self.roster.hosts,
                                      quorum=self.roster.quorum, timing=self.timing,
                                      stand_ins=self._stand_ins)
                self._ask(self.refresh, now)
        elif self.role is ElectionRole.CANDIDATE:
            self.rejected.add(host)
            self.retry_at = max(self.retry_at, now + msg.remaining)
            if len(self.rejected) > len(self.roster.hosts) - self.roster.quorum:
                self._backoff(now, self.retry_at - now, f"hosts refused: {msg.reason}")

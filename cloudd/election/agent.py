"""The one object the daemon's shell talks to: an agent's membership and election, sans I/O.

Theory of operation: `AgentCore` wires SWIM (`swim.Membership`), the bully election with
its leases (`bully.Bully`) and validation together, in the sans-I/O style of etcd-io/raft
and h11. The shell calls `start(now, persisted_term=...)` once, then `step(sender, msg,
now)` for each message received, `tick(now)` when `Output.wake_at` comes (or earlier: extra
ticks are harmless) and `peer_unreachable(peer, now)` when a connect or send fails. Each
returns an `Output`, which the shell performs in this order:
1. if `persist_term` is set, write it durably (fsync) *before* sending anything: the
   messages may carry that term, and a restart must never propose it again. When the write
   fails (a full disk), perform nothing of this Output but `persist_failed(now, retry_at=...)`'s
   instead: the election is put back as it was before the call (the message is refused, the
   proposal not made; membership keeps what it learned), and it asks to be ticked again at
   `retry_at` at the latest;
2. send `messages` (best effort: a failure comes back as `peer_unreachable`);
3. log `events` (one line each, with the fixed keys term and peer), and `refused`: messages
   their sender had no right to send (authority.py), which changed nothing;
4. act on the cloud only while `acting` is true and never past `acting_until`, even if no
   tick comes in time (the lease is then gone at the hosts).
Bad input (an unknown sender, a message meant for another agent, time running backwards,
calls before `start`) raises `RemoteProtocolError`/`LocalProtocolError` and changes nothing.
`holds_lease(member, term, now)` is the host's question before it runs a host command.
A pool host started with `proven=False` (a term file was lost) relearns its terms first
(`unproven`, recovery.py); `proven_fence()` is then None, and the host runs no host command.
In a two-host pool (twohost.py) an `Output` may also name a peer to `fence`: the shell runs
the pool's fence command for it and reports the outcome with `fence_result`; until then, and
after a failure, this agent stands for nothing. The peer's state is what this agent learned,
like SWIM's: a term that cannot be saved does not put it back, and `persist_failed` hands out
again the fence and the moves of the call it undoes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from cloudd.election.authority import Refusal, refusal
from cloudd.election.bully import Bully
from cloudd.election.config import Timing
from cloudd.election.members import Roster
from cloudd.election.messages import (
    MESSAGE_TYPES,
    Ack,
    Gossip,
    Message,
    Ping,
    PingReq,
)
from cloudd.election.states import ElectionEvent, ElectionRole
from cloudd.election.swim import Membership, Status
from cloudd.election.twohost import Pair
from cloudd.errors import LocalProtocolError, ProtocolError, RemoteProtocolError


@dataclass(frozen=True)
class Output:
    """What the shell must do after one call (see the module docstring for the order)."""

    messages: tuple[tuple[str, Message], ...]
    persist_term: int | None
    events: tuple[ElectionEvent, ...]
    acting: bool
    acting_until: float | None
    wake_at: float
    refused: tuple[Refusal, ...] = ()
    #: A two-host pool's peer to fence now (run its fence command, then `fence_result`).
    fence: str | None = None


class AgentCore:
    """Membership and election of agent `me` in the cloud `roster`."""

    def __init__(self, me: str, roster: Roster, *, timing: Timing | None = None,
                 rng: random.Random) -> None:
        if me not in roster:
            raise LocalProtocolError(f"{me!r} is not a member of this cloud")
        self.me = me
        self.roster = roster
        self.timing = (timing or Timing.production()).validate()
        self.members = Membership(me, roster, timing=self.timing, rng=rng)
        self.bully = Bully(me, roster, timing=self.timing, rng=rng, live=self.members.live)
        self.pair: Pair | None = None
        self._now = float("-inf")
        self._acting = False
        self._pending_out: list[tuple[str, Message]] = []
        self._pending_events: list[ElectionEvent] = []
        #: the election (and whether it acted) before the part of a call that may raise its
        #: persisted term: put back if that term cannot be saved
        self._checkpoint: tuple[dict[str, object], bool] | None = None
        #: the last call's checkpoint, with what membership (and a two-host pool's peer
        #: state: its moves, and the fence it asked for) had to say in that call
        self._undo: tuple[dict[str, object], bool, list[tuple[str, Message]],
                          list[ElectionEvent], str | None] | None = None

    # -- queries ------------------------------------------------------------------------
    @property
    def leader(self) -> str:
        """The leader this agent follows or is ('' when it knows none)."""
        following = self.bully.role in (ElectionRole.FOLLOWER, ElectionRole.LEADER)
        return self.bully.leader if following else ""

    @property
    def term(self) -> int:
        return self.bully.term

    @property
    def role(self) -> ElectionRole:
        return self.bully.role

    @property
    def acting(self) -> bool:
        """Acting as of the last call; prefer `is_acting(now)` between calls."""
        return self._acting

    def is_acting(self, now: float) -> bool:
        until = self.bully.acting_until()
        return until is not None and now < until

    def status(self, name: str) -> Status:
        return self.members.status(name)

    def backs_me(self, host: str, now: float) -> bool:
        """True while this agent leads on a lease `host` granted that is still valid by this
        agent's clock: proof that `host` answered within a lease, whatever gossip says yet."""
        holder = self.bully.holder
        if self.bully.role is not ElectionRole.LEADER or holder is None:
            return False
        return holder.backed_by(host, now)

    @property
    def unproven(self) -> bool:
        """True while this pool host relearns the terms its lost term file held."""
        return self.bully.proof is not None

    def why_unproven(self) -> str:
        """Why this host grants no lease and runs no host command yet, in words ('' if it
        may)."""
        proof = self.bully.proof
        return proof.describe() if proof is not None else ""

    def proven_fence(self) -> int | None:
        """The highest term this host granted or led (its fence), once its terms are proven:
        what its host agent may take as its fencing token when that file was lost too."""
        return None if self.unproven else self.bully.fence

    def holds_lease(self, member: str, term: int, now: float) -> bool:
        """True when this agent, a pool host, granted its leader lease to `member` for
        exactly `term` and that lease is unexpired at `now` by this host's clock: the one
        test a host applies before it runs a host command. Always False on a node."""
        grantor = self.bully.grantor
        return grantor is not None and grantor.holds_lease(member, term, now)

    def describe(self, now: float) -> dict[str, object]:
        """A plain summary for `cloudd-cli inspect`: role, term, leader, acting, and the
        members this agent does not believe alive, each with its status, since when (on the
        clock the core is given) and why, in words."""
        return {
            "member": self.me,
            "role": self.bully.role.value,
            "term": self.bully.term,
            "persisted_term": self.bully.persisted,
            "leader": self.leader,
            "acting": self.is_acting(now),
            "acting_until": self.bully.acting_until() if self.is_acting(now) else None,
            "incarnation": self.members.incarnation,
            "unproven": self.why_unproven(),
            "not_alive": {n: {"status": d.status.value, "since": d.since, "reason": d.reason}
                          for n, d in self.members.doubts().items()},
            "two_host": self.pair.describe() if self.pair is not None else None,
        }

    def stand_ins(self) -> frozenset[str]:
        """Pool hosts that count as having persisted every write of the cloud's record: a
        two-host pool's peer while its fence holds (twohost.py)."""
        return self.pair.acknowledged() if self.pair is not None else frozenset()

    # -- inputs -------------------------------------------------------------------------
    def start(self, now: float, *, persisted_term: int = 0, proven: bool = True) -> Output:
        if self.bully.role is not ElectionRole.INIT:
            raise LocalProtocolError(f"{self.me} is already started")
        self.bully.start(now, persisted_term, proven=proven)
        self.members.start(now)
        self._pair_for(self.roster, now)
        self._now = now
        return self._flush(now)

    def step(self, sender: str, msg: Message, now: float) -> Output:
        self._check(now)
        if sender not in self.roster or sender == self.me:
            raise RemoteProtocolError(f"{self.me} got a message from non-member {sender!r}")
        cls: type = type(msg)
        if MESSAGE_TYPES.get(getattr(msg, "TYPE", "")) is not cls or cls is Gossip:
            raise RemoteProtocolError(f"{sender} sent {self.me} a non-message {msg!r}")
        if isinstance(msg, Ping | Ack) and (
                msg.term < 0 or (msg.leader and msg.leader not in self.roster)):
            raise RemoteProtocolError(f"{sender} claimed leader {msg.leader!r} "
                                          f"for term {msg.term}")
        term = getattr(msg, "term", 0)
        if term < 0:
            raise RemoteProtocolError(f"{sender} sent a negative term {term}")
        # The cores validate before they change anything, so `_now` moves only on success.
        refused = refusal(self.roster, self.me, sender, msg)
        if isinstance(msg, Ping | Ack | PingReq):
            # Liveness is everybody's business; a bad header refuses only the header.
            self.members.receive(sender, msg, now)
            if not isinstance(msg, PingReq):
                self._changes(now)
                self._mark()
                if refused is None:
                    self.bully.observe(sender, msg.leader, msg.term, now, header=True)
                else:
                    self.bully.refuse(sender, msg, refused)
        elif refused is not None:
            self.bully.refuse(sender, msg, refused)
        else:
            self._mark()
            try:
                self.bully.receive(sender, msg, now)
            except ProtocolError:
                self._checkpoint = None
                raise
        if self.pair is not None and sender == self.pair.peer:
            self.pair.heard(now)  # the transport named the sender by its certificate
        self._now = now
        out = self._flush(now)
        if not out.refused:  # a member that speaks needs no ping this period
            self.members.heard(sender, now)
        return out

    def tick(self, now: float) -> Output:
        self._check(now)
        self._now = now
        # One pass can make more work due at once (a host's own suspicion may complete a
        # confirmation; a death may make us the top candidate): repeat until nothing is
        # due, so that the shell is never asked to wake again immediately.
        for _ in range(4):
            self.members.probe_tick(now)
            self._changes(now)
            self._observe_pair(now)
            self._mark()
            self.bully.tick(now)
            for name in self.bully.suspects:
                self.members.suspect(name, now, why="its leader lease renewals stopped coming")
            self.bully.suspects.clear()
            self._changes(now)
            if self.bully.persist is not None:
                break  # nothing more on a term not saved yet: the next tick goes on
            if min(self.members.next_deadline(), self.bully.next_deadline(now),
                   self._pair_deadline(now)) > now:
                break
        return self._flush(now)

    def change_roster(self, roster: Roster, now: float) -> Output:
        """Take a new generation's roster that keeps the same pool hosts in the same order
        (nodes added or dropped): a dropped member is forgotten and gets nothing from here
        on; an added one is a member like any other. The election goes on undisturbed: the
        hosts, their ranks, the quorum and the leases are what they were. A change of the
        pool hosts is refused here (LocalProtocolError): the shell starts the election over,
        as after a restart."""
        self._check(now)
        if self.me not in roster:
            raise LocalProtocolError(f"{self.me!r} is not a member of the new roster")
        if roster.pool() != self.roster.pool():
            raise LocalProtocolError("the new roster changes the pool hosts")
        self.roster = roster
        self.members.change_roster(roster)
        self.bully.roster = roster
        if self.pair is not None and roster.two_host is not None:
            self.pair.reconfigure(roster, timing=self.timing)  # a fenced peer stays fenced
        else:
            self._pair_for(roster, now)
        self._now = now
        return self._flush(now)

    def fence_result(self, peer: str, *, ok: bool, reason: str, now: float) -> Output:
        """The shell ran the fence command for `peer` that an `Output` asked for: `ok` when it
        succeeded (the peer is off). A fenced peer counts as granted: an agent waiting to
        run does so at once."""
        self._check(now)
        if self.pair is None or peer != self.pair.peer:
            raise LocalProtocolError(f"{peer!r} is not the peer of a two-host pool here")
        self.pair.fence_result(ok=ok, reason=reason, now=now)
        self._now = now
        if ok:
            # The peer is surely dead now: the election moves on at once (a follower of it
            # loses its leader; an agent waiting to run runs).
            self._mark()
            self.bully.member_changed(peer, False, now)
        return self._flush(now)

    def peer_unreachable(self, peer: str, now: float) -> Output:
        self._check(now)
        if peer not in self.roster or peer == self.me:
            raise LocalProtocolError(f"{peer!r} is not a peer of {self.me}")
        self._now = now
        self.members.unreachable(peer, now)
        return self._flush(now)

    def persist_failed(self, now: float, *, retry_at: float) -> Output:
        """The shell could not save the last Output's `persist_term`: the election goes back
        to where it was before that call, as if the message (or the tick's proposal) had not
        come, and what membership said in that call is handed out again; the Output to
        perform instead, which asks for a tick by `retry_at` to try again."""
        if self._undo is None:
            raise LocalProtocolError(f"{self.me}: no term was waiting to be saved")
        snapshot, acting, out, events, fence = self._undo
        self._undo = None
        self.bully.restore(snapshot)
        self._pending_out, self._pending_events, self._acting = out, events, acting
        if fence is not None and self.pair is not None and self.pair.fence is None:
            self.pair.fence = fence  # the pair is FENCING: the command must still run
        done = self._flush(now)
        wake = min(self.members.next_deadline(), max(self.bully.next_deadline(now), retry_at),
                   self._pair_deadline(now))
        return replace(done, wake_at=max(wake, now))

    # -- internals ----------------------------------------------------------------------
    def _mark(self) -> None:
        """Remember the election as it is, before a part of this call that may raise its
        persisted term (kept only if it did, see `persist_failed`)."""
        if self.bully.persist is None:
            self._checkpoint = (self.bully.snapshot(), self._acting)

    def _check(self, now: float) -> None:
        if self.bully.role is ElectionRole.INIT:
            raise LocalProtocolError(f"{self.me} is not started")
        if now < self._now:
            raise LocalProtocolError(f"time ran backwards: {now} after {self._now}")

    def _pair_for(self, roster: Roster, now: float) -> None:
        """A two-host pool's rule on its hosts (a new one when the setting changes)."""
        two = roster.two_host is not None and self.me in roster.hosts
        self.pair = Pair(self.me, roster, timing=self.timing, now=now) if two else None
        self.bully.pair = self.pair

    def _observe_pair(self, now: float) -> None:
        if self.pair is not None:
            self.pair.observe(live=self.members.live(self.pair.peer), now=now)

    def _pair_deadline(self, now: float) -> float:
        return self.pair.next_deadline(now) if self.pair is not None else float("inf")

    def _changes(self, now: float) -> None:
        """Hand SWIM's status changes to the election, and to the log with their reason."""
        out, changes = self.members.drain()
        self._pending_out += out
        for name, status, why in changes:
            self._pending_events.append(ElectionEvent("member", f"{status.value}: {why}",
                                                      self.bully.term, name))
            self.bully.member_changed(name, status is not Status.DEAD, now)

    def _flush(self, now: float) -> Output:
        self._changes(now)
        self._observe_pair(now)
        fence = None
        if self.pair is not None:
            fence, self.pair.fence = self.pair.fence, None
            self._pending_events += [ElectionEvent("two_host", m.reason, self.bully.term,
                                                   self.pair.peer) for m in self.pair.moves]
            self.pair.moves.clear()
        bully = self.bully
        self.members.header = (self.leader, bully.term)
        messages = self._pending_out + bully.out
        events = self._pending_events + bully.events
        persist, refused = bully.persist, tuple(bully.refused)
        mark, self._checkpoint = self._checkpoint, None
        if persist is not None:  # else the shell has nothing to save, and no undo to ask
            self._undo = None if mark is None else (
                *mark, list(self._pending_out), list(self._pending_events), fence)
        self._pending_out, self._pending_events = [], []
        bully.out, bully.events, bully.persist, bully.refused = [], [], None, []
        acting = self.is_acting(now)
        if acting != self._acting:
            why = "host quorum" if acting else (
                "host leases lapsed" if bully.role is ElectionRole.LEADER else "no longer leader")
            events.append(ElectionEvent("acting", f"{'yes' if acting else 'no'}: {why}", bully.term,
                                self.me))
            self._acting = acting
        wake = min(self.members.next_deadline(), bully.next_deadline(now),
                   self._pair_deadline(now))
        return Output(messages=tuple(messages), persist_term=persist, events=tuple(events),
                      acting=acting, acting_until=bully.acting_until() if acting else None,
                      wake_at=max(wake, now), refused=refused, fence=fence)

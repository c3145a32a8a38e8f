"""The two-host rule: in a pool of two, the survivor acts only after fencing the other.

Theory of operation. With two pool hosts a majority is both, so losing either would stop all
reconciling. A pool that declares itself two-host (`Roster.two_host`) keeps that majority
while both live, and does as Pacemaker's two-node clusters do (corosync `two_node: 1` with
`wait_for_all`, fencing decides) when one is lost. Each host runs one `Pair` about the other
(its *peer*); it decides when to fence it and when the peer counts without answering:

- UNSEEN: this agent started and has not heard from its peer yet (wait_for_all). It acts
  alone on nothing; after `wait_for_all` without a word it fences the peer.
- PAIRED: heard from, not declared dead: both hosts count, as in any pool.
- LOST: the peer was declared dead (SWIM, on this host's own failed probes). The fence is
  due at once on the host ranked higher (bully order), and after `fence_delay` on the lower
  one (pcmk_delay_base): in a split both fence, and the higher one wins the race. If the
  peer speaks for itself meanwhile, the fence is called off.
- FENCING: the fence command runs (the shell performs it and reports back). It decides:
  what the peer says meanwhile changes nothing.
- FENCED: the command succeeded: the peer is powered off, and counts as a lease grant and as
  an acknowledgement of the record until it is seen again (`stand_ins`, `acknowledged`).
  Every write committed before was on both hosts, so the survivor's own copy is enough. A
  fence that failed goes back to LOST and is tried again after `fence_retry`; meanwhile this
  host does nothing (the other host may win the race and fence it).
A host may stand for election (`may_run`) only PAIRED or FENCED: alone, it neither proposes
terms nor bothers anyone. Coming back, it hears its peer first and follows it (the higher
term), and the leader's record reaches it as to any host that was down.

Seen and gone. The peer is *seen* when a message it sent itself arrives (the transport names
the sender by its certificate) or when SWIM finds it alive again after a death (which only
the member's own word does); it is *gone* when SWIM's own probes declare it dead, or when
nothing has come from it directly for `silence` (two rounds of SWIM probes, a suspicion and a
lease): the leases travel between the two hosts alone, so a cut between them stops all
leading even while the nodes, probing for SWIM on either side, still see both. A host that
comes back after its fence is seen at its first message; the leader that fenced it keeps
counting its lease for `grace` more seconds, so that the returning host, which grants nothing
for one lease after it starts, does not make the leader stand down. That is safe: the
returning host acts only with the leader's grant or after fencing it.

Pure: events and `now` in, the next state and the fence to run out. Each move is a row of
`TRANSITIONS`; a result reported while no fence runs raises and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from cloudd.election.config import Timing, TwoHost
from cloudd.election.members import Roster
from cloudd.errors import LocalProtocolError


class PeerState(Enum):
    UNSEEN = "unseen"
    PAIRED = "paired"
    LOST = "lost"
    FENCING = "fencing"
    FENCED = "fenced"


class PairEvent(Enum):
    SEEN = "seen"
    GONE = "gone"
    DUE = "due"
    FENCE_OK = "fence-ok"
    FENCE_FAILED = "fence-failed"


S, E = PeerState, PairEvent
#: (state, event) -> next state; a missing row is an illegal move (it raises).
TRANSITIONS: dict[tuple[PeerState, PairEvent], PeerState] = {
    (S.UNSEEN, E.SEEN): S.PAIRED,
    (S.UNSEEN, E.GONE): S.UNSEEN,  # wait_for_all: a start waits out its bound regardless
    (S.UNSEEN, E.DUE): S.FENCING,
    (S.PAIRED, E.SEEN): S.PAIRED,
    (S.PAIRED, E.GONE): S.LOST,
    (S.LOST, E.SEEN): S.PAIRED,  # back before the fence: called off
    (S.LOST, E.GONE): S.LOST,
    (S.LOST, E.DUE): S.FENCING,
    (S.FENCING, E.SEEN): S.FENCING,  # the fence command decides
    (S.FENCING, E.GONE): S.FENCING,
    (S.FENCING, E.FENCE_OK): S.FENCED,
    (S.FENCING, E.FENCE_FAILED): S.LOST,
    (S.FENCED, E.SEEN): S.PAIRED,
    (S.FENCED, E.GONE): S.FENCED,
}


def peer_grace(timing: Timing) -> float:
    """How long a returning peer keeps counting, and how long a peer seen while SWIM still
    holds it dead stays PAIRED: time for SWIM to hear its refutation (a dead member is
    probed every `dead_probe_interval`) and for its lease, which it grants only one lease
    after it starts."""
    return 2 * (timing.lease_duration + timing.dead_probe_interval)


def peer_silence(timing: Timing, members: int) -> float:
    """How long the peer may stay silent towards this host before it counts as gone. It pings
    this host at least once every two of its SWIM rounds (over every member), acks this
    host's pings as often, and grants or renews a lease every `renew_interval` while either
    leads; the suspicion and a lease more keep a lossy link from fencing anybody."""
    n = max(2, members)
    return (2 * (n - 1) * timing.probe_interval + timing.suspicion_timeouts(n)[1]
            + timing.lease_duration)


def record_quorum(quorum: int, stand_ins: frozenset[str]) -> int:
    """The acknowledgements a record write (or a recovery) still needs from answering hosts
    when the fenced `stand_ins` count as having given theirs."""
    return max(1, quorum - len(stand_ins))


@dataclass(frozen=True)
class Move:
    """One transition, for the log: what happened and why, in words."""

    state: PeerState
    reason: str


class Pair:
    """One pool host's view of the other host of a two-host pool."""

    def __init__(self, me: str, roster: Roster, *, timing: Timing, now: float) -> None:
        if roster.two_host is None or me not in roster.hosts or len(roster.hosts) != 2:
            raise LocalProtocolError(f"{me} is not a host of a two-host pool")
        self.me = me
        (self.peer,) = roster.hosts - {me}
        self.grace = peer_grace(timing)
        self.state = PeerState.UNSEEN
        self.started = now
        self._configure(roster, timing)
        self.seen_at = float("-inf")
        self.back_until = float("-inf")  # a fenced peer seen again counts until then
        self._was_dead = False
        #: Outputs, drained by the agent: the fence to run now, and the moves to log.
        self.fence: str | None = None
        self.moves: list[Move] = []

    # -- queries --------------------------------------------------------------------------
    def may_run(self) -> bool:
        """True when this host may stand for election: its peer is there, or fenced."""
        return self.state in (PeerState.PAIRED, PeerState.FENCED)

    def stand_ins(self) -> Mapping[str, float]:
        """Hosts whose lease counts without a grant, and until when (this host's clock)."""
        if self.state is PeerState.FENCED:
            return {self.peer: float("inf")}
        if self.state is PeerState.PAIRED and self.back_until > float("-inf"):
            return {self.peer: self.back_until}
        return {}

    def acknowledged(self) -> frozenset[str]:
        """Hosts that count as having persisted every record write: the fenced peer."""
        return frozenset({self.peer}) if self.state is PeerState.FENCED else frozenset()

    def next_deadline(self, now: float) -> float:
        if self.state in (PeerState.UNSEEN, PeerState.LOST):
            return self.due
        if self.state is PeerState.PAIRED:
            # a peer SWIM still holds dead is gone after the grace; a silent one after silence
            later = [t for t in (self.seen_at + self.grace, self.seen_at + self.silence)
                     if t > now]
            return min(later, default=float("inf"))
        return float("inf")

    def describe(self) -> dict[str, object]:
        return {"peer": self.peer, "state": self.state.value,
                "fence_due": self.due if self.state in (S.UNSEEN, S.LOST) else None}

    # -- inputs ---------------------------------------------------------------------------
    def reconfigure(self, roster: Roster, *, timing: Timing) -> None:
        """A new generation's settings (or number of members): the peer's state stays what
        it is (a fenced peer stays fenced); the delays and the start's bound are the new."""
        if roster.two_host is None or roster.hosts != {self.me, self.peer}:
            raise LocalProtocolError("the new roster is not the same two-host pool")
        self._configure(roster, timing)

    def heard(self, now: float) -> None:
        """A message the peer sent itself arrived."""
        self._step(E.SEEN, now, "it spoke")

    def observe(self, *, live: bool, now: float) -> None:
        """SWIM's view of the peer now (not dead: `live`), and the clock: fires the edges and
        the deadlines. Call it after every change and on every tick; extra calls are no-ops."""
        if live and self.state in (S.LOST, S.FENCED) and self._was_dead:
            self._step(E.SEEN, now, "SWIM finds it alive again")
        elif not live and self.state is S.PAIRED and (
                not self._was_dead or now >= self.seen_at + self.grace):
            # SWIM's verdict at once; a peer heard while SWIM still held it dead gets `grace`
            # to refute its death before it counts as gone again.
            self._step(E.GONE, now, "SWIM declared it dead")
        elif self.state is S.PAIRED and now >= self.seen_at + self.silence:
            self._step(E.GONE, now, f"nothing came from it for {now - self.seen_at:.1f} s")
        if now >= self.due and self.state in (S.UNSEEN, S.LOST):
            why = ("it was declared dead" if self.state is S.LOST
                   else "not heard from since this agent started")
            self._step(E.DUE, now, why)
        self._was_dead = not live

    def fence_result(self, *, ok: bool, reason: str, now: float) -> None:
        """The shell ran the fence this core asked for: `ok` when the command succeeded."""
        self._step(E.FENCE_OK if ok else E.FENCE_FAILED, now, reason)

    # -- internals ------------------------------------------------------------------------
    def _configure(self, roster: Roster, timing: Timing) -> None:
        """What follows from the roster's settings: the delays and, before the peer was
        seen, the start's bound."""
        assert roster.two_host is not None
        self.settings: TwoHost = roster.two_host
        #: The host ranked lower waits `fence_delay` before it fences (the race's handicap).
        self.delay = 0.0 if roster.outranks(self.me, self.peer) else self.settings.fence_delay
        self.silence = peer_silence(timing, len(roster))
        if self.state is PeerState.UNSEEN:
            self.due = self._bound_due()

    def _bound_due(self) -> float:
        bound = self.settings.wait_for_all
        return float("inf") if bound is None else self.started + bound + self.delay

    def _step(self, event: PairEvent, now: float, why: str) -> None:
        before = self.state
        after = TRANSITIONS.get((before, event))
        if after is None:
            raise LocalProtocolError(f"two-host rule: no move from {before.value} on "
                                     f"{event.value} ({why})")
        if event is E.SEEN:
            self.back_until = now + self.grace if before is S.FENCED else (
                self.back_until if before is S.PAIRED else float("-inf"))
            self.seen_at = now
        if after is before:
            return
        self.state = after
        if after is S.LOST:
            retry = event is E.FENCE_FAILED
            wait = self.settings.fence_retry if retry else self.delay
            self.due = now + wait
            why = (f"fence of {self.peer} failed ({why}): trying again in {wait:g} s" if retry
                   else f"{self.peer} lost ({why}): fencing it now" if wait == 0
                   else f"{self.peer} lost ({why}): fencing it in {wait:g} s, the delay of "
                        "the host ranked lower")
        elif after is S.FENCING:
            self.fence = self.peer
            why = f"fencing {self.peer}: {why}"
        elif after is S.FENCED:
            why = (f"{self.peer} fenced ({why}): it counts toward the quorum until it is "
                   "seen again")
        elif after is S.PAIRED:
            why = f"{self.peer} seen: {why}" + (
                "; the fence is called off" if before is S.LOST else "")
        self.moves.append(Move(after, why))

"""The thin asyncio shell around the election core: feeds it, performs what it says.

`AgentCore` (cloudd.election) decides everything; this module only
- gives it the monotonic clock and a seeded random source,
- feeds it the messages the transport delivers and the peers the transport cannot reach,
- ticks it when its `wake_at` comes,
- performs its `Output` in the order the core documents: persist the term (fsync) before
  sending anything, then send, then log the events and the refusals, then tell listeners
  whether this agent may act on the cloud (and until when).
Every message refused, whether the core found it malformed or its sender had no right to
send it (cloudd.election.authority), is one `message_refused` line naming the peer, the
term it carried and the reason; it changed nothing. `holds_lease` answers the host's
question before a host command: did this host grant `peer` its lease for that very term,
and is it unexpired now, by this host's clock. In a two-host pool the core may ask for its
peer to be fenced: `fence` (the member's, `cloudd.daemon.leader.fencing.PeerFencer`) runs the
command and reports back through `fenced`.

Terms on disk. The shell reads the election's `term` file, and on a pool host the host
agent's `highest-term` too (`fence_file`), once, when it is made: a file that holds no term is
set aside (`TermFile.recover`) and the core starts unproven: it relearns its terms from the
other pool hosts before it grants or runs (cloudd.election.recovery), and `host_fence` tells
the host's duties the fencing token they may start from (None until then). A term the core
asks to keep that the disk refuses (full, failing) is not acted on: the core is put back as
before that call (`AgentCore.persist_failed`), one `term_persist_failed` line is logged per
burst of failures, and the next message or tick (within `PERSIST_RETRY`) tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from cloudd import log
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.durable import StoredTerm, TermFile
from cloudd.election.agent import AgentCore, Output
from cloudd.election.config import Timing
from cloudd.election.members import Roster
from cloudd.election.messages import Message
from cloudd.election.states import ElectionRole
from cloudd.election.swim import Status
from cloudd.errors import ProtocolError


@dataclass(frozen=True)
class Leadership:
    """What listeners learn after each step."""

    leader: str
    term: int
    acting: bool
    acting_until: float | None


#: Seconds after a term could not be saved before the election tries again by itself.
PERSIST_RETRY = 1.0

Send = Callable[[str, Message], None]
Listener = Callable[[Leadership], None]


class ElectionShell:
    """Runs one agent's membership and election for one cloud."""

    def __init__(self, *, me: str, cloud: str, roster: Roster, timing: Timing, send: Send,
                 term_file: TermFile, fence_file: TermFile | None = None,
                 events: EventLog | None = None, clock: Clock = SYSTEM,
                 rng: random.Random | None = None,
                 fence: Callable[[str], None] | None = None) -> None:
        self.me, self.cloud = me, cloud
        self._timing, self._rng = timing, rng or random.Random()
        self.core = AgentCore(me, roster, timing=timing, rng=self._rng)
        self.roster = roster
        self._send, self._term_file, self._events = send, term_file, events
        #: runs a two-host pool's fence of the peer (`fenced` reports the outcome)
        self._fence_peer = fence
        #: durations (leases, timers) on the monotonic clock; people's times on the wall clock
        self._clock, self._wall = clock.monotonic, clock.wall
        self._wake = asyncio.Event()
        self._wake_at = 0.0
        self._listeners: list[Listener] = []
        self._last: Leadership | None = None
        self.leader_since: float | None = None  # wall-clock time of the last leader change
        self.elections = 0
        self._log = log.get("election", cloud=cloud, node=me)
        self._persist_failing = False
        # Read now, once: the host agent starts from what they say (`host_fence`).
        stored = term_file.recover()
        self._stored: StoredTerm | None = stored
        self._fence: StoredTerm | None = fence_file.recover() if fence_file is not None else None
        #: a term file was lost and the core has not relearned the terms yet (kept across
        #: restarts of the election: only the core's proof ends it)
        self.relearning = not stored.proven or (
            self._fence is not None and not self._fence.proven)

    # -- queries --------------------------------------------------------------------------
    @property
    def leader(self) -> str:
        return self.core.leader

    @property
    def term(self) -> int:
        return self.core.term

    def acting(self) -> bool:
        """True while this agent may act on the cloud, checked against the clock now."""
        return self.core.is_acting(self._clock())

    def status(self, member: str) -> Status:
        if member == self.me:
            return Status.ALIVE
        return self.core.status(member)

    def host_status(self, host: str) -> Status:
        """`status` as the leader's controller must read it: a pool host whose lease holds up
        this agent's leadership now is never dead (a host back from a power cut grants before
        gossip revives it), only suspect, so that nothing is moved off a host that answers."""
        status = self.status(host)
        if status is Status.DEAD and self.core.backs_me(host, self._clock()):
            return Status.SUSPECT
        return status

    def holds_lease(self, peer: str, term: int) -> bool:
        """True when this agent, a pool host, granted `peer` its leader lease for exactly
        `term` and that lease has not expired by this host's clock (False on a node)."""
        return self.core.holds_lease(peer, term, self._clock())

    def host_fence(self) -> int | None:
        """The fencing token this pool host's agent may start from: its own file's term when
        that was readable, else the election's fence once its terms are proven; None until
        then (the host runs no command meanwhile)."""
        if self._fence is not None and self._fence.proven:
            return self._fence.term
        return None if self.relearning else self.core.proven_fence()

    def unproven(self) -> str:
        """Why this agent grants no lease and runs no host command yet ('' when it may)."""
        return self.core.why_unproven() if self.relearning else ""

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- inputs ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the core from the persisted terms (`run` does it first)."""
        stored, self._stored = self._stored or self._term_file.recover(), None  # later: anew
        floor = max(stored.term, self._fence.term if self._fence is not None else 0)
        self._perform(self.core.start(self._clock(), persisted_term=floor,
                                      proven=not self.relearning))
        if not self.core.unproven:  # a node relearns nothing: it grants and runs nothing
            self.relearning = False

    async def run(self) -> None:
        """Root task: start the core, then tick it whenever it asks to be woken."""
        self.start()
        while True:
            delay = max(0.0, self._wake_at - self._clock())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # arrives together with the wake-up, and the member's task group would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            self._perform(self.core.tick(self._clock()))

    def receive(self, peer: str, msg: Message) -> None:
        try:
            out = self.core.step(peer, msg, self._clock())
        except ProtocolError as e:
            # Changes nothing in the core; the connection layer has authenticated the peer,
            # so this is a confused (or newer, or hostile) agent, not noise.
            self._log.warning("message_refused", peer=peer, term=getattr(msg, "term", None),
                              reason=str(e))
            return
        self._perform(out)

    def change_roster(self, roster: Roster) -> None:
        """A new generation's roster. Nodes added or dropped: the core takes it in stride.
        The pool hosts changed: leases, quorum and ranks change with them, so the election
        starts over from the persisted term, exactly as after a restart of this agent (a
        host grants nothing until the leases it may have granted have lapsed)."""
        if self.core.role is ElectionRole.INIT:  # not started yet: it starts with this one
            self.roster = roster
            self.core = AgentCore(self.me, roster, timing=self._timing, rng=self._rng)
            return
        if roster.pool() == self.roster.pool():
            self.roster = roster
            self._perform(self.core.change_roster(roster, self._clock()))
            return
        self._log.info("election_restarted", term=self.core.term,
                       reason="the new manifest generation changes the pool hosts")
        self.roster = roster
        self.core = AgentCore(self.me, roster, timing=self._timing, rng=self._rng)
        self.start()
        self._wake.set()

    def fenced(self, peer: str, *, ok: bool, reason: str) -> None:
        """The outcome of a fence the core asked for (`fence`)."""
        try:
            out = self.core.fence_result(peer, ok=ok, reason=reason, now=self._clock())
        except ProtocolError as e:  # the pool changed while the command ran
            self._log.warning("fence_result_dropped", peer=peer, reason=str(e))
            return
        self._perform(out)

    def unreachable(self, peer: str) -> None:
        if peer not in self.roster or peer == self.me:
            return
        self._perform(self.core.peer_unreachable(peer, self._clock()))

    # -- output ---------------------------------------------------------------------------
    def _perform(self, out: Output) -> None:
        if out.persist_term is not None:
            # Before any message that may carry the term leaves this agent.
            out = self._save(out)
        for peer, msg in out.messages:
            self._send(peer, msg)
        if out.fence is not None and self._fence_peer is not None:
            self._fence_peer(out.fence)
        for refused in out.refused:
            self._log.warning("message_refused", peer=refused.peer, term=refused.term,
                              reason=refused.reason)
        for ev in out.events:
            self._log.info(f"election_{ev.kind}", term=ev.term, peer=ev.peer or None,
                           reason=ev.reason)
            if ev.kind != "member" and self._events is not None:
                self._events.append(LogEvent(time=self._wall(), cloud=self.cloud,
                                          kind=LogKind.ELECTION, subject=ev.peer or self.me,
                                          reason=f"{ev.kind}: {ev.reason}", term=ev.term))
        self._wake_at = out.wake_at
        now_view = Leadership(self.core.leader, self.core.term, out.acting, out.acting_until)
        if now_view != self._last:
            if self._last is None or now_view.leader != self._last.leader:
                self.leader_since = self._wall()
                if now_view.leader:
                    self.elections += 1
            self._last = now_view
            for listener in self._listeners:
                listener(now_view)
        if out.wake_at <= self._clock():
            self._wake.set()

    def _save(self, out: Output) -> Output:
        """Write the term `out` asks to keep; when the disk refuses, the Output to perform
        instead (the core as before the call that raised it)."""
        assert out.persist_term is not None
        proven = not self.core.unproven
        try:
            self._term_file.save(out.persist_term, proven=proven)
        except OSError as e:
            if not self._persist_failing:
                self._persist_failing = True
                self._log.warning("term_persist_failed", term=out.persist_term,
                                  reason=f"{self._term_file.path}: {e.strerror or e}; the "
                                         f"election acts on no higher term until it is saved")
            return self.core.persist_failed(self._clock(),
                                            retry_at=self._clock() + PERSIST_RETRY)
        if self._persist_failing:
            self._persist_failing = False
            self._log.info("term_persisted", term=out.persist_term,
                           reason="the disk takes the election's term again")
        if self.relearning and proven:
            self.relearning = False
            self._log.info("terms_relearned", term=out.persist_term,
                           reason="enough pool hosts told their terms: this host grants and "
                                  "stands for election again")
        return out

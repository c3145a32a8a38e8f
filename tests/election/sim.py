"""A seeded, deterministic simulator for the election cores: a network, clocks and faults.

Every agent is a real `AgentCore`; the simulator plays the shell: it persists
`persist_term` before sending, delivers messages after a random delay (or drops them: loss,
`cut`, `isolate`), reports a crashed peer as unreachable, and ticks each agent at the
`wake_at` it asked for (the first instant its own clock reads it, rounding included). Each
agent's monotonic clock has its own offset, so the cores can only compare durations.
After every delivered event `check()` runs the safety invariants:

- a term is acted in by one agent, in one of its lives (no two leaders per term, and a
  restarted agent never reuses a term);
- the lease intervals [first acting, acting_until] of different leaders (two agents, or
  two lives of one agent) never overlap in global time, not even by a step-down's worth;
- an acting leader holds unexpired leases at a majority of the hosts (the hosts' own
  grantor state, read directly, is the ground truth);
- the persisted term of every agent never decreases;
- only pool hosts ever run, lead or are followed as leader (a node never outranks a host);
- whatever a test adds to `checks`, run after every event.
A stalled agent (`stall`: a guest's vCPU not scheduled, a SIGSTOPped process) runs nothing
for a while: it gets no ticks and reads no messages, but its connections stay open, so what
is sent to it waits and is read, in order, when it resumes (its clock has moved on).
An insider is a member (a node, in the tests) whose certificate sends whatever it likes:
`forge(src, dst, msg)` puts a message on the network as if `src` sent it (the transport
would authenticate that name, so `src` is the only thing an insider cannot forge). Every
refusal an agent reports is kept in `refused`.
Violations raise `AssertionError` with the global time and what broke.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cloudd.election.agent import AgentCore, Output
from cloudd.election.authority import Refusal
from cloudd.election.config import Timing
from cloudd.election.lease import Grantor
from cloudd.election.members import Member, Roster
from cloudd.election.messages import ELECTION_TYPES, Message
from cloudd.election.states import ElectionEvent, ElectionRole
from cloudd.errors import ProtocolError


@dataclass
class _Lease:
    key: tuple[str, int, int]  # (agent, life, term)
    start: float
    end: float


@dataclass
class Sim:
    n: int
    hosts: int = 3
    seed: int = 0
    timing: Timing = field(default_factory=Timing.local)
    delay: tuple[float, float] = (0.0002, 0.002)
    loss: float = 0.0
    policy: str = "stop"

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        names = [f"m{i:04d}" for i in range(self.n)]
        # Hosts spread through the listed order (the roster still ranks them first).
        host_idx = set(self.rng.sample(range(self.n), self.hosts))
        self.roster = Roster(Member(nm, host=i in host_idx) for i, nm in enumerate(names))
        self.names = names
        self.now = 0.0
        self.offset = {nm: self.rng.uniform(0, 1000) for nm in names}
        self.agents: dict[str, AgentCore | None] = dict.fromkeys(names)
        self.life = Counter[str]()
        self.persisted = dict.fromkeys(names, 0)
        # Grantor states of hosts' previous lives: what a host promised before it crashed
        # still binds the truth about who holds a lease.
        self.ghost: dict[str, list[Grantor]] = {}
        self.cuts: set[frozenset[str]] = set()
        self.isolated: set[str] = set()
        #: agent -> the global time it resumes (see `stall`)
        self.stalled: dict[str, float] = {}
        self.sent = Counter[str]()
        self._queue: list[tuple[float, int, str, tuple[object, ...]]] = []
        self._seq = 0
        self._wake: dict[str, float] = {}
        self._leases: dict[tuple[str, int, int], _Lease] = {}
        self._term_owner: dict[int, tuple[str, int]] = {}
        self.timing = replace(self.timing, no_quorum=self.policy)
        self.refused: list[tuple[str, Refusal]] = []
        #: (agent, event) for every event of kind 'leader': who won, followed, re-established.
        self.leadership: list[tuple[str, ElectionEvent]] = []
        self.errors: list[tuple[str, str]] = []
        self.checks: list[Callable[[], None]] = []

    # -- faults -------------------------------------------------------------------------
    def start(self, name: str) -> None:
        self.life[name] += 1
        agent = AgentCore(name, self.roster, timing=self.timing,
                          rng=random.Random(self.rng.random()))
        self.agents[name] = agent
        self._apply(name, agent.start(self._local(name), persisted_term=self.persisted[name]))

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def crash(self, name: str) -> None:
        agent = self.agents[name]
        if agent is not None and agent.bully.grantor is not None:
            self.ghost.setdefault(name, []).append(agent.bully.grantor)
        self.agents[name] = None
        self._wake.pop(name, None)

    def cut(self, a: str, b: str) -> None:
        self.cuts.add(frozenset((a, b)))

    def isolate(self, name: str) -> None:
        self.isolated.add(name)

    def partition(self, side: set[str]) -> None:
        """Cut every link between `side` and the rest."""
        for a in side:
            for b in self.names:
                if b not in side:
                    self.cut(a, b)

    def stall(self, name: str, seconds: float) -> None:
        """`name` runs nothing for `seconds`: its ticks and the messages sent to it (and the
        failures of its own sends) wait until it resumes, then come in their order."""
        self.stalled[name] = self.now + seconds

    def recover(self) -> None:
        self.cuts.clear()
        self.isolated.clear()

    def fault(self, kind: str, a: int, b: int) -> None:
        """One fault of a random schedule (`play`), on the members `a` and `b` (indices taken
        modulo `n`): crash, restart, cut, isolate, partition, recover, or wait (none)."""
        x, y = self.names[a % self.n], self.names[b % self.n]
        if kind == "crash" and self.agents[x] is not None:
            self.crash(x)
        elif kind == "restart":
            if self.agents[x] is not None:
                self.crash(x)
            self.start(x)
        elif kind == "cut" and x != y:
            self.cut(x, y)
        elif kind == "isolate":
            self.isolate(x)
        elif kind == "partition":
            self.partition({name for i, name in enumerate(self.names) if (i + b) % 3 == 0})
        elif kind == "recover":
            self.recover()

    def forge(self, src: str, dst: str, msg: Message) -> None:
        """An insider's message: sent as `src` over the same network (cuts and loss apply).
        A forged message the receiver rejects as malformed is kept in `errors`, as the shell
        would log it; an honest agent's malformed message still fails the test."""
        assert src in self.roster and dst in self.roster and src != dst
        self._send(src, dst, msg, kind="forged")

    # -- running ------------------------------------------------------------------------
    def change_roster(self, roster: Roster) -> list[str]:
        """Every running agent takes `roster` (a new manifest generation); members it adds
        get a clock and a place, not yet started. Returns the added names."""
        added = [n for n in roster.names if n not in self.agents]
        for name in added:
            self.offset[name] = self.rng.uniform(0, 1000)
            self.agents[name] = None
            self.persisted[name] = 0
        self.names = [*self.names, *added]
        self.roster = roster
        for name, agent in self.agents.items():
            if agent is not None:
                self._apply(name, agent.change_roster(roster, self._local(name)))
        return added

    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            when, _, kind, data = heapq.heappop(self._queue)
            self.now = when
            if self._deferred(when, kind, data):
                continue
            if kind == "wake":
                (name,) = data
                agent = self.agents[str(name)]
                if agent is None or self._wake.get(str(name)) != when:
                    continue
                del self._wake[str(name)]
                out = agent.tick(self._local(str(name)))
                # After a tick everything due is done: asking to be woken at once again
                # would be a busy loop in the shell.
                assert out.wake_at > self._local(str(name)), (self.now, name, "busy wake")
                self._apply(str(name), out)
            elif kind in ("msg", "forged"):
                src, dst, msg = data
                agent = self.agents[str(dst)]
                if agent is None:
                    self._unreachable(str(src), str(dst))
                    continue
                try:
                    out = agent.step(str(src), msg, self._local(str(dst)))  # type: ignore[arg-type]
                except ProtocolError as e:
                    if kind != "forged":
                        raise
                    self.errors.append((str(dst), str(e)))
                    continue
                self._apply(str(dst), out)
            else:
                src, dst = data
                agent = self.agents[str(src)]
                if agent is not None and str(dst) in agent.roster:  # as the shell does
                    self._apply(str(src), agent.peer_unreachable(str(dst), self._local(str(src))))
            for check in self.checks:
                check()
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def acting(self) -> list[str]:
        return [n for n, a in self.agents.items()
                if a is not None and a.is_acting(self._local(n))]

    def live(self) -> list[AgentCore]:
        return [a for a in self.agents.values() if a is not None]

    def election_messages(self) -> int:
        return sum(c for t, c in self.sent.items() if t in _ELECTION_NAMES)

    # -- the shell ----------------------------------------------------------------------
    def _local(self, name: str) -> float:
        return self.now + self.offset[name]

    def _when(self, name: str, local: float) -> float:
        """The first global instant, not before now, at which `name`'s clock reads `local`.
        `local - offset` alone may come out a rounding error early: woken then, the agent
        reads its clock short of the deadline it asked for, finds nothing due, asks for the
        same deadline again, and would be woken at that same instant for ever (a real
        shell's clock moves on)."""
        offset = self.offset[name]
        when = max(self.now, local - offset)
        while when + offset < local:  # one or two steps of the clock's last digit
            when += math.ulp(local)
        return when

    def _push(self, when: float, kind: str, data: tuple[object, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, data))

    def _deferred(self, when: float, kind: str, data: tuple[object, ...]) -> bool:
        """An event for a stalled agent waits until it resumes (True: put back)."""
        who = str(data[0] if kind in ("wake", "unreach") else data[1])
        until = self.stalled.get(who)
        if until is None or when >= until:
            return False
        if kind == "wake":
            if self._wake.get(who) != when:
                return True  # superseded: drop it
            self._wake[who] = until
        self._push(until, kind, data)
        return True

    def _unreachable(self, src: str, dst: str) -> None:
        self._push(self.now + self.rng.uniform(*self.delay), "unreach", (src, dst))

    def _apply(self, name: str, out: Output) -> None:
        if out.persist_term is not None:
            assert out.persist_term > self.persisted[name], (self.now, name, "term went down")
            self.persisted[name] = out.persist_term
        for dst, msg in out.messages:
            self._send(name, dst, msg)
        wake = self._when(name, out.wake_at)
        if self._wake.get(name) != wake:
            self._wake[name] = wake
            self._push(wake, "wake", (name,))
        self.refused += [(name, r) for r in out.refused]
        self.leadership += [(name, e) for e in out.events if e.kind == "leader"]
        self._check_kinds(name)
        if out.acting:
            assert out.acting_until is not None
            self._check_acting(name, out.acting_until - self.offset[name])

    def _send(self, src: str, dst: str, msg: Message, *, kind: str = "msg") -> None:
        self.sent[type(msg).__name__] += 1
        if src in self.isolated or dst in self.isolated or frozenset((src, dst)) in self.cuts:
            return
        if self.loss and self.rng.random() < self.loss:
            return
        self._push(self.now + self.rng.uniform(*self.delay), kind, (src, dst, msg))

    # -- invariants ---------------------------------------------------------------------
    def _check_kinds(self, name: str) -> None:
        """Only pool hosts run, lead, or are followed (checked for the agent that moved)."""
        agent = self.agents[name]
        assert agent is not None
        hosts = self.roster.hosts
        assert name in hosts or agent.role not in (ElectionRole.CANDIDATE, ElectionRole.LEADER), (
            f"t={self.now:.4f}: node {name} is {agent.role.value}")
        assert not agent.leader or agent.leader in hosts, (
            f"t={self.now:.4f}: {name} follows node {agent.leader}")

    def _check_acting(self, name: str, until: float) -> None:
        agent = self.agents[name]
        assert agent is not None
        term, life = agent.term, self.life[name]
        assert agent.role is ElectionRole.LEADER, (self.now, name, "acting but not leader")
        owner = self._term_owner.setdefault(term, (name, life))
        assert owner == (name, life), (
            f"t={self.now:.4f}: term {term} acted in by {owner} and by {(name, life)}")
        key = (name, life, term)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease(key, self.now, until)
        lease.end = max(lease.end, until)
        horizon = self.now - 10.0
        for other in list(self._leases.values()):
            if other.end < horizon:
                del self._leases[other.key]
            elif other.key[:2] != key[:2] and other.start < lease.end \
                    and lease.start < other.end:
                raise AssertionError(f"t={self.now:.4f}: leases overlap: {other} and {lease}")
        holding = 0
        for host in self.roster.hosts:
            for g in (self._grantor(host), *self.ghost.get(host, [])):
                # A host that granted this leader a newer term is still bound to it.
                if g is not None and g.holder == name and g.holder_term >= term \
                        and g.expires - self.offset[host] > self.now:
                    holding += 1
                    break
        assert holding >= self.roster.quorum, (
            f"t={self.now:.4f}: {name} acts in term {term} with {holding} host leases")

    def _grantor(self, host: str) -> Grantor | None:
        agent = self.agents[host]
        return None if agent is None else agent.bully.grantor


_ELECTION_NAMES = frozenset(cls.__name__ for cls in ELECTION_TYPES)


def play(sim: Sim, faults: list[tuple[str, int, int, float]]) -> None:
    """Play a schedule of (fault, a, b, pause): each `Sim.fault`, then `pause` seconds."""
    for kind, a, b, pause in faults:
        sim.fault(kind, a, b)
        sim.run_for(pause)


def settled_leader(sim: Sim, within: set[str] | None = None) -> str | None:
    """The one acting leader among `within` (default: all), or None if zero or several."""
    acting = [n for n in sim.acting() if within is None or n in within]
    return acting[0] if len(acting) == 1 else None


def started(n: int, *, hosts: int = 3, seed: int = 1, **kw: object) -> tuple[Sim, str]:
    """A cloud of `n` started together, run until its first leader acts."""
    sim = Sim(n, hosts=hosts, seed=seed, **kw)  # type: ignore[arg-type]
    sim.start_all()
    took = run_until_leader(sim, bound=sim.timing.settle_bound(n))
    assert took is not None, "no leader after a cold start"
    leader = settled_leader(sim)
    assert leader is not None
    return sim, leader


def run_until_leader(sim: Sim, *, bound: float, within: set[str] | None = None,
                     step: float = 0.01) -> float | None:
    """Run until exactly one acting leader exists (among `within`); return the time it took,
    or None if `bound` seconds of simulated time pass first."""
    start = sim.now
    while sim.now - start <= bound:
        if settled_leader(sim, within) is not None:
            return sim.now - start
        sim.run_for(step)
    return None

"""Timing of membership and election, as documented data with two profiles.

Theory of operation: every duration the cores wait for lives here, in seconds of the
monotonic clock the shell passes in as `now`. `Timing.production()` targets a failover well
under etcd's ~1 s (its default election timeout is 1000 ms): in a LAN a TLS round trip on an
open connection costs ~0.2 ms, so probing every 100 ms with a 40 ms timeout is cheap and
still 200 times the round trip. A leader's death is then seen after one or two probe periods
plus the suspicion timeout (200-600 ms at n <= 10, scaled by log10 n above), while its
lease (400 ms) runs out in parallel; hosts, which get the leader's renewals every 100 ms,
suspect it after 2.5 missed ones, and probe it first (a death needs one's own failed
probe). Measured in the simulator (bench/election_sim.py, median of 7 seeds), a successor
acts 0.49 s after the crash at n = 5, 0.59 s at n = 50, 0.79 s at n = 500 and 0.85 s at
n = 1,000 (the suspicion timeout grows with log10 n); SWIM sends about 26-28 messages per
member and second during the failover, every member probing the dead leader itself.
Nodes (members that are not pool hosts: VMs, often under TCG, whose agents stall for
seconds on a busy machine) are probed with more patience: `node_probe_timeout` and
`node_suspicion` (see their docstrings). None of that slows a failover: only hosts lead,
grant leases or count for the quorum, and a dead VM reaches the leader as libvirt's event,
not as a SWIM verdict. A node is dead at most `node_dead_bound(n)` after it stopped answering.
A node's own agent probes five times less often than a host's (`for_node`): an idle agent's
CPU is its messages, and a node waits on nobody's death.
`Timing.local()` halves everything for agents that share one machine (tests, demos).
`validate()` rejects nonsense with one sentence naming the field.
`TwoHost` is the other half of this file: the settings of a pool of exactly two hosts
(twohost.py), which come with the cloud's manifest rather than the agent's profile, since
the delay must outlast the pool's own fence command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from cloudd.errors import ConfigError, Problem

NO_QUORUM_POLICIES = ("stop", "freeze")


@dataclass(frozen=True)
class Timing:
    """Durations in seconds; counts are plain numbers."""

    probe_interval: float = 0.1
    """One SWIM protocol period: each agent probes one member per period (memberlist's LAN
    profile uses 1 s; our peers keep connections open, so 100 ms costs little)."""
    probe_timeout: float = 0.04
    """Wait for a direct `Ack` before asking `indirect_checks` helpers (200x a LAN RTT)."""
    indirect_checks: int = 3
    """Helpers asked to probe an unresponsive member (memberlist's default, k=3)."""
    suspicion_mult: float = 2.0
    """Suspicion timeout = mult * max(1, log10(n)) * probe_interval (memberlist). memberlist
    uses 4 with 1 s probes; 2 x 100 ms leaves a suspect two periods to refute, and an agent
    stalled longer than that has lost its leader lease (400 ms) anyway."""
    suspicion_max_mult: float = 3.0
    """The timeout starts at max_mult times the minimum and shrinks with confirmations."""
    retransmit_mult: int = 4
    """Each gossip fact is piggybacked mult * ceil(log10(n + 1)) times (memberlist)."""
    max_piggyback: int = 8
    """Gossip facts per probe message, to keep messages small at 1,000 members."""
    node_probe_timeout: float = 1.0
    """Probing a node: wait this long for its direct `Ack` before asking helpers, and as
    long again for theirs, before the probe counts as failed (a host gets `probe_timeout`
    and the rest of the period). A guest under TCG on a loaded machine answers late by
    hundreds of milliseconds and stalls for a second now and then; 1 s rides that out, and
    a node probed meanwhile keeps its place in the round (other members are probed at the
    usual pace)."""
    node_suspicion: float = 10.0
    """A suspect node stays suspect this long before our own failed probe may declare it
    dead: a guest stalled for a few seconds (TCG, a paused vCPU, a host swapping) refutes in
    time and is never dead. Flat, not scaled by n and not shortened by confirmations: a
    stalled guest is silent to everyone at once, so others agreeing is no extra evidence.
    Nothing waits on a node's death: its VM's death reaches the leader from libvirt."""
    node_agent_probe_interval: float = 0.5
    """A node's own agent starts a probe this often (`for_node`), a host every
    `probe_interval`. Idle, an agent's CPU goes almost all to the messages it sends and
    receives (bench/idle_agent.py), and a node leads nothing, grants no lease and waits on no
    one's death: the new leader's `Coordinator` reaches it whatever it suspects. Probing five
    times less often halves a node agent's messages (it still answers the hosts' probes),
    and the hosts see a node's death as before: by their own probes of it."""
    dead_probe_interval: float = 0.5
    """Probe one dead member this often so that healed partitions and restarts rejoin."""
    lease_duration: float = 0.4
    """A host's lease to a leader, from the host's receipt of the request. A successor waits
    at most this long after the last renewal, so it bounds failover from below."""
    renew_interval: float = 0.1
    """The leader renews its leases this often: 4 tries per lease before it can lapse."""
    lease_margin: float = 0.05
    """The leader stops acting this long before its own (earlier) estimate of the lease
    expiry: covers clock-rate drift and the shell's delay in obeying `acting=False`."""
    inquiry_timeout: float = 0.2
    """A (re)starting agent waits this long for `LeaderIs` before it may run."""
    answer_timeout: float = 0.1
    """Bully: wait this long for an `Answer` from a higher-priority member."""
    coordinator_timeout: float = 1.5
    """Without a leader, a member that is not the top live one waits this long for a
    `Coordinator` before it runs a bully election itself (the top one needs at most about
    one lease plus a retry to win, so this rarely fires)."""
    candidate_timeout: float = 0.2
    """A candidate that has no host majority after this long backs off and retries."""
    retry_backoff: float = 0.1
    """Base of the jittered pause before a failed candidate retries (uniform 1x-2x)."""
    no_quorum: str = "stop"
    """What a leader does without a host majority: 'stop' resigns (another member may be
    elected), 'freeze' stays leader but does not act until the quorum returns."""

    @classmethod
    def production(cls) -> Timing:
        return cls()

    @classmethod
    def local(cls) -> Timing:
        """Everything twice as fast, for agents on one machine (loopback, namespaces)."""
        base = cls()
        return replace(base, **{
            f.name: getattr(base, f.name) / 2 for f in fields(cls)
            if isinstance(getattr(base, f.name), float) and not f.name.endswith("mult")
        })

    def for_node(self) -> Timing:
        """The timing of a node's own agent: it probes every `node_agent_probe_interval`
        (never more often than a host), the rest as a host's."""
        return replace(self, probe_interval=max(self.probe_interval,
                                                self.node_agent_probe_interval))

    def validate(self) -> Timing:
        """Return self, or raise `ConfigError` with one sentence about the first bad field."""
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError([Problem(file="<timing>", line=None, column=None, field=field,
                                        message=why)])
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise bad(f.name, f"must be positive, got {value}")
        if self.probe_timeout >= self.probe_interval:
            raise bad("probe_timeout", "must be shorter than probe_interval")
        if self.renew_interval + self.lease_margin >= self.lease_duration:
            raise bad("renew_interval", "plus lease_margin must be shorter than lease_duration")
        if self.node_probe_timeout < self.probe_timeout:
            raise bad("node_probe_timeout", "must not be shorter than probe_timeout: a node "
                                            "is never given less time to answer than a host")
        low, _ = self.suspicion_timeouts(1)
        if self.node_suspicion < low:
            raise bad("node_suspicion", f"must not be shorter than a host's shortest "
                                        f"suspicion ({low:g} s)")
        if self.suspicion_max_mult < 1:
            raise bad("suspicion_max_mult", "must be at least 1")
        if self.no_quorum not in NO_QUORUM_POLICIES:
            raise bad("no_quorum", f"must be one of {', '.join(NO_QUORUM_POLICIES)}, "
                                   f"got {self.no_quorum!r}")
        return self

    def suspicion_timeouts(self, n: int) -> tuple[float, float]:
        """(minimum, maximum) suspicion timeout for a cloud of `n` members."""
        scale = max(1.0, math.log10(max(1, n)))
        low = self.suspicion_mult * scale * self.probe_interval
        return low, low * self.suspicion_max_mult

    def node_dead_bound(self, n: int) -> float:
        """An upper bound on the time from a node's last answer to its death in the view of
        a member that reaches everyone else: up to two rounds until our probe of it starts
        (it may have been probed just before it went silent), the probe's two windows, the
        suspicion, and a period for the tick."""
        return (2 * max(1, n - 1) * self.probe_interval + 2 * self.node_probe_timeout
                + self.node_suspicion + self.probe_interval)

    def retransmits(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def settle_bound(self, n: int) -> float:
        """An upper bound on crash-to-acting-successor time in a connected majority: find the
        death (a few probe periods), suspect it (max timeout), then one lease and a retry."""
        _, high = self.suspicion_timeouts(n)
        return (4 * self.probe_interval + high + self.lease_duration + self.coordinator_timeout
                + 2 * self.candidate_timeout + 2 * self.retry_backoff)


@dataclass(frozen=True)
class TwoHost:
    """A pool of exactly two hosts (Pacemaker's `two_node` with `wait_for_all`): the survivor
    acts only after its fence command has powered the other off. Seconds of the monotonic
    clock, like `Timing`."""

    fence_delay: float = 15.0
    """How long the host ranked lower waits, once it has lost its peer, before it fences it
    (Pacemaker's pcmk_delay_base): in a split both fence, and the higher one, which fences at
    once, wins if its fence command finishes within this delay. Longer than the pool's fence
    command takes (IPMI: seconds to tens of them)."""
    wait_for_all: float | None = None
    """A host that starts (a cold start, or back after being fenced) acts alone only once it
    has heard from its peer, from which it learns the terms and the record the peer made
    alone; with a bound, also once it has fenced a peer silent this long. None (the default,
    Pacemaker's wait_for_all): it waits for its peer for ever. After the bound the host acts
    on its own copy of the record and its own terms, which lack what the peer did alone after
    fencing it: when both are back, the record of the higher version wins."""
    fence_retry: float = 10.0
    """A fence that failed is tried again after this long; meanwhile this host acts on
    nothing (the other may win the race)."""

    def validate(self) -> TwoHost:
        """Return self, or raise `ConfigError` with one sentence about the first bad field."""
        for name in ("fence_delay", "wait_for_all", "fence_retry"):
            value = getattr(self, name)
            if value is not None and (value < 0 or (value == 0 and name != "fence_delay")):
                raise ConfigError([Problem(file="<two_host>", line=None, column=None,
                                           field=name, message=f"must be positive, got {value}")])
        return self

"""A two-host pool's fenced peer and a host relearning its terms (recovery.py): the stand-in
counts as a lease grant, never as a peer's word about the terms, so a host that lost its term
file neither runs nor grants while its peer is fenced, and relearns from the peer once back.
"""

from __future__ import annotations

import random

from cloudd.election.agent import AgentCore, Output
from cloudd.election.config import Timing, TwoHost
from cloudd.election.members import Member, Roster
from cloudd.election.messages import LeaderIs, LeaseGrant, LeaseReject, LeaseRequest
from cloudd.election.states import ElectionRole
from cloudd.election.twohost import PeerState

TIMING = Timing.local()
ROSTER = Roster([Member("pm1", host=True), Member("pm2", host=True), Member("n1")],
                two_host=TwoHost(fence_delay=3.0, wait_for_all=2.0))


def run(core: AgentCore, start: float, until: float) -> list[Output]:
    """Tick `core` every 50 ms after `start`, up to and including `until`."""
    outs, now = [], start
    while now + 0.05 <= until:
        now += 0.05
        outs.append(core.tick(now))
    return outs


def test_an_unproven_host_fences_its_silent_peer_but_neither_runs_nor_grants() -> None:
    core = AgentCore("pm1", ROSTER, timing=TIMING, rng=random.Random(3))
    core.start(0.0, persisted_term=4, proven=False)
    fences = [o.fence for o in run(core, 0.0, 3.0) if o.fence is not None]
    assert fences == ["pm2"]  # wait_for_all's bound ran out
    core.fence_result("pm2", ok=True, reason="test", now=3.01)
    assert core.pair is not None and core.pair.state is PeerState.FENCED
    outs = run(core, 3.01, 3.0 + 10 * TIMING.lease_duration)
    assert core.unproven and core.role is not ElectionRole.LEADER and not core.acting
    assert not any(isinstance(m, LeaseRequest) for o in outs for _, m in o.messages)
    assert all(o.persist_term is None for o in outs)  # no proposal was even made
    # pm2 powered on again asks for a lease: refused while pm1 relearns
    now = 3.0 + 10 * TIMING.lease_duration + 0.1
    out = core.step("pm2", LeaseRequest(term=9, seq=1), now)
    assert [type(m) for p, m in out.messages if p == "pm2" and
            isinstance(m, LeaseGrant | LeaseReject)] == [LeaseReject]
    # pm2's word (n - q + 1 = 1 other host) proves pm1's terms: it grants again
    out = core.step("pm2", LeaderIs("", 9, 9), now + 0.1)
    assert not core.unproven and out.persist_term == 9
    out = core.step("pm2", LeaseRequest(term=10, seq=2), now + 0.2)
    assert [type(m) for p, m in out.messages if p == "pm2" and
            isinstance(m, LeaseGrant | LeaseReject)] == [LeaseGrant]

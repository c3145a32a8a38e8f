"""The leader's memory for hung guests: deaths only, resets until the agent or the domain
says otherwise, and a power-off that follows a reset being the reset's."""

from __future__ import annotations

from cloudd.daemon.leader.unreachable import Unreachable
from cloudd.vmctl.hostagent import Op
from cloudd.vmctl.plan import AFTER_RESET, GUEST_SHUTDOWN, Liveness

KEY = ("n1", "h1")


def look(u: Unreachable, live: dict[str, Liveness], *, now: float,
         present: frozenset[tuple[str, str]] = frozenset({KEY}),
         nodes: tuple[str, ...] = ("n1", "n2")) -> None:
    u.observe(nodes, lambda n: live.get(n, Liveness.ALIVE), present=present, now=now)


def test_only_a_death_counts_and_from_when_it_was_first_seen() -> None:
    u = Unreachable()
    look(u, {"n1": Liveness.SUSPECT}, now=10)
    assert u.since == {}
    look(u, {"n1": Liveness.DEAD}, now=20)
    look(u, {"n1": Liveness.DEAD, "n2": Liveness.DEAD}, now=30)
    assert u.since == {"n1": 20, "n2": 30}
    look(u, {"n2": Liveness.DEAD}, now=40)  # n1 answers again
    assert u.since == {"n2": 30}
    look(u, {"n2": Liveness.DEAD}, now=50, nodes=("n1",))  # n2 left the manifest
    assert u.since == {}


def test_a_reset_is_kept_until_the_agent_or_the_domain_says_otherwise() -> None:
    u = Unreachable()
    dead = {"n1": Liveness.DEAD}
    look(u, dead, now=10)
    u.done(Op.RESET, KEY, now=20)
    look(u, dead, now=30)
    assert u.resets == {KEY: 20}
    look(u, dead, now=40, present=frozenset())  # found gone
    assert u.resets == {}
    u.done(Op.RESET, KEY, now=50)
    look(u, {}, now=60)  # the agent is back
    assert u.resets == {}
    for op in (Op.START, Op.DESTROY, Op.UNDEFINE):
        u.done(Op.RESET, KEY, now=70)
        u.done(op, KEY, now=80)
        assert u.resets == {}, op
    u.done(Op.RESET, KEY, now=90)
    u.done(Op.LIST, KEY, now=95)
    assert u.resets == {KEY: 90}


def test_a_power_off_after_a_reset_is_the_resets() -> None:
    u = Unreachable()
    assert u.reason(KEY, GUEST_SHUTDOWN) == GUEST_SHUTDOWN
    with u.sending(KEY):  # the event may come before the answer
        assert u.reason(KEY, GUEST_SHUTDOWN) == AFTER_RESET
        assert u.reason(KEY, "destroyed") == "destroyed"
    assert u.reason(KEY, GUEST_SHUTDOWN) == GUEST_SHUTDOWN
    u.done(Op.RESET, KEY, now=1)
    assert u.reason(KEY, GUEST_SHUTDOWN) == AFTER_RESET
    assert u.reason(("n2", "h1"), GUEST_SHUTDOWN) == GUEST_SHUTDOWN

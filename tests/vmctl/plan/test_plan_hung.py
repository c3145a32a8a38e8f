"""The hung-guest rule: a running domain whose agent stays unreachable is reset, then destroyed.

One table for the rule alone (`hung`), one for the planner around it (which hosts, nodes and
states it is asked about at all)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cloudd.config.model import UNREACHABLE_RESET_AFTER as MANIFEST_DEFAULT
from cloudd.vmctl.plan import (
    AFTER_RESET,
    UNREACHABLE_RESET_AFTER,
    Desired,
    Destroy,
    DomainObs,
    DomainState,
    Ensure,
    FailRecord,
    Fence,
    HostObs,
    Liveness,
    NodeSpec,
    Observed,
    Reset,
    RunStrategy,
    Start,
    Waiting,
    planned,
)
from cloudd.vmctl.plan.hung import hung

IMG = "/img/base.qcow2"
BOUND = 300.0
RUN, OFF, PAUSED = DomainState.RUNNING, DomainState.SHUTOFF, DomainState.PAUSED


def dom(state: DomainState = RUN, *, since: float = 0.0, reason: str = "booted",
        host: str = "h1") -> DomainObs:
    return DomainObs(host, "n1", "c1", state, reason, term=1, since=since)


def seen(d: DomainObs | None = None, *, down: float | None = None, reset: float | None = None,
         hosts: tuple[HostObs, ...] = (), **kw: object) -> Observed:
    return Observed(hosts or (HostObs("h1", Liveness.ALIVE, True, 4096, frozenset({IMG})),),
                    () if d is None else (d,),
                    unreachable={} if down is None else {"n1": down},
                    resets={} if reset is None else {("n1", "h1"): reset}, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    why: str
    since: float
    """When the domain started running."""
    down: float | None
    """Since when its agent is not alive (None: alive)."""
    now: float
    reset: float | None = None
    """When it was reset (None: not yet)."""
    kind: type | None = None
    """What `hung` answers: Reset, Destroy, Waiting, or None."""
    seconds: float | None = field(default=None)
    """The action's `unreachable_for`."""


CASES = [
    Case("agent alive", since=0, down=None, now=5000, kind=None),
    Case("unreachable, not for the bound yet", since=0, down=100, now=399, kind=Waiting),
    Case("unreachable for exactly the bound", since=0, down=100, now=400, kind=Reset,
         seconds=300),
    Case("unreachable long past the bound", since=0, down=100, now=1000, kind=Reset,
         seconds=900),
    Case("never came up: counted from the domain's start, not an older doubt", since=500,
         down=0, now=799, kind=Waiting),
    Case("never came up, the bound passed since the domain's start", since=500, down=0,
         now=800, kind=Reset, seconds=300),
    Case("reset: the bound starts again from the reset", since=1000, down=100, now=1299,
         reset=1000, kind=Waiting),
    Case("still unreachable the bound after the reset", since=1000, down=100, now=1300,
         reset=1000, kind=Destroy, seconds=300),
    Case("a reset older than the domain's start counts from the start", since=2000, down=100,
         now=2299, reset=1000, kind=Waiting),
]


@pytest.mark.parametrize("case", CASES, ids=[c.why for c in CASES])
def test_the_rule(case: Case) -> None:
    d = dom(since=case.since)
    got = hung(d, seen(d, down=case.down, reset=case.reset), bound=BOUND, now=case.now)
    assert (type(got) if got is not None else None) is case.kind
    if isinstance(got, Reset | Destroy):
        assert (got.node, got.host, got.unreachable_for) == ("n1", "h1", case.seconds)
    if isinstance(got, Waiting):
        step = "destroy" if case.reset is not None else "reset"
        assert got.node == "n1" and f"a {step} at 300s" in got.reason


def test_the_manifest_and_the_planner_share_the_default_bound() -> None:
    assert UNREACHABLE_RESET_AFTER == MANIFEST_DEFAULT == Desired("c", Ensure.RUNNING,
                                                                  ()).unreachable_reset_after


# ---- the planner around the rule -----------------------------------------------------------

def want(run: RunStrategy = RunStrategy.ALWAYS, *, ensure: Ensure = Ensure.RUNNING,
         managed: bool = True) -> Desired:
    spec = NodeSpec("n1", "server", 512, 1, IMG, run=run, managed=managed)
    return Desired("c1", ensure, (spec,), unreachable_reset_after=BOUND)


def host(live: Liveness = Liveness.ALIVE, *, reach: bool = True) -> HostObs:
    return HostObs("h1", live, reach, 4096, frozenset({IMG}))


HUNG = dom(since=0)
NOW = 1000.0


@dataclass(frozen=True)
class Around:
    why: str
    desired: Desired
    observed: Observed
    actions: tuple[object, ...]
    waits: str = ""
    """Words the node's waiting reason holds ("" when not checked)."""


AROUND = [
    Around("a hung guest on a live host is reset", want(), seen(HUNG, down=0),
           (Reset("n1", "h1", "agent unreachable for 1000s while its domain runs "
                  "(bound 300s)", unreachable_for=1000.0),)),
    Around("and destroyed when the reset did not help", want(),
           seen(dom(since=600), down=0, reset=600),
           (Destroy("n1", "h1", "agent still unreachable 400s after a reset; destroying to "
                    "start it again", unreachable_for=400.0),)),
    Around("the destroyed domain is started again in place, as any that died", want(),
           seen(dom(OFF, reason="destroyed"), down=0),
           (Start("n1", "h1", "shutoff (destroyed); restarting in place", respawn=True),)),
    Around("a guest that powered off after a reset is started even if rerun-on-failure",
           want(RunStrategy.RERUN_ON_FAILURE), seen(dom(OFF, reason=AFTER_RESET), down=0),
           (Start("n1", "h1", "shutoff (reset); restarting in place", respawn=True),)),
    Around("not under maintenance (planned manual)", want(RunStrategy.MANUAL),
           seen(HUNG, down=0), ()),
    Around("not while its host is suspect", want(),
           seen(HUNG, down=0, hosts=(host(Liveness.SUSPECT),)), (), "suspect"),
    Around("not while its host is unreachable", want(),
           seen(HUNG, down=0, hosts=(host(reach=False),)), (), "unreachable"),
    Around("not while its host is dead: fencing's job", want(),
           seen(HUNG, down=0, hosts=(host(Liveness.DEAD, reach=False),)),
           (Fence("h1", "host is dead by quorum and runs n1"),), "fenced"),
    Around("not while the node backs off", want(),
           seen(HUNG, down=0, node_failures={"n1": FailRecord(2, 990.0, 1005.0)}), (),
           "backing off"),
    Around("not while an action of the node is in flight", want(),
           seen(HUNG, down=0, in_flight=frozenset({"n1"})), ()),
    Around("not a paused domain", want(), seen(dom(PAUSED), down=0), ()),
    Around("not an unmanaged node", want(managed=False), seen(HUNG, down=0), ()),
    Around("not while the cloud stops (it is shut down instead)", want(ensure=Ensure.STOPPED),
           seen(HUNG, down=0), (), ""),
    Around("before the bound the node waits, and says why", want(),
           seen(dom(since=900), down=0), (), "agent unreachable for 100s"),
]


@pytest.mark.parametrize("case", AROUND, ids=[c.why for c in AROUND])
def test_the_planner_around_the_rule(case: Around) -> None:
    result = planned(case.desired, case.observed, NOW)
    if case.desired.ensure is Ensure.STOPPED:
        assert not any(isinstance(a, Reset) for a in result.actions)
        return
    assert result.actions == case.actions
    waits = {w.node: w.reason for w in result.waiting}
    if case.waits:
        assert case.waits in waits.get("n1", ""), waits
    if not case.waits:
        assert "agent unreachable" not in waits.get("n1", "")

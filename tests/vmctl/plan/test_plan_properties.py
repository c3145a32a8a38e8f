"""Hypothesis properties of the planner over arbitrary pools, and convergence in a simulation."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from plan_sim import SimHost, World

from cloudd.vmctl.plan import (
    CreateOverlay,
    Define,
    Desired,
    DomainObs,
    DomainState,
    Ensure,
    Fence,
    HostObs,
    Liveness,
    NodeSpec,
    Observed,
    RunStrategy,
    Start,
    plan,
)

IMG = "/img/base.qcow2"
HOSTS = ["h1", "h2", "h3", "h4"]
NODES = ["n1", "n2", "n3", "n4", "n5", "n6"]


@st.composite
def hosts(draw: st.DrawFn) -> tuple[HostObs, ...]:
    out = []
    for name in HOSTS:
        # biased towards usable hosts, so that plans have placements to check
        live = draw(st.sampled_from([Liveness.ALIVE, Liveness.ALIVE, Liveness.SUSPECT,
                                     Liveness.DEAD, Liveness.DEAD]))
        out.append(HostObs(name, live, draw(st.sampled_from([True, True, False])),
                           draw(st.integers(0, 8192)),
                           draw(st.sampled_from([frozenset(), frozenset({IMG}),
                                                 frozenset({IMG})])),
                           fenced=live is Liveness.DEAD and draw(st.booleans()),
                           reported=draw(st.sampled_from([True, True, True, False]))))
    return tuple(out)


@st.composite
def specs(draw: st.DrawFn) -> tuple[NodeSpec, ...]:
    names = draw(st.lists(st.sampled_from(NODES), unique=True, min_size=2, max_size=len(NODES)))
    return tuple(NodeSpec(n, draw(st.sampled_from(["db", "web"])), draw(st.integers(128, 2048)),
                          1, IMG, pin=draw(st.sampled_from([None, None, None, *HOSTS])),
                          run=draw(st.sampled_from(list(RunStrategy))),
                          managed=draw(st.booleans() | st.just(True)))
                 for n in names)


@st.composite
def pools(draw: st.DrawFn) -> tuple[Desired, Observed]:
    hs = draw(hosts())
    nodes = draw(specs())
    names = [n.name for n in nodes] + ["orphan"]
    domains = draw(st.lists(st.builds(
        DomainObs, st.sampled_from([h.name for h in hs]), st.sampled_from(names),
        st.sampled_from(["c1", "c1", "other"]), st.sampled_from(list(DomainState)),
        st.sampled_from(["shutdown", "crashed", "destroyed", "unknown"]), st.integers(0, 3)),
        min_size=1, max_size=10, unique_by=lambda d: (d.node, d.host)))
    ensure = draw(st.sampled_from([Ensure.RUNNING, Ensure.RUNNING, Ensure.STOPPED]))
    desired = Desired("c1", ensure, nodes, ("db", "web"))
    busy = frozenset(draw(st.lists(st.sampled_from(NODES), max_size=2)))
    shut = {(d.node, d.host): float(draw(st.integers(0, 100))) for d in domains
            if draw(st.booleans())}
    return desired, Observed(hs, tuple(domains), in_flight=busy, shutdowns=shut)


def _live_copies(obs: Observed, node: str) -> list[DomainObs]:
    fenced = {h.name for h in obs.hosts if h.fenced}
    return [d for d in obs.domains if d.node == node and d.cloud == "c1" and d.host not in fenced]


@settings(max_examples=400, deadline=None)
@given(pools(), st.integers(0, 200))
def test_never_two_domains_for_one_node(pool: tuple[Desired, Observed], now: int) -> None:
    desired, obs = pool
    actions = plan(desired, obs, now)
    defined = [a.node for a in actions if isinstance(a, Define)]
    assert len(defined) == len(set(defined))
    for a in actions:
        if isinstance(a, Define):
            # a new domain only where no live copy exists: proof the old one (if any) is gone
            assert _live_copies(obs, a.node) == [], a
            # and only when every host's domains are known (or the host is fenced)
            assert all(h.reported or h.fenced for h in obs.hosts), a
        if isinstance(a, Start):
            others = [d for d in _live_copies(obs, a.node) if d.host != a.host]
            assert others == [], a


@settings(max_examples=400, deadline=None)
@given(pools(), st.integers(0, 200))
def test_never_replaces_without_proof(pool: tuple[Desired, Observed], now: int) -> None:
    desired, obs = pool
    byname = {h.name: h for h in obs.hosts}
    for a in plan(desired, obs, now):
        if isinstance(a, Define):
            for d in obs.domains:
                if d.node == a.node and d.cloud == "c1":
                    old = byname[d.host]
                    assert old.liveness is Liveness.DEAD and old.fenced, (a, d)
        if isinstance(a, Fence):
            assert byname[a.host].liveness is Liveness.DEAD and not byname[a.host].reachable


@settings(max_examples=400, deadline=None)
@given(pools(), st.integers(0, 200))
def test_only_own_domains_on_reachable_hosts_are_touched(pool: tuple[Desired, Observed],
                                                         now: int) -> None:
    desired, obs = pool
    own = {(d.node, d.host) for d in obs.domains if d.cloud == "c1"}
    byname = {h.name: h for h in obs.hosts}
    managed = {n.name for n in desired.nodes if n.managed}
    for a in plan(desired, obs, now):
        if isinstance(a, Fence):
            continue
        assert byname[a.host].reachable
        assert a.node not in obs.in_flight
        if isinstance(a, Define | CreateOverlay) or (isinstance(a, Start) and
                                                     (a.node, a.host) not in own):
            assert desired.ensure is Ensure.RUNNING and a.node in managed
        else:
            assert (a.node, a.host) in own, a
        if desired.ensure is Ensure.STOPPED:
            assert not isinstance(a, Define | Start | CreateOverlay)


@settings(max_examples=300, deadline=None)
@given(pools(), st.integers(0, 200), st.randoms(use_true_random=False))
def test_plans_are_deterministic_whatever_the_input_order(pool: tuple[Desired, Observed],
                                                          now: int, rnd: random.Random) -> None:
    desired, obs = pool
    hs, ds, ns = list(obs.hosts), list(obs.domains), list(desired.nodes)
    rnd.shuffle(hs)
    rnd.shuffle(ds)
    rnd.shuffle(ns)
    shuffled = Observed(tuple(hs), tuple(ds), in_flight=obs.in_flight, shutdowns=obs.shutdowns)
    again = Desired(desired.cloud, desired.ensure, tuple(ns), desired.role_order)
    assert plan(desired, obs, now) == plan(again, shuffled, now) == plan(desired, obs, now)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_converges_and_survives_host_deaths(data: st.DataObject) -> None:
    """Apply every plan to a simulated pool, kill hosts between rounds: at most one copy of a
    node ever runs, and the plans reach a fixpoint where every node runs (or waits for
    capacity)."""
    n_hosts = data.draw(st.integers(2, 4))
    sims = [SimHost(f"h{i}", data.draw(st.integers(1024, 4096)), {IMG}) for i in range(n_hosts)]
    nodes = {f"n{i}": NodeSpec(f"n{i}", data.draw(st.sampled_from(["db", "web"])),
                               data.draw(st.integers(128, 1024)), 1, IMG)
             for i in range(data.draw(st.integers(1, 6)))}
    world = World(sims, nodes, obedient=data.draw(st.booleans()))
    desired = Desired("c1", Ensure.RUNNING, tuple(nodes.values()), ("db", "web"))
    now = 0.0
    deaths = data.draw(st.lists(st.tuples(st.integers(0, 8), st.sampled_from(sims[1:])),
                                max_size=2))
    for rnd in range(12):
        for when, victim in deaths:
            if when == rnd and victim.reachable:
                world.cut(victim.name)
        actions = plan(desired, world.observe(), now)
        for a in actions:
            world.apply(a, now)
        for n in nodes:
            assert len(world.running_copies(n)) <= 1, (n, world.log)
        now += 1.0
    assert plan(desired, world.observe(), now) == []
    live_free = {h.name: world.free(h.name) for h in sims if h.reachable}
    for n, spec in nodes.items():
        if not world.running_copies(n):
            assert all(free < spec.memory_mib for free in live_free.values()), (n, live_free)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_stop_converges_to_nothing_of_ours(data: st.DataObject) -> None:
    sims = [SimHost(f"h{i}", 4096, {IMG}) for i in range(3)]
    nodes = {f"n{i}": NodeSpec(f"n{i}", "web", 256, 1, IMG) for i in range(4)}
    world = World(sims, nodes, obedient=data.draw(st.booleans()))
    world.add(DomainObs("h0", "stranger", "other", DomainState.RUNNING))
    up = Desired("c1", Ensure.RUNNING, tuple(nodes.values()))
    for a in plan(up, world.observe(), 0.0):
        world.apply(a, 0.0)
    down = Desired("c1", Ensure.STOPPED, tuple(nodes.values()))
    now = 1.0
    for _ in range(5):
        for a in plan(down, world.observe(), now):
            world.apply(a, now)
        now += 61.0
    assert plan(down, world.observe(), now) == []
    assert list(world.domains) == [("stranger", "h0")]


@settings(max_examples=300, deadline=None)
@given(pools(), st.integers(0, 200))
def test_new_placements_fit_memory_images_and_pins(pool: tuple[Desired, Observed],
                                                   now: int) -> None:
    desired, obs = pool
    specs = {n.name: n for n in desired.nodes}
    byname = {h.name: h for h in obs.hosts}
    actions = plan(desired, obs, now)
    new = {a.node for a in actions if isinstance(a, Define)}
    taken: dict[str, int] = {}
    fresh: dict[str, int] = {}
    for a in actions:
        if isinstance(a, Start):
            taken[a.host] = taken.get(a.host, 0) + specs[a.node].memory_mib
            if a.node in new:
                fresh[a.host] = fresh.get(a.host, 0) + specs[a.node].memory_mib
        if isinstance(a, Define):
            spec, host = specs[a.node], byname[a.host]
            assert spec.pin in (None, a.host), a
            assert host.liveness is Liveness.ALIVE and host.reachable and not host.fenced
            assert IMG in host.images, a
    for host, used in fresh.items():
        assert taken[host] <= byname[host].free_memory_mib, (host, used, actions)

"""Copying a missing image from a node's source host: rule tables, properties, a simulation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_sim import SimHost, World

from cloudd.vmctl.plan import (
    CopyImage,
    CreateOverlay,
    Define,
    Desired,
    DomainObs,
    DomainState,
    Ensure,
    HostObs,
    ImageSource,
    Liveness,
    NodeSpec,
    Observed,
    Start,
    plan,
    planned,
)

IMG = "/img/a.qcow2"
BASE = "/img/base.qcow2"
ALIVE, SUSPECT, DEAD = Liveness.ALIVE, Liveness.SUSPECT, Liveness.DEAD


def src(name: str) -> ImageSource:
    return ImageSource(name, f"addr-of-{name}")


def node(name: str, *, mem: int = 512, role: str = "server", **kw: object) -> NodeSpec:
    return NodeSpec(name=name, role=role, memory_mib=mem, vcpus=1, image=IMG, **kw)  # type: ignore[arg-type]


def host(name: str, free: int = 4096, *, images: frozenset[str] = frozenset(),
         live: Liveness = ALIVE, reach: bool = True, fenced: bool = False) -> HostObs:
    return HostObs(name, live, reach, free, images, fenced=fenced)


def want(*nodes: NodeSpec) -> Desired:
    return Desired("c1", Ensure.RUNNING, tuple(nodes))


def seen(*hosts: HostObs, domains: tuple[DomainObs, ...] = ()) -> Observed:
    return Observed(tuple(hosts), domains)


HAS = frozenset({IMG})

# ---- tables -----------------------------------------------------------------------------------


def test_copies_the_image_from_the_source_then_defines() -> None:
    # the source has the image but no room; h2 can get it by copy
    obs = seen(host("h1", 100, images=HAS), host("h2"))
    assert plan(want(node("a", source=src("h1"))), obs, 0) == [
        CopyImage("a", "h2", "h1", IMG, f"h2 lacks {IMG}; h1 has it"),
        Define("a", "h2", "no domain anywhere"), Start("a", "h2", "newly defined")]


def test_copies_the_base_image_before_the_overlay() -> None:
    spec = node("a", base_image=BASE, source=src("h1"))
    obs = seen(host("h1", 100, images=frozenset({BASE})), host("h2"))
    assert plan(want(spec), obs, 0) == [
        CopyImage("a", "h2", "h1", BASE, f"h2 lacks {BASE}; h1 has it"),
        CreateOverlay("a", "h2", f"h2 has base {BASE}"),
        Define("a", "h2", "no domain anywhere"), Start("a", "h2", "newly defined")]


def test_a_host_that_has_the_image_wins_over_spread() -> None:
    # h1 already runs a node of the role; spreading alone would pick h2, which would need a copy
    obs = seen(host("h1", images=HAS), host("h2"), domains=(
        DomainObs("h1", "b", "c1", DomainState.RUNNING, "booted"),))
    actions = plan(want(node("a", source=src("h1")), node("b")), obs, 0)
    assert actions == [Define("a", "h1", "no domain anywhere"),
                       Start("a", "h1", "newly defined")]


def test_a_host_with_the_base_needs_no_copy() -> None:
    spec = node("a", base_image=BASE, source=src("h1"))
    obs = seen(host("h1", 100, images=frozenset({BASE})), host("h2", images=frozenset({BASE})))
    assert [type(a) for a in plan(want(spec), obs, 0)] == [CreateOverlay, Define, Start]


def test_never_copies_an_overlay_without_its_base() -> None:
    # the source has the node's overlay but not the base it is backed by: nothing to copy
    spec = node("a", base_image=BASE, source=src("h1"))
    res = planned(want(spec), seen(host("h1", 100, images=HAS), host("h2")), 0)
    assert res.actions == ()
    # h1 itself has the image but no room; h2 would need BASE, which h1 does not report
    assert res.waiting[0].reason == "no candidate host has 512 MiB free"
    res = planned(want(spec), seen(host("h1", 100, images=HAS), host("h2", 100)), 0)
    assert res.actions == ()


@pytest.mark.parametrize("source", [
    host("h1", 100, live=SUSPECT, images=HAS), host("h1", 100, reach=False, images=HAS),
    host("h1", 100, live=DEAD, reach=False, fenced=True, images=HAS)])
def test_no_copy_from_a_source_not_alive_and_reachable(source: HostObs) -> None:
    res = planned(want(node("a", source=src("h1"))), seen(source, host("h2")), 0)
    assert res.actions == ()
    assert res.waiting[0].reason.endswith("source host h1 is not alive and reachable")


def test_no_copy_from_a_source_that_lacks_the_image() -> None:
    res = planned(want(node("a", source=src("h1"))), seen(host("h1"), host("h2")), 0)
    assert res.actions == ()
    assert res.waiting[0].reason == (f"no candidate host has image {IMG} and source host h1 "
                                     f"does not report {IMG}")


def test_a_pinned_node_gets_its_image_copied_to_its_host() -> None:
    obs = seen(host("h1", images=HAS), host("h2"))
    assert plan(want(node("a", pin="h2", source=src("h1"))), obs, 0)[0] == CopyImage(
        "a", "h2", "h1", IMG, f"h2 lacks {IMG}; h1 has it")
    res = planned(want(node("a", pin="h2", source=src("h3"))), obs, 0)
    assert res.waiting[0].reason == (f"pinned: host h2 lacks image {IMG} and source host h3 "
                                     "is not alive and reachable")


def test_without_a_source_a_host_lacking_the_image_is_skipped() -> None:
    assert plan(want(node("a")), seen(host("h1")), 0) == []


def test_copies_spread_and_respect_memory() -> None:
    obs = seen(host("h1", 0, images=HAS), host("h2", 600), host("h3", 600))
    actions = plan(want(*(node(n, source=src("h1")) for n in ("a", "b", "c"))), obs, 0)
    copies = [a for a in actions if isinstance(a, CopyImage)]
    assert [(a.node, a.host) for a in copies] == [("a", "h2"), ("b", "h3")]
    assert planned(want(*(node(n, source=src("h1")) for n in ("a", "b", "c"))), obs,
                   0).waiting[0].reason == "no candidate host has 512 MiB free"


# ---- properties ---------------------------------------------------------------------------------

HOSTS = ["h1", "h2", "h3"]
IMAGE_SETS = [frozenset(), frozenset({IMG}), frozenset({BASE}), frozenset({IMG, BASE})]


@st.composite
def pools(draw: st.DrawFn) -> tuple[Desired, Observed]:
    hosts = tuple(HostObs(
        name, draw(st.sampled_from([ALIVE, ALIVE, SUSPECT, DEAD])),
        draw(st.sampled_from([True, True, False])), draw(st.integers(0, 2048)),
        draw(st.sampled_from(IMAGE_SETS))) for name in HOSTS)
    nodes = tuple(NodeSpec(
        f"n{i}", draw(st.sampled_from(["db", "web"])), draw(st.integers(128, 1024)), 1,
        f"/img/n{i}.qcow2" if (base := draw(st.booleans())) else IMG,
        base_image=BASE if base else None,
        pin=draw(st.sampled_from([None, None, *HOSTS])),
        source=draw(st.sampled_from([None, *(src(h) for h in HOSTS), src("elsewhere")])))
        for i in range(draw(st.integers(1, 5))))
    return Desired("c1", Ensure.RUNNING, nodes, ("db", "web")), Observed(hosts, ())


@settings(max_examples=400, deadline=None)
@given(pools())
def test_never_copies_from_a_host_that_lacks_the_image(pool: tuple[Desired, Observed]) -> None:
    desired, obs = pool
    specs = {n.name: n for n in desired.nodes}
    byname = {h.name: h for h in obs.hosts}
    for a in plan(desired, obs, 0):
        if isinstance(a, CopyImage):
            spec, source = specs[a.node], byname[a.source]
            assert spec.source is not None and a.source == spec.source.host
            assert a.image == spec.copied_image
            assert a.image in source.images, a
            assert source.liveness is ALIVE and source.reachable and not source.fenced
            assert a.image not in byname[a.host].images, a


@settings(max_examples=400, deadline=None)
@given(pools())
def test_never_a_define_before_its_image_is_there(pool: tuple[Desired, Observed]) -> None:
    desired, obs = pool
    specs = {n.name: n for n in desired.nodes}
    have = {(h.name, i) for h in obs.hosts for i in h.images}
    for a in plan(desired, obs, 0):
        # actions come in order per node; a node's chain runs in this order and stops at a
        # failure, so an image is there for an action if an earlier action of the plan made it
        if isinstance(a, CopyImage):
            have.add((a.host, a.image))
        elif isinstance(a, CreateOverlay):
            assert (a.host, specs[a.node].base_image) in have, a
            have.add((a.host, specs[a.node].image))
        elif isinstance(a, Define):
            assert (a.host, specs[a.node].image) in have, a


@settings(max_examples=300, deadline=None)
@given(pools())
def test_a_copy_only_when_no_fitting_host_has_the_image(pool: tuple[Desired, Observed]) -> None:
    desired, obs = pool
    # one node at a time, so that memory booked by other nodes does not blur the rule
    for spec in desired.nodes:
        one = Desired("c1", Ensure.RUNNING, (spec,))
        actions = plan(one, obs, 0)
        if actions and isinstance(actions[0], CopyImage) and spec.pin is None:
            assert not any(h.liveness is ALIVE and h.reachable
                           and h.free_memory_mib >= spec.memory_mib
                           and (spec.image in h.images or spec.base_image in h.images)
                           for h in obs.hosts), (spec, obs.hosts)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_pool_seeded_by_one_host_converges(data: st.DataObject) -> None:
    """Only h0 has the images (and no room): every node is copied to, and runs on, another
    host; then plans are empty."""
    n_hosts = data.draw(st.integers(2, 4))
    sims = [SimHost("h0", 0, {IMG, BASE})] + [
        SimHost(f"h{i}", data.draw(st.integers(1024, 4096))) for i in range(1, n_hosts)]
    nodes = {}
    for i in range(data.draw(st.integers(1, 6))):
        base = data.draw(st.booleans())
        nodes[f"n{i}"] = NodeSpec(f"n{i}", "web", data.draw(st.integers(128, 1024)), 1,
                                  f"/img/n{i}.qcow2" if base else IMG,
                                  base_image=BASE if base else None, source=src("h0"))
    world = World(sims, nodes)
    desired = Desired("c1", Ensure.RUNNING, tuple(nodes.values()))
    now = 0.0
    for _ in range(6):
        for a in plan(desired, world.observe(), now):
            world.apply(a, now)
        now += 1.0
    assert plan(desired, world.observe(), now) == []
    copied = [a for a in world.log if isinstance(a, CopyImage)]
    assert copied and all(a.source == "h0" and a.host != "h0" for a in copied)
    live_free = {h.name: world.free(h.name) for h in sims}
    for n, spec in nodes.items():
        if not world.running_copies(n):
            assert all(free < spec.memory_mib for free in live_free.values()), (n, live_free)

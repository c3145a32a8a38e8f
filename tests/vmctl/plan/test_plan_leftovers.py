"""Overlays left behind: one table per rule, and properties over arbitrary pools (never a base
image, never a disk a node of a running cloud names, never while the node has a domain)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudd.vmctl.plan import (
    CreateOverlay,
    Define,
    Desired,
    DomainObs,
    DomainState,
    Ensure,
    FailRecord,
    HostObs,
    Liveness,
    NodeSpec,
    Observed,
    RemoveImage,
    Shutdown,
    Start,
    Undefine,
    plan,
    planned,
)
from cloudd.vmctl.plan.leftovers import kept

BASE = "/img/base.qcow2"
ALIVE, SUSPECT, DEAD = Liveness.ALIVE, Liveness.SUSPECT, Liveness.DEAD
RUN, OFF = DomainState.RUNNING, DomainState.SHUTOFF
GONE = "node is no longer in the manifest; its domain is gone"
STOPPED = "cloud is to be stopped; its domain is gone"


def disk(node: str) -> str:
    return f"/img/c1-{node}.qcow2"


def node(name: str, *, managed: bool = True, image: str = "") -> NodeSpec:
    return NodeSpec(name=name, role="server", memory_mib=512, vcpus=1,
                    image=image or disk(name), base_image=BASE, managed=managed)


def host(name: str, *overlays: str, live: Liveness = ALIVE, reach: bool = True,
         fenced: bool = False, images: tuple[str, ...] = ()) -> HostObs:
    """A host with the overlays it made for the nodes named (or (path, node) pairs)."""
    made = frozenset((disk(n), n) for n in overlays)
    return HostObs(name, live, reach, 4096, frozenset({BASE, *images, *(p for p, _ in made)}),
                   fenced=fenced, overlays=made)


def dom(n: str, h: str, state: DomainState = RUN, reason: str = "booted") -> DomainObs:
    return DomainObs(h, n, "c1", state, reason, term=1)


def want(*nodes: NodeSpec, ensure: Ensure = Ensure.RUNNING) -> Desired:
    return Desired("c1", ensure, tuple(nodes))


def seen(hosts: list[HostObs], domains: list[DomainObs] | None = None,
         **kw: object) -> Observed:
    return Observed(tuple(hosts), tuple(domains or ()), **kw)  # type: ignore[arg-type]


# ---- a node dropped from the manifest -------------------------------------------------------


def test_a_dropped_nodes_overlay_goes_once_its_domain_is_gone() -> None:
    obs = seen([host("h1", "a", "b")], [dom("a", "h1")])
    assert plan(want(node("a")), obs, 0) == [RemoveImage("b", "h1", disk("b"), GONE)]


@pytest.mark.parametrize(("state", "first"), [
    (RUN, Shutdown("b", "h1", "node is no longer in the manifest")),
    (OFF, Undefine("b", "h1", "node is no longer in the manifest")),
])
def test_a_dropped_nodes_domain_goes_first_and_its_overlay_stays(
        state: DomainState, first: Shutdown | Undefine) -> None:
    obs = seen([host("h1", "a", "b")], [dom("a", "h1"), dom("b", "h1", state, "shutdown")])
    assert plan(want(node("a")), obs, 0) == [first]


def test_a_domain_on_an_unreachable_host_holds_the_overlay_elsewhere() -> None:
    # the last report of h2 still lists b: it may run there, on a disk h1 does not see
    obs = seen([host("h1", "b"), host("h2", reach=False)], [dom("b", "h2")])
    assert planned(want(), obs, 0).actions == ()


def test_a_fenced_hosts_domain_does_not_hold_it() -> None:
    obs = seen([host("h1", "b"), host("h2", live=DEAD, reach=False, fenced=True)],
               [dom("b", "h2")])
    assert plan(want(), obs, 0) == [RemoveImage("b", "h1", disk("b"), GONE)]


def test_another_clouds_domain_of_that_name_does_not_hold_it() -> None:
    obs = seen([host("h1", "b")], [DomainObs("h1", "b", "c2", RUN, "booted")])
    assert plan(want(), obs, 0) == [RemoveImage("b", "h1", disk("b"), GONE)]


def test_every_host_that_made_it_is_told() -> None:
    # hosts sharing one disk (the lab) each recorded it: each is asked, the second finds it gone
    obs = seen([host("h2", "b"), host("h1", "b")])
    assert plan(want(), obs, 0) == [RemoveImage("b", "h1", disk("b"), GONE),
                                    RemoveImage("b", "h2", disk("b"), GONE)]


@pytest.mark.parametrize("h", [
    host("h1", "b", live=SUSPECT), host("h1", "b", live=DEAD),
    host("h1", "b", reach=False), host("h1", "b", live=DEAD, reach=False, fenced=True),
], ids=["suspect", "dead", "unreachable", "fenced"])
def test_only_a_usable_host_is_asked(h: HostObs) -> None:
    assert planned(want(), seen([h]), 0).actions == ()


def test_a_node_in_flight_or_backing_off_waits() -> None:
    obs = seen([host("h1", "b")], in_flight=frozenset({"b"}))
    assert planned(want(), obs, 0).actions == ()
    obs = seen([host("h1", "b")], node_failures={"b": FailRecord(2, 5.0, 20.0)})
    result = planned(want(), obs, 10.0)
    assert result.actions == ()
    assert [w.reason for w in result.waiting] == ["backing off after 2 failure(s) until 20.0"]
    assert plan(want(), obs, 20.0) == [RemoveImage("b", "h1", disk("b"), GONE)]


# ---- a node still in the manifest keeps its disk ------------------------------------------------


def test_a_restart_in_place_keeps_the_overlay() -> None:
    obs = seen([host("h1", "a")], [dom("a", "h1", OFF, "crashed")])
    assert plan(want(node("a")), obs, 0) == [
        Start("a", "h1", "shutoff (crashed); restarting in place", respawn=True)]


def test_a_node_without_a_domain_is_defined_again_on_its_overlay() -> None:
    # undefined to be re-defined (or its host fenced): the overlay is its disk, with its data
    obs = seen([host("h1", "a")])
    assert plan(want(node("a")), obs, 0) == [
        Define("a", "h1", "no domain anywhere"), Start("a", "h1", "newly defined")]


def test_a_move_after_a_host_died_keeps_the_overlay_on_each_host() -> None:
    obs = seen([host("h1"), host("h2", "a", live=DEAD, reach=False, fenced=True)],
               [dom("a", "h2")])
    actions = plan(want(node("a")), obs, 0)
    assert [type(a) for a in actions] == [CreateOverlay, Define, Start]
    # h2 back, its old copy reported: the overlay is still a's disk there
    back = seen([host("h1", "a"), host("h2", "a")], [dom("a", "h1"), dom("a", "h2", OFF, "")])
    assert not any(isinstance(a, RemoveImage) for a in plan(want(node("a")), back, 0))


def test_a_disk_the_node_no_longer_names_goes_before_its_new_domain() -> None:
    # the host refuses while a domain of that name is defined: removal comes first
    moved = node("a", image="/img/c1-a-v2.qcow2")
    obs = seen([host("h1", "a")])
    assert plan(want(moved), obs, 0) == [
        RemoveImage("a", "h1", disk("a"),
                    "the manifest no longer names it as the node's disk; its domain is gone"),
        CreateOverlay("a", "h1", f"h1 has base {BASE}"),
        Define("a", "h1", "no domain anywhere"), Start("a", "h1", "newly defined")]


def test_a_path_another_node_names_stays() -> None:
    # b left, but a now names b's old disk as its own
    obs = seen([host("h1", "b")], [dom("a", "h1")])
    assert plan(want(node("a", image=disk("b"))), obs, 0) == []


def test_a_base_image_is_never_removed() -> None:
    obs = seen([HostObs("h1", ALIVE, True, 4096, frozenset({BASE}),
                        overlays=frozenset({(BASE, "b")}))])
    assert not any(isinstance(a, RemoveImage) for a in plan(want(node("a")), obs, 0))
    assert plan(want(node("a"), ensure=Ensure.STOPPED), obs, 0) == []


# ---- a stopped cloud --------------------------------------------------------------------------


def test_a_stopped_cloud_removes_every_overlay_once_its_domains_are_gone() -> None:
    d = want(node("a"), node("b"), ensure=Ensure.STOPPED)
    running = seen([host("h1", "a", "b")], [dom("a", "h1"), dom("b", "h1", OFF, "shutdown")])
    assert plan(d, running, 0) == [Shutdown("a", "h1", "cloud is to be stopped"),
                                   Undefine("b", "h1", "cloud is to be stopped")]
    half = seen([host("h1", "a", "b")], [dom("a", "h1", OFF, "shutdown")])
    assert plan(d, half, 0) == [Undefine("a", "h1", "cloud is to be stopped"),
                                RemoveImage("b", "h1", disk("b"), STOPPED)]
    gone = seen([host("h1", "a", "b")])
    assert plan(d, gone, 0) == [RemoveImage("a", "h1", disk("a"), STOPPED),
                                RemoveImage("b", "h1", disk("b"), STOPPED)]


def test_a_stopped_cloud_leaves_an_unmanaged_nodes_disk() -> None:
    d = want(node("a", managed=False), node("b"), ensure=Ensure.STOPPED)
    assert plan(d, seen([host("h1", "a", "b")]), 0) == [
        RemoveImage("b", "h1", disk("b"), STOPPED)]


# ---- the rule the planner and the hosts share ---------------------------------------------------


@pytest.mark.parametrize(("image", "stopping", "why"), [
    (BASE, False, "a base image"),
    (BASE, True, "a base image"),
    (disk("a"), False, "node a's disk"),
    (disk("a"), True, None),
    (disk("u"), True, "node u's disk"),  # an unmanaged node's VM is not cloudd's
    (disk("gone"), False, None),
])
def test_what_the_manifest_keeps(image: str, stopping: bool, why: str | None) -> None:
    nodes = (node("a"), node("u", managed=False))
    assert kept(image, nodes, stopping=stopping) == why


# ---- properties ---------------------------------------------------------------------------------

NODES = ["a", "b", "c", "d"]
PATHS = [disk(n) for n in NODES] + [BASE, "/img/other.qcow2"]


@st.composite
def pools(draw: st.DrawFn) -> tuple[Desired, Observed]:
    hosts = []
    for name in ["h1", "h2", "h3"]:
        live = draw(st.sampled_from([ALIVE, ALIVE, SUSPECT, DEAD]))
        made = frozenset(draw(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(NODES)),
                                       max_size=4)))
        hosts.append(HostObs(name, live, draw(st.booleans()), 4096,
                             frozenset({BASE, *(p for p, _ in made)}),
                             fenced=live is DEAD and draw(st.booleans()), overlays=made))
    nodes = tuple(NodeSpec(n, "server", 512, 1, draw(st.sampled_from(PATHS[:4])),
                           base_image=BASE, managed=draw(st.booleans()))
                  for n in draw(st.lists(st.sampled_from(NODES), unique=True, max_size=3)))
    domains = draw(st.lists(st.builds(
        DomainObs, st.sampled_from(["h1", "h2", "h3"]), st.sampled_from(NODES),
        st.sampled_from(["c1", "c2"]), st.sampled_from(list(DomainState)),
        st.sampled_from(["shutdown", "crashed", "unknown"])),
        max_size=4, unique_by=lambda d: (d.node, d.host)))
    ensure = draw(st.sampled_from([Ensure.RUNNING, Ensure.STOPPED]))
    busy = frozenset(draw(st.lists(st.sampled_from(NODES), max_size=1)))
    return (Desired("c1", ensure, nodes),
            Observed(tuple(hosts), tuple(domains), in_flight=busy))


@settings(max_examples=300, deadline=None)
@given(pools())
def test_an_overlay_goes_only_when_nothing_can_need_it(pool: tuple[Desired, Observed]) -> None:
    desired, obs = pool
    hosts = {h.name: h for h in obs.hosts}
    fenced = {h.name for h in obs.hosts if h.fenced}
    stopping = desired.ensure is Ensure.STOPPED
    for a in plan(desired, obs, 0):
        if not isinstance(a, RemoveImage):
            continue
        h = hosts[a.host]
        assert (a.image, a.node) in h.overlays
        assert h.liveness is ALIVE and h.reachable and not h.fenced
        assert all(a.image != n.base_image for n in desired.nodes)
        assert all(a.image != n.image for n in desired.nodes if not stopping or not n.managed)
        assert a.node not in obs.in_flight
        assert not [d for d in obs.domains
                    if d.node == a.node and d.cloud == "c1" and d.host not in fenced]

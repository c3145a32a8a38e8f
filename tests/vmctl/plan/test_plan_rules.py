"""One table per planner rule: an input pool, the exact actions expected."""

from __future__ import annotations

import pytest

from cloudd.vmctl.plan import (
    CreateOverlay,
    Define,
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
    RunStrategy,
    Shutdown,
    Start,
    Undefine,
    plan,
    planned,
)

IMG = "/img/base.qcow2"
ALIVE, SUSPECT, DEAD = Liveness.ALIVE, Liveness.SUSPECT, Liveness.DEAD
RUN, OFF, CRASH = DomainState.RUNNING, DomainState.SHUTOFF, DomainState.CRASHED


def node(name: str, role: str = "server", *, mem: int = 512, **kw: object) -> NodeSpec:
    return NodeSpec(name=name, role=role, memory_mib=mem, vcpus=1, image=IMG, **kw)  # type: ignore[arg-type]


def host(name: str, free: int = 4096, *, live: Liveness = ALIVE, reach: bool = True,
         images: frozenset[str] = frozenset({IMG}), fenced: bool = False) -> HostObs:
    return HostObs(name, live, reach, free, images, fenced=fenced)


def dom(n: str, h: str, state: DomainState = RUN, reason: str = "booted", *,
        cloud: str = "c1", term: int = 1) -> DomainObs:
    return DomainObs(h, n, cloud, state, reason, term=term)


def want(*nodes: NodeSpec, ensure: Ensure = Ensure.RUNNING,
         order: tuple[str, ...] = ()) -> Desired:
    return Desired("c1", ensure, tuple(nodes), order)


def seen(hosts: list[HostObs], domains: list[DomainObs] = (), **kw: object) -> Observed:  # type: ignore[assignment]
    return Observed(tuple(hosts), tuple(domains), **kw)  # type: ignore[arg-type]


# ---- placement ------------------------------------------------------------------------------

def test_spreads_a_role_across_hosts_in_role_order() -> None:
    d = want(node("s1"), node("s2"), node("db", "database"), order=("database", "server"))
    acts = plan(d, seen([host("h1"), host("h2")]), 0)
    assert acts == [
        Define("db", "h1", "no domain anywhere"), Start("db", "h1", "newly defined"),
        Define("s1", "h2", "no domain anywhere"), Start("s1", "h2", "newly defined"),
        Define("s2", "h1", "no domain anywhere"), Start("s2", "h1", "newly defined"),
    ]


def test_spread_counts_existing_domains() -> None:
    acts = plan(want(node("s1"), node("s2")), seen([host("h1"), host("h2")], [dom("s1", "h1")]), 0)
    assert [(type(a).__name__, a.host) for a in acts] == [("Define", "h2"), ("Start", "h2")]


def test_fits_memory_counting_this_plans_own_placements() -> None:
    d = want(node("a", mem=600), node("b", mem=600), node("c", mem=600))
    acts = plan(d, seen([host("h1", free=1300), host("h2", free=700)]), 0)
    assert [(a.node, a.host) for a in acts if isinstance(a, Define)] == [("a", "h1"), ("b", "h2"),
                                                                        ("c", "h1")]
    res = planned(want(node("a", mem=600), node("b", mem=600), node("c", mem=600)),
                  seen([host("h1", free=700), host("h2", free=700)]), 0)
    assert [a.node for a in res.actions if isinstance(a, Define)] == ["a", "b"]
    assert [w.node for w in res.waiting] == ["c"]
    assert "600 MiB" in res.waiting[0].reason


def test_in_place_restart_takes_memory_before_new_placements() -> None:
    d = want(node("old", mem=600), node("new", mem=600))
    acts = plan(d, seen([host("h1", free=700)], [dom("old", "h1", OFF, "crashed")]), 0)
    assert acts == [Start("old", "h1", "shutoff (crashed); restarting in place", respawn=True)]


def test_honours_pins() -> None:
    acts = plan(want(node("a", pin="h2"), node("b", pin="h2")), seen([host("h1"), host("h2")]), 0)
    assert {a.host for a in acts} == {"h2"}
    res = planned(want(node("a", pin="h3")), seen([host("h1")]), 0)
    assert res.actions == () and "pinned: host h3 is not a candidate" in res.waiting[0].reason


def test_skips_hosts_without_the_image_unless_an_overlay_can_be_made() -> None:
    spec = NodeSpec("a", "server", 512, 1, "/img/a.qcow2")
    assert plan(want(spec), seen([host("h1")]), 0) == []
    spec = NodeSpec("a", "server", 512, 1, "/img/a.qcow2", base_image=IMG)
    assert plan(want(spec), seen([host("h1", images=frozenset()), host("h2")]), 0) == [
        CreateOverlay("a", "h2", f"h2 has base {IMG}"),
        Define("a", "h2", "no domain anywhere"), Start("a", "h2", "newly defined")]


@pytest.mark.parametrize("h", [host("h1", live=SUSPECT), host("h1", reach=False),
                               host("h1", live=DEAD, reach=False)])
def test_never_places_on_a_host_not_alive_and_reachable(h: HostObs) -> None:
    assert plan(want(node("a")), seen([h]), 0) == []


def test_host_in_backoff_is_not_a_candidate_until_its_deadline() -> None:
    fails = {"h1": FailRecord(3, 0.0, 50.0)}
    obs = seen([host("h1"), host("h2", free=100)], host_failures=fails)
    assert plan(want(node("a")), obs, 10) == []
    assert [a.host for a in plan(want(node("a")), obs, 50)] == ["h1", "h1"]


# ---- respawn and run strategies ------------------------------------------------------------

RESPAWN = [
    # (strategy, state, reason, expected action class or None)
    (RunStrategy.ALWAYS, OFF, "shutdown", Start),
    (RunStrategy.ALWAYS, OFF, "destroyed", Start),
    (RunStrategy.ALWAYS, CRASH, "panicked", Destroy),
    (RunStrategy.ALWAYS, RUN, "booted", None),
    (RunStrategy.ALWAYS, DomainState.PAUSED, "user", None),
    (RunStrategy.RERUN_ON_FAILURE, OFF, "shutdown", None),
    (RunStrategy.RERUN_ON_FAILURE, OFF, "crashed", Start),
    (RunStrategy.RERUN_ON_FAILURE, OFF, "destroyed", Start),
    (RunStrategy.RERUN_ON_FAILURE, CRASH, "panicked", Destroy),
    (RunStrategy.MANUAL, OFF, "crashed", None),
    (RunStrategy.MANUAL, CRASH, "panicked", None),
    (RunStrategy.MANUAL, OFF, "unknown", None),
]


@pytest.mark.parametrize(("run", "state", "reason", "kind"), RESPAWN)
def test_run_strategies(run: RunStrategy, state: DomainState, reason: str,
                        kind: type | None) -> None:
    acts = plan(want(node("a", run=run)), seen([host("h1"), host("h2")],
                                               [dom("a", "h1", state, reason)]), 0)
    assert [type(a) for a in acts] == ([] if kind is None else [kind])
    assert all(a.host == "h1" for a in acts)


def test_manual_node_is_defined_never_started() -> None:
    assert plan(want(node("a", run=RunStrategy.MANUAL)), seen([host("h1")]), 0) == [
        Define("a", "h1", "no domain anywhere")]


def test_unmanaged_nodes_are_left_alone() -> None:
    assert plan(want(node("a", managed=False)), seen([host("h1")]), 0) == []
    assert plan(want(node("a", managed=False), ensure=Ensure.STOPPED),
                seen([host("h1")], [dom("a", "h1")]), 0) == []


def test_node_backoff_gates_restart_until_deadline() -> None:
    obs = seen([host("h1")], [dom("a", "h1", OFF, "crashed")],
               node_failures={"a": FailRecord(2, 5.0, 9.0)})
    res = planned(want(node("a")), obs, 8.9)
    assert res.actions == () and "backing off after 2 failure(s)" in res.waiting[0].reason
    assert [type(a) for a in plan(want(node("a")), obs, 9.0)] == [Start]


def test_in_flight_nodes_are_skipped() -> None:
    obs = seen([host("h1")], [dom("a", "h1", OFF, "crashed")], in_flight=frozenset({"a"}))
    assert plan(want(node("a")), obs, 0) == []


# ---- dead hosts, fencing, re-placement -------------------------------------------------------

def test_dead_unreachable_host_is_fenced_and_the_node_not_replaced_yet() -> None:
    obs = seen([host("h1", live=DEAD, reach=False), host("h2")], [dom("a", "h1"), dom("b", "h1")])
    assert plan(want(node("a"), node("b")), obs, 0) == [
        Fence("h1", "host is dead by quorum and runs a")]


def test_no_fence_while_one_runs_or_the_host_backs_off() -> None:
    base = dict(hosts=[host("h1", live=DEAD, reach=False), host("h2")], domains=[dom("a", "h1")])
    assert plan(want(node("a")), seen(**base, fencing=frozenset({"h1"})), 0) == []  # type: ignore[arg-type]
    fails = {"h1": FailRecord(1, 0.0, 10.0)}
    assert plan(want(node("a")), seen(**base, host_failures=fails), 5) == []  # type: ignore[arg-type]


def test_fenced_host_proves_the_domain_gone_so_the_node_moves() -> None:
    obs = seen([host("h1", live=DEAD, reach=False, fenced=True), host("h2")], [dom("a", "h1")])
    assert plan(want(node("a")), obs, 0) == [
        Define("a", "h2", "re-placing: host h1 is dead and fenced"),
        Start("a", "h2", "newly defined", respawn=True)]


@pytest.mark.parametrize("h1", [host("h1", live=SUSPECT), host("h1", reach=False),
                                host("h1", live=SUSPECT, reach=False)])
def test_never_replaces_off_a_host_not_declared_dead(h1: HostObs) -> None:
    obs = seen([h1, host("h2")], [dom("a", "h1", OFF, "crashed")])
    assert plan(want(node("a")), obs, 0) == []


def test_dead_but_reachable_host_destroys_then_undefines_before_replacing() -> None:
    h1 = host("h1", live=DEAD)
    why = "host h1 is dead by quorum; removing before re-placing"
    assert plan(want(node("a")), seen([h1, host("h2")], [dom("a", "h1")]), 0) == [
        Destroy("a", "h1", why)]
    assert plan(want(node("a")), seen([h1, host("h2")], [dom("a", "h1", OFF, "destroyed")]),
                0) == [Undefine("a", "h1", why)]


def test_duplicates_after_a_fenced_host_returns_keep_the_newest() -> None:
    obs = seen([host("h1"), host("h2")], [dom("a", "h1", OFF, "destroyed", term=1),
                                          dom("a", "h2", RUN, term=2)])
    assert plan(want(node("a")), obs, 0) == [
        Undefine("a", "h1", "duplicate of the copy on h2 (term 2)")]
    obs = seen([host("h1"), host("h2")], [dom("a", "h1", RUN, term=1), dom("a", "h2", RUN, term=2)])
    assert plan(want(node("a")), obs, 0) == [
        Destroy("a", "h1", "duplicate of the copy on h2 (term 2)")]


# ---- ensure: stopped, orphans ------------------------------------------------------------------

def test_stop_shuts_down_then_destroys_after_timeout_then_undefines() -> None:
    d = want(node("a"), ensure=Ensure.STOPPED)
    hs = [host("h1")]
    assert plan(d, seen(hs, [dom("a", "h1")]), 0) == [
        Shutdown("a", "h1", "cloud is to be stopped")]
    asked = {("a", "h1"): 100.0}
    assert plan(d, seen(hs, [dom("a", "h1")], shutdowns=asked), 159) == []
    assert plan(d, seen(hs, [dom("a", "h1")], shutdowns=asked), 160) == [
        Destroy("a", "h1", "cloud is to be stopped; no power-off 60s after shutdown")]
    assert plan(d, seen(hs, [dom("a", "h1", OFF, "destroyed")]), 161) == [
        Undefine("a", "h1", "cloud is to be stopped")]
    assert plan(d, seen(hs, [dom("a", "h1", CRASH, "x")]), 0) == [
        Destroy("a", "h1", "cloud is to be stopped")]


def test_stop_never_touches_other_clouds_domains() -> None:
    d = want(node("a"), ensure=Ensure.STOPPED)
    obs = seen([host("h1")], [dom("a", "h1", cloud="other"), dom("x", "h1", cloud="other")])
    assert plan(d, obs, 0) == []


def test_orphans_of_this_cloud_are_removed_others_are_not() -> None:
    obs = seen([host("h1")], [dom("gone", "h1", OFF, "shutdown"), dom("zz", "h1", cloud="c2")])
    assert plan(want(), obs, 0) == [Undefine("gone", "h1", "node is no longer in the manifest")]


def test_plans_are_deterministic_in_order() -> None:
    d = want(*(node(f"n{i}", ("a", "b")[i % 2]) for i in range(9)), order=("b", "a"))
    hs = [host(f"h{i}") for i in range(4)]
    first = plan(d, seen(hs), 0)
    assert first == plan(d, seen(list(reversed(hs))), 0)
    assert [a.node for a in first if isinstance(a, Define)][:4] == ["n1", "n3", "n5", "n7"]


def test_unknown_domains_on_an_unreported_host_block_new_placements() -> None:
    silent = HostObs("h1", ALIVE, False, 0, frozenset(), reported=False)
    res = planned(want(node("a"), node("b")), seen([silent, host("h2")], [dom("b", "h2", OFF)]), 0)
    assert res.actions == (Start("b", "h2", "shutoff (booted); restarting in place",
                                 respawn=True),)
    assert res.waiting[0].reason == "domains of host h1 are unknown"
    dead = HostObs("h1", DEAD, False, 0, frozenset(), reported=False)
    assert plan(want(node("a")), seen([dead, host("h2")]), 0) == [
        Fence("h1", "host is dead by quorum and its domains are unknown")]
    fenced = HostObs("h1", DEAD, False, 0, frozenset(), reported=False, fenced=True)
    assert [type(a) for a in plan(want(node("a")), seen([fenced, host("h2")]), 0)] == [
        Define, Start]


def test_duplicates_never_remove_the_copy_a_fresh_report_shows_running() -> None:
    # h9 is back alive but not yet reachable: its report is stale, the copy on h1 is real
    obs = seen([host("h9", reach=False), host("h1")], [dom("a", "h9", RUN, term=1),
                                                       dom("a", "h1", RUN, term=1)])
    res = planned(want(node("a")), obs, 0)
    assert res.actions == ()
    assert res.waiting[0].reason.startswith("duplicate of the copy on h1 (term 1), but host h9")


# ---- maintenance holds ---------------------------------------------------------------------

def held(name: str) -> NodeSpec:
    return node(name, run=RunStrategy.MANUAL, held=True)


HELD = [
    # (what, hosts, domains of "a", the reason it waits or None)
    ("off on a live host: left off", [host("h1")], [dom("a", "h1", OFF, "destroyed")], None),
    ("running on a live host: left running", [host("h1")], [dom("a", "h1")], None),
    ("no domain anywhere: none made", [host("h1")], [],
     "in maintenance: no domain, and none is made while held"),
    ("its host fenced (a cold start): not re-placed",
     [host("h1", live=DEAD, reach=False, fenced=True), host("h2")], [dom("a", "h1", OFF)],
     "in maintenance: no domain, and none is made while held"),
    ("its host dead and unreachable: not fenced for it", [host("h1", live=DEAD, reach=False),
                                                          host("h2")], [dom("a", "h1")],
     "in maintenance: left on host h1, which is dead"),
    ("its host dead but reachable: not taken off", [host("h1", live=DEAD), host("h2")],
     [dom("a", "h1")], "in maintenance: left on host h1, which is dead"),
]


@pytest.mark.parametrize(("what", "hosts", "domains", "reason"), HELD, ids=[h[0] for h in HELD])
def test_a_held_node_is_left_where_and_as_it_is(what: str, hosts: list[HostObs],
                                                domains: list[DomainObs],
                                                reason: str | None) -> None:
    res = planned(want(held("a")), seen(hosts, domains), 0)
    assert res.actions == ()
    assert [(w.node, w.reason) for w in res.waiting] == ([] if reason is None else
                                                        [("a", reason)])


def test_a_held_node_found_nowhere_waits_for_a_host_whose_domains_are_unknown() -> None:
    # it may have its domain there: the reason says so, and the host is fenced as for any
    unknown = HostObs("h1", DEAD, False, 4096, frozenset({IMG}), reported=False)
    res = planned(want(held("a")), seen([unknown, host("h2")]), 0)
    assert res.actions == (Fence("h1", "host is dead by quorum and its domains are unknown"),)
    assert [(w.node, w.reason) for w in res.waiting] == [("a", "domains of host h1 are unknown")]


def test_released_the_same_node_is_placed_again() -> None:
    obs = seen([host("h1", live=DEAD, reach=False, fenced=True), host("h2")],
               [dom("a", "h1", OFF)])
    assert plan(want(node("a")), obs, 0) == [
        Define("a", "h2", "re-placing: host h1 is dead and fenced"),
        Start("a", "h2", "newly defined", respawn=True)]


def test_a_held_node_on_a_dead_host_does_not_hold_back_the_fence_its_neighbours_need() -> None:
    obs = seen([host("h1", live=DEAD, reach=False), host("h2")], [dom("a", "h1"), dom("b", "h1")])
    res = planned(want(held("a"), node("b")), obs, 0)
    assert res.actions == (Fence("h1", "host is dead by quorum and runs b"),)
    assert [w.node for w in res.waiting] == ["a", "b"]


def test_duplicates_of_a_held_node_are_still_resolved() -> None:
    obs = seen([host("h1"), host("h2")], [dom("a", "h1", OFF, "destroyed", term=1),
                                          dom("a", "h2", OFF, "destroyed", term=2)])
    assert plan(want(held("a")), obs, 0) == [
        Undefine("a", "h1", "duplicate of the copy on h2 (term 2)")]

"""Draining a host: rule tables for each decision, and a simulated drain to the end."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
from plan_sim import SimHost, World

from cloudd.vmctl.plan import (
    CreateOverlay,
    Define,
    Desired,
    Destroy,
    DomainObs,
    DomainState,
    DrainMove,
    Ensure,
    FailRecord,
    HostObs,
    Liveness,
    Migrate,
    NodeSpec,
    Observed,
    Shutdown,
    Start,
    Undefine,
    planned,
)

IMG = "/img/a.qcow2"
HAS = frozenset({IMG})
RUN, OFF = DomainState.RUNNING, DomainState.SHUTOFF


def node(name: str, role: str, *, move: DrainMove = DrainMove.REPLICA, **kw: object) -> NodeSpec:
    return NodeSpec(name=name, role=role, memory_mib=512, vcpus=1, image=IMG, move=move,
                    **kw)  # type: ignore[arg-type]


def host(name: str, free: int = 4096) -> HostObs:
    return HostObs(name, Liveness.ALIVE, True, free, HAS)


def dom(n: str, h: str, state: DomainState = RUN, reason: str = "booted") -> DomainObs:
    return DomainObs(h, n, "c1", state, reason, term=1)


WEB = (node("db", "database", move=DrainMove.STATEFUL), node("s1", "server"),
       node("s2", "server"), node("lb", "balancer"))
ROLES = ("database", "server", "balancer")


def want(*nodes: NodeSpec, drained: frozenset[str] = frozenset({"pm1"}),
         stateful: frozenset[str] = frozenset()) -> Desired:
    return Desired("c1", Ensure.RUNNING, tuple(nodes), role_order=ROLES, drained=drained,
                   move_stateful=stateful)


def seen(*domains: DomainObs, ready: set[str], hosts: tuple[HostObs, ...] = (),
         shutdowns: dict[tuple[str, str], float] | None = None) -> Observed:
    return Observed(hosts or (host("pm1"), host("pm2"), host("pm3")), domains,
                    ready=frozenset(ready), shutdowns=shutdowns or {})


#: db and lb on pm3, s2 on pm2, s1 on the drained pm1
SPREAD = (dom("db", "pm3"), dom("s1", "pm1"), dom("s2", "pm2"), dom("lb", "pm3"))


def waiting(p: object) -> dict[str, str]:
    return {w.node: w.reason for w in p.waiting}  # type: ignore[attr-defined]


def test_a_server_waits_while_it_is_the_only_ready_server() -> None:
    p = planned(want(*WEB), seen(*SPREAD, ready={"db", "s1", "lb"}), 0.0)
    assert p.actions == ()
    assert waiting(p)["s1"] == ("waiting for another server to be ready before leaving "
                                "drained host pm1 (none of s2 is)")


def test_a_server_moves_while_another_server_is_ready() -> None:
    p = planned(want(*WEB), seen(*SPREAD, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert p.actions == (Shutdown("s1", "pm1", "host pm1 is drained: moving s1 (replica)"),)


def test_the_stopped_copy_is_undefined_then_placed_off_the_drained_host() -> None:
    down = (dom("db", "pm3"), dom("s1", "pm1", OFF, "shutdown"), dom("s2", "pm2"),
            dom("lb", "pm3"))
    # a move under way is finished even though s1 is no longer ready
    p = planned(want(*WEB), seen(*down, ready={"db", "s2", "lb"},
                                 shutdowns={("s1", "pm1"): 0.0}), 1.0)
    assert [type(a) for a in p.actions] == [Undefine]
    gone = (dom("db", "pm3"), dom("s2", "pm2"), dom("lb", "pm3"))
    p = planned(want(*WEB), seen(*gone, ready={"db", "s2", "lb"}), 2.0)
    # spread: the other server is on pm2
    assert [(type(a), a.host) for a in p.actions] == [(Define, "pm3"), (Start, "pm3")]


def test_the_database_waits_without_the_operators_word() -> None:
    on = (dom("db", "pm1"), dom("s1", "pm2"), dom("s2", "pm3"), dom("lb", "pm3"))
    p = planned(want(*WEB), seen(*on, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert p.actions == ()
    assert waiting(p)["db"] == ("stateful (its disk is local and holds the role's data): moved "
                                "only with `cloudd-cli drain pm1 --move-stateful`")
    p = planned(want(*WEB, stateful=frozenset({"pm1"})),
                seen(*on, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert p.actions == (Shutdown("db", "pm1", "host pm1 is drained: moving db (stateful)"),)


def test_the_database_moves_last() -> None:
    on = (dom("db", "pm1"), dom("s1", "pm1"), dom("s2", "pm3"), dom("lb", "pm3"))
    p = planned(want(*WEB, stateful=frozenset({"pm1"})),
                seen(*on, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "s1")]
    assert waiting(p)["db"] == "stateful nodes leave after the others: s1 still on pm1"


def test_batch_compute_leaves_once_its_scheduler_drained_it_or_with_the_operators_word(
        ) -> None:
    nodes = (node("head", "head", move=DrainMove.STATEFUL),
             node("c1", "compute", move=DrainMove.SCHEDULED),
             node("c2", "compute", move=DrainMove.SCHEDULED))
    on = (dom("head", "pm2"), dom("c1", "pm1"), dom("c2", "pm2"))
    p = planned(want(*nodes), seen(*on, ready={"head", "c1", "c2"}), 0.0)
    assert p.actions == ()
    assert waiting(p)["c1"] == (
        "a batch compute node: drained in its scheduler first, it leaves once its jobs end "
        "(or at once, its jobs killed, with `cloudd-cli drain pm1 --move-stateful`)")
    # drained in its scheduler with no job left: it goes
    p = planned(want(*nodes), replace(seen(*on, ready={"head", "c1", "c2"}),
                                      emptied=frozenset({"c1"})), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "c1")]
    # with the word, compute nodes go after the stateless ones, before the stateful
    p = planned(want(*nodes, stateful=frozenset({"pm1"})),
                seen(*on, ready={"head", "c1", "c2"}), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "c1")]


def test_a_compute_node_stopped_on_its_way_out_goes_on_without_the_scheduler_s_word(
        ) -> None:
    # its scheduler drained it, it was shut down; this pass has no word from the scheduler
    # (a slow head, a new leader's first pass): it is undefined, not started again there
    nodes = (node("c1", "compute", move=DrainMove.SCHEDULED), node("c2", "compute",
                                                                   move=DrainMove.SCHEDULED))
    on = (dom("c1", "pm1", OFF), dom("c2", "pm2"))
    p = planned(want(*nodes), seen(*on, ready={"c2"}), 0.0)
    assert [(type(a), a.node, a.host) for a in p.actions] == [(Undefine, "c1", "pm1")]


def test_an_emptied_compute_node_waits_for_the_stateless_ones_to_leave_first() -> None:
    nodes = (node("c1", "compute", move=DrainMove.SCHEDULED), node("s1", "server"),
             node("s2", "server"))
    on = (dom("c1", "pm1"), dom("s1", "pm1"), dom("s2", "pm2"))
    p = planned(want(*nodes), replace(seen(*on, ready={"c1", "s1", "s2"}),
                                      emptied=frozenset({"c1"})), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "s1")]
    assert waiting(p)["c1"] == "scheduled nodes leave after the others: s1 still on pm1"


def test_one_step_at_a_time() -> None:
    # s1 was moved and has no domain yet: lb, the sole balancer, waits for it
    on = (dom("db", "pm3"), dom("s2", "pm2"), dom("lb", "pm1"))
    p = planned(want(*WEB), seen(*on, ready={"db", "s2", "lb"}), 0.0)
    assert waiting(p)["lb"] == "one step at a time: s1 has no domain yet"
    placed = [(type(a), a.node, a.host) for a in p.actions]
    assert placed == [(Define, "s1", "pm3"), (Start, "s1", "pm3")]
    # then it runs, not ready yet
    on2 = (*on, dom("s1", "pm3"))
    p = planned(want(*WEB), seen(*on2, ready={"db", "s2", "lb"}), 0.0)
    assert waiting(p)["lb"] == "one step at a time: s1 is not ready yet"
    # ready: the sole balancer leaves at once (nothing can keep its role up)
    p = planned(want(*WEB), seen(*on2, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "lb")]


def test_a_drained_host_takes_no_new_placement_even_after_a_failure_elsewhere() -> None:
    # pm3 died and was fenced: its nodes are re-placed, never on the drained pm1
    hosts = (host("pm1", free=64000), host("pm2"),
             dataclasses.replace(host("pm3"), liveness=Liveness.DEAD, reachable=False,
                                 fenced=True))
    on = (dom("db", "pm3", OFF, "destroyed"), dom("s1", "pm2"), dom("s2", "pm2"),
          dom("lb", "pm3", OFF, "destroyed"))
    p = planned(want(*WEB), seen(*on, ready={"s1", "s2"}, hosts=hosts), 0.0)
    assert {a.host for a in p.actions} == {"pm2"}
    assert {a.node for a in p.actions if isinstance(a, Define)} == {"db", "lb"}


def test_no_host_left_the_node_stays_and_says_why() -> None:
    hosts = (host("pm1"), host("pm2", free=100))
    on = (dom("s1", "pm1"), dom("s2", "pm1"))
    p = planned(want(node("s1", "server"), node("s2", "server")),
                seen(*on, ready={"s1", "s2"}, hosts=hosts), 0.0)
    assert p.actions == ()
    assert waiting(p)["s1"] == "no other host can take it: no candidate host has 512 MiB free"


def test_a_homeless_node_says_the_drained_host_takes_nothing() -> None:
    hosts = (host("pm1"), host("pm2", free=100))
    p = planned(want(node("s1", "server")), seen(ready=set(), hosts=hosts), 0.0)
    assert waiting(p)["s1"] == ("no candidate host has 512 MiB free (drained, so taking no "
                                "node: pm1)")


def test_undrain_lets_placements_back_and_moves_nothing_back() -> None:
    hosts = (host("pm1"), host("pm2", free=100))
    # drained: s1 cannot be placed (pm2 is full with s2)
    p = planned(want(node("s1", "server"), node("s2", "server")),
                seen(dom("s2", "pm2"), ready={"s2"}, hosts=hosts), 0.0)
    assert p.actions == ()
    p = planned(want(node("s1", "server"), node("s2", "server"), drained=frozenset()),
                seen(dom("s2", "pm2"), ready={"s2"}, hosts=hosts), 0.0)
    assert [(type(a), a.host) for a in p.actions] == [(Define, "pm1"), (Start, "pm1")]
    # nodes moved away stay where they are
    p = planned(want(*WEB, drained=frozenset()), seen(*SPREAD, ready={"s1", "s2"}), 0.0)
    assert p.actions == ()


def test_a_crashed_database_on_a_drained_host_is_restarted_in_place_without_the_word() -> None:
    on = (dom("db", "pm1", OFF, "crashed"), dom("s1", "pm2"), dom("s2", "pm3"),
          dom("lb", "pm3"))
    p = planned(want(*WEB), seen(*on, ready={"s1", "s2", "lb"}), 0.0)
    assert [(type(a), a.node, a.host) for a in p.actions] == [(Start, "db", "pm1")]


def test_two_servers_on_the_drained_host_never_leave_at_once() -> None:
    both = (dom("db", "pm3"), dom("s1", "pm1"), dom("s2", "pm1"), dom("lb", "pm3"))
    p = planned(want(*WEB), seen(*both, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert p.actions == (Shutdown("s1", "pm1", "host pm1 is drained: moving s1 (replica)"),)
    assert waiting(p)["s2"] == "one step at a time: s1 is leaving drained host pm1"
    # the next pass: s1 asked to shut down, its agent still ready; s2 still waits for it
    p = planned(want(*WEB), seen(*both, ready={"db", "s1", "s2", "lb"},
                                 shutdowns={("s1", "pm1"): 0.0}), 1.0)
    assert p.actions == ()
    assert waiting(p)["s2"] == "one step at a time: s1 is leaving drained host pm1"


def test_the_sole_balancer_does_not_leave_with_a_server() -> None:
    on = (dom("db", "pm3"), dom("s1", "pm1"), dom("s2", "pm2"), dom("lb", "pm1"))
    p = planned(want(*WEB), seen(*on, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "s1")]
    assert waiting(p)["lb"] == "one step at a time: s1 is leaving drained host pm1"


@pytest.mark.parametrize("placed", [
    (("db", "pm1"), ("s1", "pm1"), ("s2", "pm2"), ("lb", "pm1")),
    (("db", "pm1"), ("s1", "pm1"), ("s2", "pm1"), ("lb", "pm1")),
])
def test_simulated_drain_empties_the_host_with_a_server_always_ready(
        placed: tuple[tuple[str, str], ...]) -> None:
    world = World([SimHost("pm1", 4096, {IMG}), SimHost("pm2", 4096, {IMG}),
                   SimHost("pm3", 4096, {IMG})], {n.name: n for n in WEB})
    for n, h in placed:
        world.add(DomainObs(h, n, "c1", RUN, "booted", term=1))
    desired = want(*WEB, stateful=frozenset({"pm1"}))
    now = 0.0
    for _ in range(60):
        obs = world.observe()
        # a node is ready from the pass after its domain runs
        ready = frozenset(d.node for d in obs.domains if d.state is RUN)
        assert ready & {"s1", "s2"}, "no server was ready"
        p = planned(desired, dataclasses.replace(obs, ready=ready), now)
        for a in p.actions:
            world.apply(a, now)
        now += 1.0
    on_pm1 = [d.node for d in world.domains.values() if d.host == "pm1"]
    assert on_pm1 == []
    moved = [a.node for a in world.log if isinstance(a, Shutdown)]
    assert moved == [n for n in ("s1", "s2", "lb", "db") if (n, "pm1") in placed]


def test_a_new_leader_finishes_a_move_it_did_not_start() -> None:
    # no shutdown of this leader's on record: the copy is down, so the move goes on
    down = (dom("db", "pm3"), dom("s1", "pm1", OFF, "destroyed"), dom("s2", "pm2"),
            dom("lb", "pm3"))
    p = planned(want(*WEB), seen(*down, ready={"db", "lb"}), 0.0)
    assert [(type(a), a.node, a.host) for a in p.actions] == [(Undefine, "s1", "pm1")]
    # still running there: the rules are checked again, and it is asked to shut down
    up = (dom("db", "pm3"), dom("s1", "pm1"), dom("s2", "pm2"), dom("lb", "pm3"))
    p = planned(want(*WEB), seen(*up, ready={"db", "s1", "s2", "lb"}), 0.0)
    assert [(type(a), a.node) for a in p.actions] == [(Shutdown, "s1")]


# ---- live migration: hosts that share storage and take migrations ------------------------


def shared(*nodes: NodeSpec, storage: dict[str, str], stateful: frozenset[str] = frozenset(),
           ) -> Desired:
    return replace(want(*nodes, stateful=stateful), storage=storage)


SAN = {"pm1": "san", "pm3": "san"}
READY = {"db", "s1", "s2", "lb"}


def test_a_server_moves_live_to_a_host_sharing_its_storage() -> None:
    p = planned(shared(*WEB, storage=SAN), seen(*SPREAD, ready=READY), 0.0)
    assert p.actions == (Migrate("s1", "pm1", "pm3", "host pm1 is drained: moving s1 "
                                 "(replica), live to pm3 (storage san is shared)"),)


def test_a_node_with_an_overlay_has_the_target_record_it_first() -> None:
    nodes = tuple(replace(n, base_image="/img/base.qcow2") if n.name == "s1" else n
                  for n in WEB)
    hosts = (host("pm1"), host("pm2"),
             HostObs("pm3", Liveness.ALIVE, True, 4096, HAS | {"/img/base.qcow2"}))
    p = planned(shared(*nodes, storage=SAN), seen(*SPREAD, ready=READY, hosts=hosts), 0.0)
    assert [(type(a), a.node, a.host) for a in p.actions] == [
        (CreateOverlay, "s1", "pm3"), (Migrate, "s1", "pm1")]


@pytest.mark.parametrize("storage", [
    {"pm1": "san"},  # nobody shares san
    {"pm1": "san", "pm3": "nas"},
    {"pm2": "san", "pm3": "san"},  # pm1 takes no part
], ids=["alone", "other storage", "not the drained host"])
def test_without_a_host_sharing_its_storage_the_node_stops_and_is_re_placed(
        storage: dict[str, str]) -> None:
    p = planned(shared(*WEB, storage=storage), seen(*SPREAD, ready=READY), 0.0)
    assert p.actions == (Shutdown("s1", "pm1", "host pm1 is drained: moving s1 (replica)"),)


def test_a_sharing_host_that_cannot_take_it_now_leaves_stop_and_re_place() -> None:
    hosts = (host("pm1"), host("pm2"), host("pm3", free=100))  # pm3 is full
    p = planned(shared(*WEB, storage=SAN), seen(*SPREAD, ready=READY, hosts=hosts), 0.0)
    assert [(type(a), a.host) for a in p.actions] == [(Shutdown, "pm1")]


def test_a_pinned_node_never_moves_live_to_a_host_without_the_storage() -> None:
    pinned = tuple(replace(n, pin="pm2") if n.name == "s1" else n for n in WEB)
    on = (dom("db", "pm3"), dom("s1", "pm1"), dom("s2", "pm2"), dom("lb", "pm3"))
    p = planned(shared(*pinned, storage=SAN), seen(*on, ready=READY), 0.0)
    assert not any(isinstance(a, Migrate) for a in p.actions)


def test_a_node_with_failures_on_record_leaves_by_stop_and_re_place() -> None:
    failed = Observed((host("pm1"), host("pm2"), host("pm3")), SPREAD,
                      ready=frozenset(READY), node_failures={"s1": FailRecord(1, 0.0, 2.0)})
    assert planned(shared(*WEB, storage=SAN), failed, 1.0).actions == ()  # backing off first
    assert [type(a) for a in planned(shared(*WEB, storage=SAN), failed, 3.0).actions] == [
        Shutdown]


def test_a_migration_under_way_holds_the_next_node_back() -> None:
    both = (dom("db", "pm3"), dom("s1", "pm1"), dom("s2", "pm1"), dom("lb", "pm3"))
    everywhere = {"pm1": "san", "pm2": "san", "pm3": "san"}
    obs = seen(*both, ready=READY)
    p = planned(shared(*WEB, storage=everywhere), obs, 0.0)
    assert [(type(a), a.node, a.target) for a in p.actions] == [(Migrate, "s1", "pm2")]
    assert waiting(p)["s2"] == "one step at a time: s1 is leaving drained host pm1"
    # the next pass, s1's migration still running (its copy still runs on pm1)
    p = planned(shared(*WEB, storage=everywhere), replace(obs, in_flight=frozenset({"s1"})), 1.0)
    assert p.actions == ()
    assert waiting(p)["s2"] == "one step at a time: s1 is leaving drained host pm1"


def test_a_node_migrating_is_on_two_hosts_and_neither_copy_is_touched() -> None:
    """During the hand-over the target holds the incoming domain, paused: a node whose
    domains the hosts report migrating is in flight (the controller's word), and no pass
    takes its two copies for duplicates, whichever leader runs it."""
    hand_over = (*SPREAD, dom("s1", "pm3", DomainState.PAUSED, "migration"))
    obs = seen(*hand_over, ready=READY)
    assert [type(a) for a in planned(want(*WEB), obs, 0.0).actions] == [Destroy]
    assert planned(want(*WEB), replace(obs, in_flight=frozenset({"s1"})), 0.0).actions == ()


def test_a_stateful_node_moves_live_with_the_operators_word_only() -> None:
    on = (dom("db", "pm1"), dom("s1", "pm2"), dom("s2", "pm3"), dom("lb", "pm3"))
    everywhere = {"pm1": "san", "pm2": "san", "pm3": "san"}
    obs = seen(*on, ready=READY)
    assert planned(shared(*WEB, storage=everywhere), obs, 0.0).actions == ()
    p = planned(shared(*WEB, storage=everywhere, stateful=frozenset({"pm1"})), obs, 0.0)
    assert [(type(a), a.node, a.target) for a in p.actions] == [(Migrate, "db", "pm2")]


def test_simulated_live_drain_empties_the_host_and_no_guest_ever_stops() -> None:
    world = World([SimHost("pm1", 4096, {IMG}, storage="san"),
                   SimHost("pm2", 4096, {IMG}, storage="san"),
                   SimHost("pm3", 4096, {IMG})], {n.name: n for n in WEB})
    for n in ("db", "s1", "s2", "lb"):
        world.add(DomainObs("pm1", n, "c1", RUN, "booted", term=1))
    desired = shared(*WEB, storage={"pm1": "san", "pm2": "san"}, stateful=frozenset({"pm1"}))
    for now in range(20):
        obs = world.observe()
        p = planned(desired, replace(obs, ready=frozenset(READY)), now)
        assert len(p.actions) <= 1, p.actions  # one step at a time
        for a in p.actions:
            world.apply(a, now)
    assert sorted((d.node, d.host) for d in world.domains.values()) == [
        ("db", "pm2"), ("lb", "pm2"), ("s1", "pm2"), ("s2", "pm2")]
    assert {type(a) for a in world.log} == {Migrate}
    assert [a.node for a in world.log] == ["s1", "s2", "lb", "db"]

"""How each role leaves a drained host, and the drains as the planner gets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.daemon.leader.desired import desired_of
from cloudd.daemon.leader.drain import BatchMoves, Drains, batch_moves, move_of
from cloudd.daemon.network.catalogue import Drain
from cloudd.providers.base import NodeUse
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.plan import DrainMove

from ..member.fakes import DB, shop


@pytest.mark.parametrize(("cloud_type", "roles", "move"), [
    ("web", ("database",), DrainMove.STATEFUL),
    ("web", ("server",), DrainMove.REPLICA),
    ("web", ("balancer",), DrainMove.REPLICA),
    ("slurm", ("compute",), DrainMove.SCHEDULED),
    ("torque", ("head",), DrainMove.STATEFUL),
    ("appscale", ("compute", "zookeeper"), DrainMove.STATEFUL),  # the most careful role wins
    ("appscale", ("load_balancer",), DrainMove.REPLICA),
    ("web", (), DrainMove.REPLICA),
])
def test_each_role_leaves_its_way(cloud_type: str, roles: tuple[str, ...],
                                  move: DrainMove) -> None:
    assert move_of(cloud_type, roles) is move


def test_the_planner_gets_the_drained_hosts_of_the_pool_and_each_nodes_way(
        tmp_path: Path) -> None:
    cloud = shop(tmp_path)
    pool = sorted(h.name for h in cloud.pool)
    drains = Drains((Drain(pool[0], move_stateful=True), Drain("gone-host")))
    desired = desired_of(cloud, drains=drains)
    assert desired.drained == {pool[0]} and desired.move_stateful == {pool[0]}
    moves = {n.name: n.move for n in desired.nodes}
    assert moves[DB] is DrainMove.STATEFUL
    assert {m for n, m in moves.items() if n != DB} == {DrainMove.REPLICA}
    assert desired_of(cloud).drained == frozenset()


def test_each_type_declares_its_roles_ways() -> None:
    """The way a role leaves is its type's word, in the catalog: a role no spec marks is a
    replica, and a type the catalog does not know has replicas only."""
    declared = {(t, r.name): r.move for t, spec in CATALOG.items() for r in spec.roles
                if r.move is not DrainMove.REPLICA}
    assert declared == {
        ("web", "database"): DrainMove.STATEFUL,
        ("torque", "head"): DrainMove.STATEFUL, ("torque", "compute"): DrainMove.SCHEDULED,
        ("slurm", "head"): DrainMove.STATEFUL, ("slurm", "compute"): DrainMove.SCHEDULED,
        ("appscale", "master"): DrainMove.STATEFUL,
        ("appscale", "database"): DrainMove.STATEFUL,
        ("appscale", "zookeeper"): DrainMove.STATEFUL}
    assert move_of("nope", ("database",)) is DrainMove.REPLICA


IDLE, BUSY = NodeUse(ready=True), NodeUse(ready=True, busy=True)
MOVING, MOVING_BUSY = NodeUse(moving=True), NodeUse(busy=True, moving=True)
ON_PM1 = Drains((Drain("pm1"),))


def moves(use: dict[str, NodeUse], *, where: dict[str, str] | None = None,
          drains: Drains = ON_PM1, ready: frozenset[str] = frozenset()) -> BatchMoves:
    return batch_moves(use, where=where or dict.fromkeys(use, "pm1"), drains=drains, use=use,
                       ready=ready)


def test_a_batch_node_on_a_drained_host_is_drained_in_its_scheduler_then_emptied() -> None:
    assert moves({"c1": IDLE, "c2": BUSY}) == BatchMoves(release=("c1", "c2"))
    # drained, its job still running: it waits; once done, the planner may move it
    assert moves({"c1": MOVING, "c2": MOVING_BUSY}) == BatchMoves(emptied=frozenset({"c1"}))


def test_a_node_taking_no_job_anyway_moves_once_none_runs_there() -> None:
    down, operators = NodeUse(), NodeUse(busy=True)  # down; an operator's drain, a job on it
    assert moves({"c1": down, "c2": operators}) == BatchMoves(emptied=frozenset({"c1"}))


def test_an_elastic_node_leaving_goes_its_own_way() -> None:
    assert moves({"c1": NodeUse(released=True)}) == BatchMoves()


def test_a_moved_node_takes_jobs_again_once_ready_on_another_host() -> None:
    # moved to pm2, not ready yet: nothing; ready: its drain is undone
    assert moves({"c1": MOVING}, where={"c1": "pm2"}) == BatchMoves()
    assert moves({"c1": MOVING}, where={"c1": "pm2"}, ready=frozenset({"c1"})) == BatchMoves(
        keep=("c1",))
    # its host undrained before it moved: the same
    assert moves({"c1": MOVING}, drains=Drains(), ready=frozenset({"c1"})) == BatchMoves(
        keep=("c1",))


def test_the_operators_word_moves_at_once_and_nothing_is_asked_of_the_scheduler() -> None:
    word = Drains((Drain("pm1", move_stateful=True),))
    assert moves({"c1": BUSY}, drains=word) == BatchMoves()
    # a node still there and drained by an earlier pass is not resumed until it has moved
    assert moves({"c1": MOVING}, drains=word, ready=frozenset({"c1"})) == BatchMoves()


def test_a_node_with_no_domain_or_unknown_to_its_scheduler_is_left_alone() -> None:
    assert batch_moves(["c1", "c2"], where={"c1": "pm1"}, drains=ON_PM1,
                       use={"c2": IDLE}, ready=frozenset()) == BatchMoves()

"""How each role leaves a drained host, and the drains as the planner gets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.daemon.leader.desired import desired_of
from cloudd.daemon.leader.drain import MOVES, Drains, move_of
from cloudd.daemon.network.catalogue import Drain
from cloudd.providers.registry import default_registry
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


def test_every_role_the_table_names_is_a_role_of_its_type() -> None:
    """A misspelt role in `MOVES` would leave a database movable as a replica, silently."""
    registry = default_registry()
    for cloud_type, role in MOVES:
        assert role in registry.get(cloud_type).roles, (cloud_type, role)

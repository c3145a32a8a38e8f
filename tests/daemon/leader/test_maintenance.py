"""The operator's maintenance holds, as the record holds them, and what the planner sees (their
durability and refusals are the record's: tests/daemon/member/test_record.py)."""

from __future__ import annotations

from pathlib import Path

from cloudd.config.manifest import load_cloud
from cloudd.daemon.leader.desired import desired_of
from cloudd.daemon.leader.maintenance import Maintenance, view
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl import plan

from .test_assignment import DB, MANIFEST


def test_the_holds_are_read_from_the_record() -> None:
    m = Maintenance.of(["", DB])
    assert m.held == {DB, None} and m.whole_cloud
    assert m.view() == ["(cloud)", DB]
    assert not Maintenance.of([DB]).whole_cloud
    assert Maintenance().held == frozenset()


def test_view_names_the_whole_cloud() -> None:
    assert view([None, "b", "a"]) == ["(cloud)", "a", "b"]


def test_a_held_node_is_planned_as_manual(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    free = {n.name: n.run for n in desired_of(cloud).nodes}
    held = {n.name: n.run for n in desired_of(cloud, held={DB, None}).nodes}
    assert set(free.values()) == {plan.RunStrategy.ALWAYS}
    assert held == {**free, DB: plan.RunStrategy.MANUAL}
    assert {n.name for n in desired_of(cloud, held={DB, None}).nodes if n.held} == {DB}
    assert not any(n.held for n in desired_of(cloud).nodes)

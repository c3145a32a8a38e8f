"""The operator's maintenance holds: durable across restarts, and what the planner sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudd.config.manifest import load_cloud
from cloudd.daemon.leader.desired import desired_of
from cloudd.daemon.leader.maintenance import FILE, Maintenance, view
from cloudd.errors import PermanentError
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl import plan

from .test_assignment import DB, MANIFEST, WEB1


def test_holds_survive_a_restart_and_read_well(tmp_path: Path) -> None:
    m = Maintenance(tmp_path / "clouds" / "shop", cloud="shop")
    assert m.held == frozenset() and not m.whole_cloud
    m.set(DB, on=True, nodes=[DB, WEB1])
    m.set(None, on=True, nodes=[DB, WEB1])
    again = Maintenance(tmp_path / "clouds" / "shop", cloud="shop")
    assert again.held == {DB, None} and again.whole_cloud
    assert again.view() == ["(cloud)", DB]
    assert json.loads((tmp_path / "clouds" / "shop" / FILE).read_text()) == ["", DB]
    again.set(None, on=False, nodes=[DB, WEB1])
    assert Maintenance(tmp_path / "clouds" / "shop", cloud="shop").held == {DB}


def test_an_unknown_node_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    m = Maintenance(tmp_path, cloud="shop")
    with pytest.raises(PermanentError, match="unknown node 'nope' in cloud shop"):
        m.set("nope", on=True, nodes=[DB])
    assert not (tmp_path / FILE).exists()


@pytest.mark.parametrize("content", ["not json", '{"a": 1}', "[1, 2]"])
def test_a_damaged_file_holds_nothing(tmp_path: Path, content: str) -> None:
    (tmp_path / FILE).write_text(content)
    assert Maintenance(tmp_path, cloud="shop").held == frozenset()


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

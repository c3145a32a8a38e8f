"""`timing.unreachable_reset_after`: how long a running node's agent may stay unreachable
before the leader resets its domain; a default well past a first boot, refused when nonsense,
and carried to the planner and to the pool hosts' texts (not the nodes')."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from shared.manifests import SHOP

from cloudd.config.manifest import load_cloud, load_cloud_text
from cloudd.config.model import MONITOR_INTERVAL, UNREACHABLE_RESET_AFTER
from cloudd.config.portable import Recipient, text_for
from cloudd.daemon.leader.desired import desired_of
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG


def write(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "web.xml").write_text("<domain/>")
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP + extra)
    return path


def test_the_default_is_fifteen_minutes_and_reaches_the_planner(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path), CATALOG)
    assert cloud.unreachable_reset_after == UNREACHABLE_RESET_AFTER == 900.0
    assert desired_of(cloud).unreachable_reset_after == 900.0


def test_a_bound_written_is_taken_and_travels_with_the_text(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path, "timing: {unreachable_reset_after: 45}\n"), CATALOG)
    assert cloud.unreachable_reset_after == 45.0
    assert desired_of(cloud, held={None}).unreachable_reset_after == 45.0
    host = text_for(cloud, Recipient.HOST)
    assert yaml.safe_load(host)["timing"] == {"unreachable_reset_after": 45}
    assert load_cloud_text(host, CATALOG).unreachable_reset_after == 45.0
    # a node never leads: its view leaves the leader's bounds out (and so a node image that
    # predates the field still takes the text)
    assert "timing" not in yaml.safe_load(text_for(cloud, Recipient.NODE))


@pytest.mark.parametrize(("extra", "words"), [
    ("timing: {unreachable_reset_after: 5}\n", "greater than or equal to 10"),
    ("timing: {unreachable_reset_after: soon}\n", "unreachable_reset_after"),
    ("timing: {reset_after: 60}\n", "reset_after"),
])
def test_nonsense_is_refused_in_place(tmp_path: Path, extra: str, words: str) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1 and words in problems[0], problems
    assert "timing" in problems[0]


def test_the_providers_checks_run_every_thirty_seconds_unless_written(tmp_path: Path) -> None:
    assert load_cloud(write(tmp_path), CATALOG).monitor_interval == MONITOR_INTERVAL == 30.0
    cloud = load_cloud(write(tmp_path, "timing: {monitor_interval: 5}\n"), CATALOG)
    assert cloud.monitor_interval == 5.0
    assert load_cloud_text(text_for(cloud, Recipient.HOST), CATALOG).monitor_interval == 5.0


@pytest.mark.parametrize(("extra", "words"), [
    ("timing: {monitor_interval: 0.5}\n", "greater than or equal to 1"),
    ("timing: {monitor_interval: 7200}\n", "less than or equal to 3600"),
])
def test_a_monitor_interval_out_of_bounds_is_refused(tmp_path: Path, extra: str,
                                                     words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cloud(write(tmp_path, extra), CATALOG)
    [problem] = [str(p) for p in info.value.problems]
    assert words in problem and "monitor_interval" in problem

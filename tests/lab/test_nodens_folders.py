"""`open_to_others`: who besides root could put something where a daemon's file goes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cloudd_lab.nodens import open_to_others

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners other than root need root")


def _folder(tmp_path: Path) -> Path:
    # pytest's folders are root's 0700 below /tmp (1777, sticky): nothing open above them.
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    assert open_to_others(tmp_path) == []
    return base


def test_a_folder_of_root_s_under_root_s_folders_is_closed(tmp_path: Path) -> None:
    run = _folder(tmp_path) / "run"
    run.mkdir(mode=0o755)
    assert open_to_others(run) == []


def test_a_folder_others_may_write_is_open_even_sticky(tmp_path: Path) -> None:
    run = _folder(tmp_path) / "run"
    run.mkdir()
    run.chmod(0o1777)
    assert open_to_others(run) == [f"{run} uid=0 1777"]
    run.chmod(0o775)
    assert open_to_others(run) == [f"{run} uid=0 775"]


def test_a_folder_above_that_is_not_root_s_or_open_without_the_sticky_bit(
        tmp_path: Path) -> None:
    base = _folder(tmp_path)
    run = base / "run"
    run.mkdir(mode=0o755)
    base.chmod(0o1777)  # sticky: only root may rename root's run
    assert open_to_others(run) == []
    base.chmod(0o777)
    assert open_to_others(run) == [f"{base} uid=0 777"]
    base.chmod(0o755)
    os.chown(base, 65534, 65534)
    assert open_to_others(run) == [f"{base} uid=65534 755"]

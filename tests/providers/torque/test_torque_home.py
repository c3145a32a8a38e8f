"""A node's PBS_HOME seeded from TORQUE's pristine one, keeping what is already there."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.errors import PermanentError
from cloudd.providers.torque.programs import seed_home


def _template(tmp_path: Path) -> Path:
    t = tmp_path / "spool"
    (t / "server_priv" / "jobs").mkdir(parents=True)
    (t / "server_priv").chmod(0o750)
    (t / "spool").mkdir()
    (t / "spool").chmod(0o1777)
    (t / "server_name").write_text("localhost\n")
    (t / "server_priv" / "nodes").write_text("")
    return t


def test_seeding_copies_what_is_missing_with_its_mode(tmp_path: Path) -> None:
    template, home = _template(tmp_path), tmp_path / "home"
    home.mkdir()
    (home / "server_name").write_text("hpc-head\n")
    assert seed_home(template, home) == 4
    assert (home / "server_name").read_text() == "hpc-head\n"  # cloudd's, kept
    assert (home / "server_priv" / "nodes").exists()
    assert (home / "server_priv").stat().st_mode & 0o7777 == 0o750
    assert (home / "spool").stat().st_mode & 0o7777 == 0o1777
    assert seed_home(template, home) == 0  # done once


def test_a_link_where_a_folder_goes_is_refused(tmp_path: Path) -> None:
    template, home = _template(tmp_path), tmp_path / "home"
    home.mkdir()
    (home / "server_priv").symlink_to("/etc")
    with pytest.raises(PermanentError, match="a symbolic link stands where TORQUE's folder"):
        seed_home(template, home)

"""The one durable write, and the term file the election and the host agent share."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cloudd.durable import TermFile, replace_durable, write_durable
from cloudd.errors import PermanentError


def test_durable_write_replaces_privately_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state" / "term"
    write_durable(target, "1\n")
    write_durable(target, b"2\n")
    assert target.read_text() == "2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert os.listdir(target.parent) == ["term"]


def test_durable_write_keeps_the_old_content_when_the_write_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "term"
    write_durable(target, "1\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        write_durable(target, "2\n")
    assert target.read_text() == "1\n"
    assert os.listdir(tmp_path) == ["term"]


def test_durable_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "file"
    write_durable(target, "new")
    assert victim.read_text() == "untouched"
    assert target.read_text() == "new"


def test_durable_write_sets_owner_and_mode_before_the_content(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_durable(target, "s3cret", mode=0o640, owner=(os.getuid(), os.getgid()))
    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (
        0o640, os.getuid(), os.getgid())


def test_replace_durable_puts_a_finished_file_in_place(tmp_path: Path) -> None:
    (tmp_path / "image").write_text("old")
    tmp = tmp_path / ".image.part"
    tmp.write_text("new")
    replace_durable(tmp, tmp_path / "image")
    assert (tmp_path / "image").read_text() == "new"
    assert os.listdir(tmp_path) == ["image"]


def test_term_file_round_trip_keeps_the_format(tmp_path: Path) -> None:
    terms = TermFile(tmp_path / "state" / "term")
    assert terms.load() == 0  # a new agent
    terms.save(12)
    assert (tmp_path / "state" / "term").read_text() == "12\n"
    assert stat.S_IMODE((tmp_path / "state" / "term").stat().st_mode) == 0o600
    assert TermFile(tmp_path / "state" / "term").load() == 12


@pytest.mark.parametrize(("text", "why"), [
    ("twelve\n", "not a term number: 'twelve'"),
    ("", "not a term number: ''"),
    ("-3\n", "negative term -3"),
])
def test_term_file_refuses_what_is_not_a_term(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "term").write_text(text)
    with pytest.raises(PermanentError, match=why):
        TermFile(tmp_path / "term").load()

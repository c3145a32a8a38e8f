"""The one durable write, and the term file the election and the host agent share."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog

from cloudd.durable import (
    CorruptStateFile,
    StoredTerm,
    TermFile,
    private_dir,
    replace_durable,
    set_aside,
    write_durable,
)
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
    target.symlink_to(victim)
    write_durable(target, "new")
    assert victim.read_text() == "untouched"
    assert not target.is_symlink() and target.read_text() == "new"


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


@pytest.mark.parametrize(("content", "stored"), [
    (b"12\n", StoredTerm(12)),
    (b" 7 ", StoredTerm(7)),
    (b"unproven 5\n", StoredTerm(5, proven=False)),
    (b"unproven 0\n", StoredTerm(0, proven=False)),
    (b"", None),
    (b"\n\n", None),
    (b"1 2\n", None),
    (b"unproven\n", None),
    (b"unproven -1\n", None),
    (b"proven 5\n", None),
    (b"\x00\x00\x07", None),
    (b"\xff\xfe12", None),
])
def test_what_a_term_file_says(tmp_path: Path, content: bytes, stored: StoredTerm | None) -> None:
    path = tmp_path / "term"
    path.write_bytes(content)
    if stored is None:
        with pytest.raises(CorruptStateFile):
            TermFile(path).read()
    else:
        assert TermFile(path).read() == stored


def test_load_refuses_a_term_still_to_be_relearned(tmp_path: Path) -> None:
    (tmp_path / "term").write_text("unproven 5\n")
    with pytest.raises(CorruptStateFile, match="not relearned yet"):
        TermFile(tmp_path / "term").load()


def test_recover_sets_a_corrupt_term_file_aside_and_marks_the_loss(tmp_path: Path) -> None:
    path = tmp_path / "term"
    path.write_text("garbage")
    with structlog.testing.capture_logs() as logs:
        assert TermFile(path).recover() == StoredTerm(0, proven=False)
    ((event),) = [e for e in logs if e["event"] == "state_file_set_aside"]
    moved = Path(event["moved_to"])
    assert event["path"] == str(path) and "not a term number: 'garbage'" in event["reason"]
    assert moved.name.startswith("term.corrupt-") and moved.read_text() == "garbage"
    assert path.read_text() == "unproven 0\n"  # a restart still knows the term was lost
    assert TermFile(path).recover() == StoredTerm(0, proven=False)
    assert len(list(tmp_path.glob("term.corrupt-*"))) == 1
    TermFile(path).save(9, proven=False)
    assert path.read_text() == "unproven 9\n"
    TermFile(path).save(9)
    assert TermFile(path).recover() == StoredTerm(9)


def test_recover_on_a_full_disk_leaves_the_corrupt_file_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "term"
    path.write_text("garbage")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with structlog.testing.capture_logs() as logs:
        assert TermFile(path).recover() == StoredTerm(0, proven=False)
    (event,) = [e for e in logs if e["event"] == "state_file_set_aside"]
    assert event["moved_to"] is None and "No space left" in event["reason"]
    assert os.listdir(tmp_path) == ["term"] and path.read_text() == "garbage"


def test_set_aside_moves_a_database_with_its_companions(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    for name, text in (("events.sqlite3", "db"), ("events.sqlite3-wal", "wal"),
                       ("events.sqlite3-shm", "shm")):
        (tmp_path / name).write_text(text)
    moved = set_aside(db, reason="not a database")
    assert moved is not None and sorted(os.listdir(tmp_path)) == sorted(
        [moved.name, f"{moved.name}-wal", f"{moved.name}-shm"])
    assert (tmp_path / f"{moved.name}-wal").read_text() == "wal"
    assert set_aside(db, reason="gone meanwhile") is None


def test_private_dir_makes_and_tightens(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "clouds"
    private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    os.chmod(folder, 0o755)
    private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    private_dir(folder.parent, mode=0o711)
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o711

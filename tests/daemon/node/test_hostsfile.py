"""cloudd's block of a node's /etc/hosts: one line per node, rewritten only when it differs,
the rest of the file left as it was."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from cloudd.daemon.node import hostsfile
from cloudd.daemon.node.hostsfile import rewritten, write_hosts
from cloudd.errors import PermanentError

DEBIAN = "127.0.0.1\tlocalhost\n127.0.1.1\thead\n\n::1\tlocalhost ip6-localhost\n"
NODES = [("head", "10.0.0.1"), ("compute-2", "10.0.0.3"), ("compute-1", "10.0.0.2")]
BLOCK = ("# BEGIN cloudd batch\n10.0.0.2\tcompute-1\n10.0.0.3\tcompute-2\n10.0.0.1\thead\n"
         "# END cloudd batch\n")


@pytest.mark.parametrize(("before", "after"), [
    # no block yet: at the top, the rest as it was
    (DEBIAN, BLOCK + DEBIAN),
    ("", BLOCK),
    # a block already: replaced where it stands
    ("127.0.0.1 localhost\n# BEGIN cloudd batch\n10.9.9.9\told\n# END cloudd batch\n"
     "# mine\n", "127.0.0.1 localhost\n" + BLOCK + "# mine\n"),
    # another cloud's block is another cloud's
    ("# BEGIN cloudd other\n10.1.1.1\tx\n# END cloudd other\n",
     BLOCK + "# BEGIN cloudd other\n10.1.1.1\tx\n# END cloudd other\n"),
    # a last line without its newline gets one
    ("127.0.0.1 localhost", BLOCK + "127.0.0.1 localhost\n"),
])
def test_the_block_names_every_node_and_nothing_else_moves(before: str, after: str) -> None:
    assert rewritten(before, "batch", NODES).text == after


def test_an_unchanged_block_is_not_written_again() -> None:
    assert rewritten(BLOCK + DEBIAN, "batch", list(reversed(NODES))).text is None


def test_a_node_gone_leaves_the_block() -> None:
    got = rewritten(BLOCK, "batch", NODES[:2]).text
    assert got is not None and "compute-1" not in got and got.count("\n") == 4


@pytest.mark.parametrize("damaged", [
    "# BEGIN cloudd batch\n10.0.0.1 head\n",
    "10.0.0.1 head\n# END cloudd batch\n",
    "# END cloudd batch\n# BEGIN cloudd batch\n",
    BLOCK + BLOCK,
])
def test_damaged_markers_are_refused_and_nothing_is_guessed(damaged: str) -> None:
    with pytest.raises(PermanentError, match=(
            r"^the hosts file's lines '# BEGIN cloudd batch' and '# END cloudd batch' are not "
            r"one pair in that order: mend them by hand")):
        rewritten(damaged, "batch", NODES)


@pytest.mark.parametrize(("entries", "why"), [
    ([("head\n# END cloudd batch\n10.6.6.6 evil", "10.0.0.1")],
     "node name 'head\\n# END cloudd batch\\n10.6.6.6 evil' is not a host name"),
    ([("head\n", "10.0.0.1")], "node name 'head\\n' is not a host name"),
    ([("head evil", "10.0.0.1")], "node name 'head evil' is not a host name"),
    ([("#head", "10.0.0.1")], "node name '#head' is not a host name"),
    ([("head", "10.0.0.1 evil")], "node head's address '10.0.0.1 evil' is not an IP address"),
])
def test_an_entry_that_could_add_a_line_is_refused(entries: list[tuple[str, str]],
                                                   why: str) -> None:
    with pytest.raises(PermanentError) as caught:
        rewritten(DEBIAN, "batch", [*NODES, *entries])
    assert str(caught.value).startswith(why)


def test_a_line_outside_the_block_that_names_a_node_elsewhere_is_reported() -> None:
    got = rewritten(DEBIAN + "10.0.0.2 compute-1 # the same address\n", "batch", NODES)
    assert got.shadowed == ("127.0.1.1\thead",)


def test_the_file_keeps_its_mode_and_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "hosts"
    path.parent.mkdir()
    path.write_text(DEBIAN)
    path.chmod(0o640)
    inode = path.stat().st_ino
    assert write_hosts(path, "batch", NODES).text == BLOCK + DEBIAN
    assert path.read_text() == BLOCK + DEBIAN
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_ino != inode
    before = path.stat().st_ino
    assert write_hosts(path, "batch", NODES).text is None  # nothing to do: not touched
    assert path.stat().st_ino == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["hosts"]  # no temporary left


def test_a_missing_file_is_made_readable_by_all(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "hosts"
    write_hosts(path, "batch", NODES)
    assert path.read_text() == BLOCK and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_mount_point_is_rewritten_in_place(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A bind-mounted hosts file cannot be renamed over (EBUSY): its inode is written."""
    path = tmp_path / "hosts"
    many = "".join(f"10.0.1.{i}\tgone-{i}\n" for i in range(50))
    path.write_text(f"# BEGIN cloudd batch\n{many}# END cloudd batch\n{DEBIAN}")

    def busy(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(hostsfile, "write_durable", busy)
    inode = path.stat().st_ino
    write_hosts(path, "batch", NODES)
    assert path.stat().st_ino == inode
    assert path.read_text() == BLOCK + DEBIAN  # shorter than it was: the rest cut off

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(hostsfile, "write_durable", refused)
    with pytest.raises(OSError, match="Read-only file system"):
        write_hosts(path, "batch", NODES[:1])

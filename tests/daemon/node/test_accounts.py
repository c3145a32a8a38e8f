"""The manifest's users on a node: what the node runs, given its passwd and group files, or
the one sentence that says why it runs nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cloudd import log
from cloudd.config.users import User
from cloudd.daemon.node.users import accounts, ensure_users, plan, rooted
from cloudd.errors import PermanentError

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "munge:x:106:112::/nonexistent:/usr/sbin/nologin\n"
          "carol:x:1003:1003::/home/carol:/bin/bash\n"
          "+::::::\n")
GROUP = "root:x:0:\nusers:x:100:carol\nvideo:x:44:\ncarol:x:1003:\nhpc:x:3000:\n"

ALICE = User("alice", 1001, 1001)
CAROL = User("carol", 1003, 1003)


def test_the_files_are_read_as_accounts() -> None:
    people = accounts(PASSWD, groups=False)
    assert sorted(people) == ["carol", "munge", "root"]  # the NIS line is no account
    assert (people["carol"].id, people["carol"].gid) == (1003, 1003)
    assert accounts(GROUP, groups=True)["users"].members == ("carol",)


@pytest.mark.parametrize(("users", "commands"), [
    # missing: its own group, then the user with its home
    ((ALICE,), [("groupadd", "-g", "1001", "alice"),
                ("useradd", "-u", "1001", "-g", "alice", "-m", "-s", "/bin/bash", "alice")]),
    # its primary group exists (any name): only the user, with its groups; a group is named
    # (shadow's tools with --prefix look a number up in this machine's groups)
    ((User("dave", 1004, 3000, ("users", "video")),),
     [("useradd", "-u", "1004", "-g", "hpc", "-G", "users,video", "-m", "-s", "/bin/bash",
       "dave")]),
    # two users sharing a primary group made for the first
    ((User("erin", 1005, 4000), User("fred", 1006, 4000)),
     [("groupadd", "-g", "4000", "erin"),
      ("useradd", "-u", "1005", "-g", "erin", "-m", "-s", "/bin/bash", "erin"),
      ("useradd", "-u", "1006", "-g", "erin", "-m", "-s", "/bin/bash", "fred")]),
    # there already, as the manifest says: nothing
    ((CAROL,), []),
    ((User("carol", 1003, 1003, ("users",)),), []),
    # there with its uid: groups added (never taken away), the primary group set
    ((User("carol", 1003, 1003, ("users", "video")),),
     [("usermod", "-a", "-G", "video", "carol")]),
    ((User("carol", 1003, 3000),), [("usermod", "-g", "hpc", "carol")]),
    ((User("carol", 1003, 3000, ("video",)),),
     [("usermod", "-g", "hpc", "-a", "-G", "video", "carol")]),
    ((), []),
])
def test_what_a_node_runs(users: tuple[User, ...], commands: list[tuple[str, ...]]) -> None:
    got = plan(users, passwd=PASSWD, group=GROUP)
    assert got.refusal is None
    assert list(got.commands) == commands
    assert len(got.what) == len(got.commands)


@pytest.mark.parametrize(("users", "refusal"), [
    ((User("carol", 1010, 1010),),
     "user carol exists on this node with uid 1003, and the manifest gives it uid 1010: "
     "cloudd does not take over an account it did not make"),
    ((User("munge", 1011, 1011),), "user munge exists on this node with uid 106"),
    ((User("zoe", 1003, 1003),),
     "uid 1003 is user carol's on this node, and the manifest gives it to zoe"),
    ((User("hpc", 1012, 1012),),
     "group hpc exists on this node with gid 3000, and user hpc's primary group is gid 1012"),
    ((User("alice", 1001, 1001, ("wheel",)),),
     "user alice's group wheel does not exist on this node (cloudd adds users to groups, it "
     "makes none but their primary ones)"),
    # a list no manifest could hold (a leader's bug, or not a leader): checked again
    ((User("root", 0, 0),), "the leader's users: user root's id 0 is outside 1000 to 59999"),
    # a good user before a bad one: nothing runs at all
    ((ALICE, User("carol", 1010, 1010)), "user carol exists on this node with uid 1003"),
])
def test_what_a_node_refuses(users: tuple[User, ...], refusal: str) -> None:
    got = plan(users, passwd=PASSWD, group=GROUP)
    assert got.commands == () and got.refusal is not None
    assert got.refusal.startswith(refusal)


def test_commands_for_another_root_say_so() -> None:
    command = ("useradd", "-u", "1001", "alice")
    assert rooted(command, Path("/")) == command
    assert rooted(command, Path("/srv/n1")) == ("useradd", "--prefix", "/srv/n1", "-u", "1001",
                                                "alice")


RECORDER = """\
import sys
from pathlib import Path
argv = sys.argv[1:]
with open(Path(__file__).with_name("ran"), "a") as f:
    f.write(" ".join(argv) + "\\n")
if argv[0] == "useradd" and "bad" in argv:
    print("useradd: something went wrong\\nuseradd: cannot lock /etc/passwd")
    sys.exit(10)
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    (tmp_path / "record.py").write_text(RECORDER)
    return tmp_path


async def test_the_commands_run_with_the_exec_prefix_and_the_root(root: Path) -> None:
    prefix = (sys.executable, str(root / "record.py"))
    with capture_logs() as logs:
        done = await ensure_users((ALICE, CAROL), root=root, exec_prefix=prefix,
                                  logger=log.get("test"))
    assert done == ("group alice made with gid 1001", "user alice made with uid 1001")
    assert (root / "ran").read_text().splitlines() == [
        f"groupadd --prefix {root} -g 1001 alice",
        f"useradd --prefix {root} -u 1001 -g alice -m -s /bin/bash alice"]
    assert [e["reason"] for e in logs if e["event"] == "user_changed"] == list(done)


async def test_a_failed_command_is_one_sentence_and_a_refusal_runs_nothing(root: Path) -> None:
    prefix = (sys.executable, str(root / "record.py"))
    with pytest.raises(PermanentError, match=(
            r"^useradd failed \(10\) making the manifest's users: useradd: cannot lock "
            r"/etc/passwd$")):
        await ensure_users((User("bad", 1020, 3000),), root=root, exec_prefix=prefix)
    (root / "ran").unlink()
    with pytest.raises(PermanentError, match="uid 1003 is user carol's"):
        await ensure_users((User("zoe", 1003, 1003),), root=root, exec_prefix=prefix)
    assert not (root / "ran").exists()
    assert await ensure_users((), root=root, exec_prefix=prefix) == ()

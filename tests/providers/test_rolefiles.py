"""Files in role folders: root never follows a link that someone other than root could plant.

"Someone else's folder" is made here by handing a folder to another uid (or opening it to
everyone, as /tmp is): the kernel checks no more than that, so a link root plants there for
the test is the same as one a role's user plants.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog

from cloudd import durable
from cloudd.providers import rolefiles
from cloudd.providers.base import DirSpec, FileSpec, Rendered, apply_rendered
from cloudd.providers.rolefiles import Kind, RoleFileRefused

OTHER = 65534  # nobody: a role's user, as far as the kernel is concerned

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="hands folders to another user")


def _st(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(("uid", "mode", "trusted"), [
    (0, 0o755, True),
    (0, 0o700, True),
    (0, 0o750, True),  # group may read and enter, not add or rename
    (0, 0o775, False),
    (0, 0o757, False),
    (0, 0o1777, False),  # /tmp: the sticky bit stops renames, not new links
    (OTHER, 0o755, False),
    (OTHER, 0o700, False),
])
def test_a_folder_is_trusted_when_only_root_can_change_its_entries(uid: int, mode: int,
                                                                   trusted: bool) -> None:
    assert rolefiles.trusted(_st(uid, mode)) is trusted


def _role_folder(path: Path) -> Path:
    """A folder that belongs to a role's user."""
    path.mkdir(mode=0o755)
    os.chown(path, OTHER, OTHER)
    return path


def _victim(tmp_path: Path) -> Path:
    """A root-only file a role's user would like root to write, as /etc/shadow."""
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    return victim


def test_a_link_in_a_trusted_folder_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    with rolefiles.folder(tmp_path / "via") as fd:
        assert os.fstat(fd).st_ino == (tmp_path / "real").stat().st_ino


def test_a_link_below_a_role_folder_is_refused_where_a_folder_is_expected(
        tmp_path: Path) -> None:
    role = _role_folder(tmp_path / "role")
    (tmp_path / "etc").mkdir(mode=0o755)
    (role / "sub").symlink_to(tmp_path / "etc")
    with pytest.raises(RoleFileRefused) as refused, rolefiles.folder(role / "sub"):
        pass
    assert str(refused.value) == (f"{role}/sub is a symbolic link where a folder is expected, "
                                  "one someone other than root could have made: refused, not "
                                  "followed")
    with pytest.raises(RoleFileRefused, match="where a folder is expected"):
        rolefiles.ensure_folder(role / "sub", mode=0o750, owner=(OTHER, OTHER))
    st = (tmp_path / "etc").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)  # not chowned through
    with pytest.raises(RoleFileRefused, match=r"/role/sub is a symbolic link"):
        apply_rendered(Rendered(files=(FileSpec(role / "sub" / "passwd", "x\n"),)))
    assert list((tmp_path / "etc").iterdir()) == []


def test_a_users_link_stays_refused_once_its_folder_is_roots(tmp_path: Path) -> None:
    """An upgrade hands a folder back to root (a node's log/ was mysql's): a link the user
    made in it before is still the user's, and still not followed."""
    (tmp_path / "etc").mkdir(mode=0o755)
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    (logs / "mariadb").symlink_to(tmp_path / "etc")
    os.lchown(logs / "mariadb", OTHER, OTHER)  # made by the user while log/ was theirs
    with pytest.raises(RoleFileRefused, match=r"/log/mariadb is a symbolic link where a folder"):
        apply_rendered(Rendered(dirs=(DirSpec(logs), DirSpec(logs / "mariadb", 0o750,
                                                             "nobody", "nogroup"))))
    st = (tmp_path / "etc").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)


def test_a_file_where_a_folder_is_expected_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    with pytest.raises(RoleFileRefused, match=r"/plain is not a folder$"):
        rolefiles.ensure_folder(tmp_path / "plain", mode=0o755, owner=(0, 0))


def test_relative_and_dotdot_paths_are_refused(tmp_path: Path) -> None:
    for path in (Path("relative/x"), tmp_path / ".." / "x"):
        with pytest.raises(RoleFileRefused, match=r"absolute, without '\.\.'"):
            rolefiles.ensure_folder(path, mode=0o755, owner=(0, 0))


def test_ensure_folder_makes_parents_and_sets_owner_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run"
    rolefiles.ensure_folder(target, mode=0o750, owner=(OTHER, OTHER))
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER, OTHER, 0o750)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755
    assert (tmp_path / "a" / "b").stat().st_uid == 0


def test_a_link_where_a_rendered_file_goes_is_replaced_not_followed(tmp_path: Path) -> None:
    role = _role_folder(tmp_path / "role")
    victim = _victim(tmp_path)
    (role / "init.sql").symlink_to(victim)
    spec = FileSpec(role / "init.sql", "CREATE DATABASE app;\n", 0o640, "root", "root")
    with structlog.testing.capture_logs() as logs:
        changes = apply_rendered(Rendered(files=(spec,)))
    assert changes.changed == (spec.path,)
    assert victim.read_text() == "root:secret\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    st = os.lstat(spec.path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert spec.path.read_text() == "CREATE DATABASE app;\n"
    assert [(e["event"], e["path"]) for e in logs] == [("role_link_refused", str(spec.path))]
    assert sorted(os.listdir(role)) == ["init.sql"]  # no temporary left behind


def test_look_does_not_follow_links_or_wait_on_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"abc")
    (tmp_path / "file").chmod(0o640)
    with rolefiles.folder(tmp_path) as fd:
        assert rolefiles.look(fd, "fifo").kind is Kind.OTHER
        assert rolefiles.look(fd, "link").kind is Kind.LINK
        assert rolefiles.look(fd, "none").kind is Kind.MISSING
        found = rolefiles.look(fd, "file")
    assert found.same(b"abc", mode=0o640, owner=(0, 0))
    assert not found.same(b"abc", mode=0o644, owner=(0, 0))
    assert not found.same(b"abd", mode=0o640, owner=(0, 0))


def test_write_at_sets_owner_and_mode_and_leaves_nothing_aside(tmp_path: Path) -> None:
    with rolefiles.folder(tmp_path) as fd:
        durable.write_at(fd, "secret", b"pw\n", mode=0o600, owner=(OTHER, 0))
    st = (tmp_path / "secret").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER, 0, 0o600)
    assert os.listdir(tmp_path) == ["secret"]


def test_a_service_log_opens_only_in_a_folder_nobody_else_writes(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    fd = rolefiles.open_log(logs / "svc.out")
    try:
        os.write(fd, b"one\n")
    finally:
        os.close(fd)
    fd = rolefiles.open_log(logs / "svc.out")
    try:
        os.write(fd, b"two\n")  # appended, not truncated
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    assert (logs / "svc.out").read_text() == "one\ntwo\n"
    assert stat.S_IMODE((logs / "svc.out").stat().st_mode) == 0o640


@pytest.mark.parametrize(("owner", "mode", "why"), [
    (OTHER, 0o755, r"writable by others than the agent \(owner uid 65534, mode 755\)"),
    (0, 0o775, r"writable by others than the agent \(owner uid 0, mode 775\)"),
])
def test_a_service_log_in_a_folder_others_write_is_refused(tmp_path: Path, owner: int,
                                                           mode: int, why: str) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    os.chown(logs, owner, owner)
    logs.chmod(mode)
    with pytest.raises(RoleFileRefused, match=why):
        rolefiles.open_log(logs / "mariadbd.out")
    assert not (logs / "mariadbd.out").exists()


def test_a_service_log_that_is_a_link_or_a_fifo_is_refused(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    (logs / "mariadbd.out").symlink_to(victim)
    with pytest.raises(RoleFileRefused) as refused:
        rolefiles.open_log(logs / "mariadbd.out")
    assert str(refused.value) == (f"service log {logs}/mariadbd.out is a symbolic link: "
                                  "refused, not followed")
    assert victim.read_text() == "root:secret\n"
    os.mkfifo(logs / "fifo.out")
    with pytest.raises(OSError, match="No such device"):  # ENXIO: no reader, never a wait
        rolefiles.open_log(logs / "fifo.out")


def test_a_service_log_with_a_second_name_is_refused(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    victim = _victim(tmp_path)
    os.link(victim, logs / "svc.out")
    with pytest.raises(RoleFileRefused, match=r"/log/svc\.out is a hard link: refused$"):
        rolefiles.open_log(logs / "svc.out")
    assert victim.read_text() == "root:secret\n"


def test_apply_rendered_keeps_a_role_folder_setup_whole(tmp_path: Path) -> None:
    """A database's folders: root's log/, mysql's run/ and log/mariadb/, root:mysql mysql/."""
    root = tmp_path / "node"
    rendered = Rendered(dirs=(DirSpec(root), DirSpec(root / "log"),
                              DirSpec(root / "run", owner="nobody", group="nogroup"),
                              DirSpec(root / "mysql", 0o750, "root", "nogroup")),
                        files=(FileSpec(root / "mysql" / "my.cnf", "[mariadbd]\n"),))
    assert apply_rendered(rendered).changed == (root / "mysql" / "my.cnf",)
    assert apply_rendered(rendered).changed == ()
    assert (root / "run").stat().st_uid == OTHER
    assert stat.S_IMODE((root / "mysql").stat().st_mode) == 0o750

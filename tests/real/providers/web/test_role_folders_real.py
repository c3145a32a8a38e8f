"""A real database node whose mysql user plants links where root writes: root never follows.

The node starts from the folders an older cloudd gave it (log/, run/ and mysql/ all mysql's),
in which the mysql user (the real one, through setpriv) has planted links at the service log
root appends to (the CVE-2016-6664 pattern), at the init file root writes and at the scratch
folder mariadb-install-db initialises as root. The agent's side (converge, then the
supervisor) takes the folders back, refuses every link with one logged sentence, leaves the
targets untouched, and MariaDB runs and answers. Then, on the running node, a link where a
folder of the role goes is refused too, and MariaDB is still there.

One network namespace (prefix h13f, 10.239.34.0/24) and one MariaDB; every wait is bounded.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from cloudd_lab.netlab import NetLab

from cloudd.providers.base import Assignment, DirSpec, Rendered, apply_rendered, converge
from cloudd.providers.policy import State
from cloudd.providers.probes import run_probe
from cloudd.providers.rolefiles import RoleFileRefused
from cloudd.providers.supervisor import Supervisor
from cloudd.providers.web.provider import PROVIDER

pytestmark = [pytest.mark.services, pytest.mark.netns]

PREFIX, SUBNET = "h13f", "10.239.34.0/24"
SETTINGS = {"database_name": "guestbook", "database_user": "guestbook",
            "database_password_ref": "db_password"}
ROOTS_OWN = "root's own\n"


@dataclass(frozen=True)
class Place:
    base: Path
    node: Path
    victims: Path


def as_mysql(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=mysql", "--regid=mysql", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=30, check=False)


def owner(path: Path) -> tuple[str, str, int]:
    st = os.lstat(path)
    return (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
            stat.S_IMODE(st.st_mode))


@pytest.fixture
def place(have) -> Iterator[Place]:  # type: ignore[no-untyped-def]
    """Not under pytest's tmp_path: its parents are 0700, and mysql must reach its files."""
    for program in ("mariadbd", "mariadb-install-db", "mariadb", "setpriv"):
        have(program)
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/var/tmp"))
    base.chmod(0o755)
    victims = base / "victims"  # what a mysql user would aim at: /root/.ssh, /etc/shadow, /etc
    victims.mkdir(mode=0o755)
    for name in ("authorized_keys", "shadow"):
        (victims / name).write_text(ROOTS_OWN)
        (victims / name).chmod(0o600)
    (base / "secrets").mkdir(mode=0o700)
    (base / "secrets" / "db_password").write_text("correct horse\n")
    yield Place(base=base, node=base / "db", victims=victims)
    shutil.rmtree(base, ignore_errors=True)


def older_layout(node: Path) -> None:
    """The folders as the previous release rendered them: log/ and mysql/ were mysql's."""
    node.mkdir(mode=0o755)
    for name, mode in (("log", 0o755), ("run", 0o755), ("mysql", 0o750)):
        (node / name).mkdir(mode=mode)
        os.chown(node / name, pwd.getpwnam("mysql").pw_uid, grp.getgrnam("mysql").gr_gid)


def victims_untouched(victims: Path) -> None:
    assert owner(victims) == ("root", "root", 0o755)
    assert sorted(p.name for p in victims.iterdir()) == ["authorized_keys", "shadow"]
    for name in ("authorized_keys", "shadow"):
        assert (victims / name).read_text() == ROOTS_OWN
        assert owner(victims / name) == ("root", "root", 0o600)


@pytest.fixture
async def lab() -> AsyncIterator[NetLab]:
    with NetLab(PREFIX, subnet=SUBNET) as net:
        yield net


async def test_links_the_mysql_user_planted_are_refused_and_mariadb_runs(
        place: Place, lab: NetLab) -> None:
    node, victims = place.node, place.victims
    older_layout(node)
    for link, target in (("log/mariadbd.out", victims / "authorized_keys"),
                         ("mysql/init.sql", victims / "shadow"),
                         ("mysql/data.init", victims)):
        planted = as_mysql("ln", "-s", str(target), str(node / link))
        assert planted.returncode == 0, planted.stderr
    ns = lab.add_netns("db")
    a = Assignment(cloud="w", node="w-db", role="database", address=ns.ip, root=node,
                   secrets_dir=place.base / "secrets", settings=SETTINGS,
                   exec_prefix=("ip", "netns", "exec", ns.name))

    sup = None
    try:
        with structlog.testing.capture_logs() as logs:
            done = await converge(PROVIDER, a)
            sup = Supervisor(done.services, state_dir=node / "state", node=a.node)
            await sup.start()
            st = await sup.wait_for("mariadbd", lambda s: s.state is State.RUNNING and s.ready,
                                    within=120)
        assert st.pid is not None
        refused = [(e["event"], e["path"]) for e in logs if e["event"].endswith("_refused")]
        assert refused == [("role_link_refused", str(node / "mysql/init.sql")),
                           ("service_log_refused", str(node / "log/mariadbd.out"))], logs
        victims_untouched(victims)

        # The folders are back in the right hands, and what root wrote is a file of its own.
        assert owner(node / "log") == ("root", "root", 0o755)
        assert owner(node / "mysql") == ("root", "mysql", 0o750)
        assert owner(node / "mysql/init.sql") == ("root", "mysql", 0o640)
        assert "CREATE DATABASE IF NOT EXISTS `guestbook`" in (node / "mysql/init.sql").read_text()
        assert owner(node / "log/mariadb") == ("mysql", "mysql", 0o750)
        assert owner(node / "run") == ("mysql", "mysql", 0o755)
        assert (node / "log/mariadb/mariadb-error.log").stat().st_size > 0  # MariaDB's own
        assert owner(node / "mysql/data")[0] == "mysql" and (node / "mysql/data/mysql").is_dir()
        assert not (node / "mysql/data.init").exists()
        # The link at the log is still only a link: root appended nothing through it.
        assert (node / "log/mariadbd.out").is_symlink()

        # From now on the mysql user cannot plant anything where root writes.
        for folder in ("log", "mysql"):
            again = as_mysql("ln", "-s", str(victims / "shadow"), str(node / folder / "x"))
            assert again.returncode != 0 and "Permission denied" in again.stderr, again

        # A folder of the role inside one of mysql's own folders: a link there is refused.
        assert as_mysql("ln", "-s", str(victims), str(node / "run/cache")).returncode == 0
        with pytest.raises(RoleFileRefused) as no:
            apply_rendered(Rendered(dirs=(DirSpec(node / "run/cache", 0o750, "mysql",
                                                  "mysql"),)))
        assert str(no.value) == (f"{node}/run/cache is a symbolic link where a folder is "
                                 "expected, one someone other than root could have made: "
                                 "refused, not followed")
        victims_untouched(victims)

        # MariaDB never noticed: same process, still answering.
        assert sup.status()["mariadbd"].pid == st.pid
        (spec,) = done.services
        assert spec.readiness is not None
        assert (await run_probe(spec.readiness)).ok
    finally:
        if sup is not None:
            await sup.stop(within=30)

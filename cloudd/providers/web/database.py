"""The web cloud's `database` role: one MariaDB, reachable only by the server nodes.

mariadbd binds to the node's address; its data dir is initialised once with
mariadb-install-db; an init file (applied at every start, and on reload through the client
socket) creates the database and the servers' account, with access only from the server
nodes' addresses and the password from the role's secret. That file is SQL run as MariaDB's
root: every value in it is checked here (addresses are IP addresses, names plain
identifiers, the password an escaped literal without control characters).

Folders (root is the agent, mysql the user mariadbd drops to): `mysql/` is root's, readable
by the mysql group (0750), and holds my.cnf, init.sql (root:mysql 0640: the client that
sources it on reload runs as root, so mysql must not be able to change it) and the data dir
`mysql/data/` (mysql's, made by mariadb-install-db in a scratch folder of root's and renamed
into place). `run/` (socket, pid file) and `log/mariadb/` (MariaDB's own error log) are
mysql's; `log/` itself is root's and holds `mariadbd.out`, the output root appends to.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping

from cloudd import children, log
from cloudd.durable import replace_durable
from cloudd.errors import TemporaryError
from cloudd.providers import values
from cloudd.providers.base import Assignment, DirSpec, FileSpec, Rendered, Role
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.web import spec
from cloudd.providers.web.common import (
    BUFFER_POOL_MIB,
    DATABASE_PORT,
    dirs,
    fill,
    peer_address,
    placed,
    web_settings,
)

_log = log.get("providers.web")
_SQL = "init.sql"


class DatabaseRole(Role):
    name = "database"

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("mariadb-server", "mariadb-client")

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return spec.role_secrets(web_settings(a.settings), self.name)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        s = web_settings(a.settings)
        node = placed(a, "my.cnf and init.sql")
        base = node.root / "mysql"
        database = values.identifier(s.database_name, what="database name", target=_SQL)
        user = values.identifier(s.database_user, what="database user", target=_SQL)
        password = values.sql_string(s.password_secret, secrets[s.password_secret],
                                     target=_SQL)
        hosts = [peer_address(p.node, p.address, _SQL) for p in a.peers_of("server")]
        accounts = []
        for host in hosts:
            who = f"'{user}'@'{host}'"
            accounts += [f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY {password};",
                         f"ALTER USER {who} IDENTIFIED BY {password};",
                         f"GRANT ALL PRIVILEGES ON `{database}`.* TO {who};"]
        init_sql = fill("init.sql.tmpl", node=node.node, cloud=node.cloud, database=database,
                        user=user, accounts="\n".join(accounts),
                        hosts=", ".join(f"'{h}'" for h in hosts) or "''")
        own_log = node.root / "log" / "mariadb"
        cnf = fill("my.cnf.tmpl", node=node.node, cloud=node.cloud, data=base / "data",
                   run=node.root / "run", log=own_log, address=node.address,
                   port=DATABASE_PORT, init_file=base / _SQL, buffer_pool_mib=BUFFER_POOL_MIB)
        return Rendered(
            dirs=(*dirs(node.root, run_owner="mysql"), DirSpec(own_log, 0o750, "mysql", "mysql"),
                  DirSpec(base, 0o750, "root", "mysql")),
            files=(FileSpec(base / "my.cnf", cnf, 0o644),
                   # The password is in here: readable by root and the mysql group only.
                   FileSpec(base / _SQL, init_sql, 0o640, "root", "mysql",
                            reload=("mariadbd",))),
        )

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        web_settings(a.settings)  # bad settings fail here as in every other step
        node = placed(a, "the mariadbd command line")
        sock = node.root / "run" / "mysqld.sock"
        client = (*a.exec_prefix, "mariadb", f"--socket={sock}", "--user=root")
        return (ServiceSpec(
            name="mariadbd",
            # mariadbd drops to `user = mysql` itself (my.cnf); started as root so that a
            # namespace prefix like `ip netns exec` may run before it.
            argv=(*a.exec_prefix, "/usr/sbin/mariadbd",
                  f"--defaults-file={node.root}/mysql/my.cnf"),
            start_grace=1.0, stop_grace=30.0,
            liveness=ProbeSpec(kind=ProbeKind.TCP, host=str(node.address), port=DATABASE_PORT),
            readiness=ProbeSpec(kind=ProbeKind.EXEC, argv=(*client, "-e", "SELECT 1")),
            reload_argv=(*client, "-e", f"source {node.root}/mysql/{_SQL}"),
            log_path=str(node.root / "log" / "mariadbd.out"),
        ),)

    async def prepare(self, a: Assignment) -> None:
        data = placed(a, "mariadb-install-db's command line").root / "mysql" / "data"
        if (data / "mysql").is_dir():
            return
        # Initialise into a scratch dir and rename: a crash halfway leaves no data dir that
        # looks initialised, and the next converge starts over.
        # The scratch dir is in root's `mysql/` folder: the mysql user cannot put a link there
        # for mariadb-install-db (run as root) to chown through. One made while the folder
        # was still mysql's (an older layout) is removed, never followed.
        scratch = data.with_name("data.init")
        if scratch.is_symlink() or scratch.is_file():
            scratch.unlink()
        shutil.rmtree(scratch, ignore_errors=True)
        code, out = await children.run((
            "mariadb-install-db", "--no-defaults", f"--datadir={scratch}", "--user=mysql",
            "--auth-root-authentication-method=socket", "--skip-test-db"))
        if code != 0:
            raise TemporaryError(f"mariadb-install-db failed: {telling_line(out)}", delay=5.0)
        # fsynced, renamed, and the rename itself synced, off the event loop
        await asyncio.to_thread(replace_durable, scratch, data)
        _log.info("web.database_initialised", cloud=a.cloud, node=a.node, role=a.role,
                  path=str(data))


def telling_line(output: str) -> str:
    """The line of mariadb-install-db's output that says what went wrong: its first
    `[ERROR]` line, else its first line saying something failed, else its last line (the
    last lines are boilerplate about where to report bugs)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    found = (next((line for line in lines if "[ERROR]" in line), None)
             or next((line for line in lines if "failed" in line.lower()), None))
    return found or (lines[-1] if lines else "no output")

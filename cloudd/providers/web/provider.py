"""The `web` cloud type: a three-tier site of nginx, WEBrick application servers and MariaDB.

Roles, in dependency order:
- `database`: mariadbd bound to the node's address; its data dir is initialised once with
  mariadb-install-db; an init file (applied at every start, and on reload through the client
  socket) creates the database and the servers' account, with access only from the server
  nodes' addresses and the password from a secret file.
- `server`: the guestbook in `app.rb` on WEBrick, reading and writing the database.
- `balancer`: nginx with an upstream of the healthy servers, re-rendered and reloaded (not
  restarted) when servers come and go.

Everything a node writes lives under its assignment's `root`, so several nodes can share one
machine (each in its own network namespace) in tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloudd import log
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import (
    Assignment,
    ClusterView,
    DirSpec,
    FileSpec,
    Finding,
    Provider,
    Rendered,
    Role,
)
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.web import spec

_log = log.get("providers.web")
HERE = Path(__file__).resolve().parent
APP = HERE / "app.rb"


#: The MariaDB port the servers connect to.
DATABASE_PORT = 3306
#: InnoDB buffer pool, MiB; small, the guestbook is small.
BUFFER_POOL_MIB = 64
#: The unprivileged user the app and nginx's workers run as.
RUN_AS = "www-data"


def web_settings(raw: Mapping[str, Any]) -> spec.WebSettings:
    """Settings from the manifest's mapping; one precise error for the first bad value."""
    try:
        return spec.WebSettings.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise PermanentError(f"web settings: {where}: {err['msg']}") from None


def fill(template: str, **values: object) -> str:
    """Fill `{{name}}` fields of a template shipped next to this module."""
    text = (HERE / template).read_text()

    def one(m: re.Match[str]) -> str:
        if m[1] not in values:
            raise KeyError(f"{template}: no value for {{{{{m[1]}}}}}")
        return str(values[m[1]])

    return re.sub(r"\{\{(\w+)\}\}", one, text)


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dirs(a: Assignment, *, owner: str = "root") -> tuple[DirSpec, ...]:
    return (DirSpec(a.root), DirSpec(a.root / "log", owner=owner, group=owner),
            DirSpec(a.root / "run", owner=owner, group=owner))


def _http(url: str, *, period: float = 2.0) -> ProbeSpec:
    return ProbeSpec(kind=ProbeKind.HTTP, url=url, period=period, timeout=2.0)


class DatabaseRole(Role):
    name = "database"

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("mariadb-server", "mariadb-client")

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return (web_settings(a.settings).password_secret,)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        s = web_settings(a.settings)
        base = a.root / "mysql"
        password = _sql_string(secrets[s.password_secret])
        hosts = [p.address for p in a.peers_of("server")]
        accounts = []
        for host in hosts:
            who = f"'{s.database_user}'@'{host}'"
            accounts += [f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY {password};",
                         f"ALTER USER {who} IDENTIFIED BY {password};",
                         f"GRANT ALL PRIVILEGES ON `{s.database_name}`.* TO {who};"]
        init_sql = fill("init.sql.tmpl", node=a.node, cloud=a.cloud, database=s.database_name,
                        user=s.database_user, accounts="\n".join(accounts),
                        hosts=", ".join(f"'{h}'" for h in hosts) or "''")
        cnf = fill("my.cnf.tmpl", node=a.node, cloud=a.cloud, data=base / "data",
                   run=a.root / "run", log=a.root / "log", address=a.address, port=DATABASE_PORT,
                   init_file=base / "init.sql", buffer_pool_mib=BUFFER_POOL_MIB)
        return Rendered(
            dirs=(*_dirs(a, owner="mysql"), DirSpec(base, 0o750, "mysql", "mysql")),
            files=(FileSpec(base / "my.cnf", cnf, 0o644),
                   # The password is in here: readable by mysql only.
                   FileSpec(base / "init.sql", init_sql, 0o600, "mysql", "mysql",
                            reload=("mariadbd",))),
        )

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        web_settings(a.settings)  # bad settings fail here as in every other step
        sock = a.root / "run" / "mysqld.sock"
        client = (*a.exec_prefix, "mariadb", f"--socket={sock}", "--user=root")
        return (ServiceSpec(
            name="mariadbd",
            # mariadbd drops to `user = mysql` itself (my.cnf); started as root so that a
            # namespace prefix like `ip netns exec` may run before it.
            argv=(*a.exec_prefix, "/usr/sbin/mariadbd", f"--defaults-file={a.root}/mysql/my.cnf"),
            start_grace=1.0, stop_grace=30.0,
            liveness=ProbeSpec(kind=ProbeKind.TCP, host=a.address, port=DATABASE_PORT),
            readiness=ProbeSpec(kind=ProbeKind.EXEC, argv=(*client, "-e", "SELECT 1")),
            reload_argv=(*client, "-e", f"source {a.root}/mysql/init.sql"),
            log_path=str(a.root / "log" / "mariadbd.out"),
        ),)

    async def prepare(self, a: Assignment) -> None:
        data = a.root / "mysql" / "data"
        if (data / "mysql").is_dir():
            return
        # Initialise into a scratch dir and rename: a crash halfway leaves no data dir that
        # looks initialised, and the next converge starts over.
        scratch = data.with_name("data.init")
        shutil.rmtree(scratch, ignore_errors=True)
        proc = await asyncio.create_subprocess_exec(
            "mariadb-install-db", "--no-defaults", f"--datadir={scratch}", "--user=mysql",
            "--auth-root-authentication-method=socket", "--skip-test-db",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise TemporaryError(f"mariadb-install-db failed: {tail[0]}", delay=5.0)
        scratch.rename(data)
        _log.info("web.database_initialised", cloud=a.cloud, node=a.node, role=a.role,
                  path=str(data))


class ServerRole(Role):
    name = "server"
    depends_on = ("database",)

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("ruby", "ruby-webrick", "ruby-mysql2")

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return (web_settings(a.settings).password_secret,)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        s = web_settings(a.settings)
        dbs = a.peers_of("database")
        database = None if not dbs else {
            "host": dbs[0].address, "port": DATABASE_PORT, "name": s.database_name,
            "user": s.database_user, "password": secrets[s.password_secret]}
        config = {"node": a.node, "bind": a.address, "port": s.app_port, "database": database}
        return Rendered(
            dirs=(*_dirs(a), DirSpec(a.root / "app")),
            files=(FileSpec(a.root / "app" / "config.json", json.dumps(config, indent=2) + "\n",
                            0o640, "root", RUN_AS, reload=("webrick",)),),
        )

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        s = web_settings(a.settings)
        url = f"http://{a.address}:{s.app_port}"
        return (ServiceSpec(
            name="webrick",
            # setpriv drops to the app's user after any namespace prefix has run as root.
            argv=(*a.exec_prefix, "setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}",
                  "--init-groups", "ruby", str(APP), str(a.root / "app" / "config.json")),
            cwd=str(a.root / "app"),
            liveness=_http(f"{url}/health"),
            readiness=_http(f"{url}/ready"),
            reload_argv=(),  # SIGHUP: app.rb re-reads its configuration
            log_path=str(a.root / "log" / "webrick.out"),
        ),)


class BalancerRole(Role):
    name = "balancer"
    depends_on = ("server",)

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("nginx",)

    def members(self, a: Assignment) -> tuple[str, ...]:
        """`address:port` of the healthy servers, sorted so equal health renders equal files."""
        port = web_settings(a.settings).app_port
        return tuple(sorted(f"{p.address}:{port}" for p in a.healthy("server")))

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        s = web_settings(a.settings)
        members = self.members(a)
        if members:
            upstream = "\n    upstream cloudd_servers {\n" + "".join(
                f"        server {m} max_fails=1 fail_timeout=5s;\n" for m in members) + "    }\n"
            location = ("            proxy_pass http://cloudd_servers;\n"
                        "            proxy_next_upstream error timeout http_502 http_503;\n"
                        "            proxy_connect_timeout 2s;\n"
                        "            proxy_set_header Host $host;")
        else:
            # nginx refuses an empty upstream: with no healthy server, say so plainly.
            upstream = ""
            location = ("            default_type text/plain;\n"
                        '            return 503 "no healthy server\\n";')
        tmp = a.root / "nginx" / "tmp"
        conf = fill("nginx.conf.tmpl", node=a.node, cloud=a.cloud, user=RUN_AS,
                    run=a.root / "run", log=a.root / "log", tmp=tmp, upstream=upstream,
                    address=a.address, port=s.balancer_port, location=location,
                    members="".join(f"{m}\\n" for m in members))
        return Rendered(
            dirs=(*_dirs(a), DirSpec(a.root / "nginx"), DirSpec(tmp)),
            files=(FileSpec(a.root / "nginx" / "nginx.conf", conf, reload=("nginx",)),),
        )

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        s = web_settings(a.settings)
        nginx = (*a.exec_prefix, "/usr/sbin/nginx", "-c", f"{a.root}/nginx/nginx.conf",
                 "-p", f"{a.root}/nginx", "-e", f"{a.root}/log/nginx-error.log")
        return (ServiceSpec(
            name="nginx", argv=nginx, stop_grace=10.0,
            liveness=_http(f"http://{a.address}:{s.balancer_port}/cloudd/health"),
            readiness=_http(f"http://{a.address}:{s.balancer_port}/cloudd/health"),
            # nginx keeps its old configuration when the new one is invalid.
            reload_argv=(*nginx, "-s", "reload"),
            log_path=str(a.root / "log" / "nginx.out"),
        ),)


async def http_get(host: str, port: int, path: str, *, within: float = 2.0) -> tuple[int, str]:
    """A plain HTTP/1.0 GET: (status, body). Raises OSError or TimeoutError."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = head.split(" ", 2)
    if len(status) < 2 or not status[1].isdigit():
        raise OSError(f"not an HTTP response from {host}:{port}")
    return int(status[1]), body


class WebProvider(Provider):
    cloud_type = "web"
    roles: Mapping[str, Role] = {r.name: r for r in (DatabaseRole(), ServerRole(),
                                                        BalancerRole())}

    async def configure(self, cluster: ClusterView, role: str) -> None:
        """Check that a role is usable before the roles after it are configured."""
        s = web_settings(cluster.settings)
        checks = {"database": (DATABASE_PORT, None), "server": (s.app_port, "/ready"),
                  "balancer": (s.balancer_port, "/cloudd/health")}
        port, path = checks[self.role(role).name]
        for node in cluster.of(role):
            try:
                if path is None:
                    _, writer = await asyncio.wait_for(
                        asyncio.open_connection(node.address, port), 2.0)
                    writer.close()
                    continue
                status, body = await http_get(node.address, port, path)
            except (OSError, TimeoutError) as exc:
                raise TemporaryError(f"{role} {node.node} unreachable: {exc}", delay=2.0) from None
            if status != 200:
                raise TemporaryError(f"{role} {node.node} not ready: {status} {body.strip()}",
                                     delay=2.0)

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        """Every balancer balances over exactly the healthy servers."""
        s = web_settings(cluster.settings)
        want = sorted(f"{p.address}:{s.app_port}" for p in cluster.of("server") if p.healthy)
        findings = []
        for lb in cluster.of("balancer"):
            if not lb.healthy:
                continue
            try:
                status, body = await http_get(lb.address, s.balancer_port, "/cloudd/upstream")
            except (OSError, TimeoutError) as exc:
                findings.append(Finding("upstream", False, f"unreachable: {exc}", lb.node))
                continue
            have = sorted(body.split())
            ok = status == 200 and have == want
            message = "upstream matches the healthy servers" if ok else (
                f"upstream has {have or 'no servers'}, healthy servers are {want or 'none'}")
            findings.append(Finding("upstream", ok, message, lb.node))
        return tuple(findings)


PROVIDER = WebProvider()

"""The `web` cloud type: a three-tier site of nginx, WEBrick application servers and MariaDB.

Roles, in dependency order:
- `database` (`database.py`): mariadbd bound to the node's address, reachable only by the
  server nodes, with the servers' password from the role's secret.
- `server`: the guestbook in `app.rb` on WEBrick, reading and writing the database; its
  configuration is JSON the Ruby program reads.
- `balancer`: nginx with an upstream of the healthy servers, re-rendered and reloaded (not
  restarted) when servers come and go.

Everything a node writes lives under its assignment's `root`, so several nodes can share one
machine (each in its own network namespace) in tests. Every value rendered into a file or a
command line is checked by the role that renders it (`common.placed`,
`cloudd.providers.values`): a hostile value is refused before anything is written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from cloudd.errors import TemporaryError
from cloudd.providers import values
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
from cloudd.providers.service import ServiceSpec
from cloudd.providers.web import spec
from cloudd.providers.web.common import (
    APP,
    DATABASE_PORT,
    RUN_AS,
    dirs,
    fill,
    http_probe,
    peer_address,
    placed,
    web_settings,
)
from cloudd.providers.web.database import DatabaseRole

__all__ = ["PROVIDER", "WebProvider", "http_get", "web_settings"]
_CONFIG = "the app's config.json"
_NGINX = "nginx.conf"


class ServerRole(Role):
    name = "server"
    depends_on = ("database",)

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("ruby", "ruby-webrick", "ruby-mysql2")

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return spec.role_secrets(web_settings(a.settings), self.name)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        s = web_settings(a.settings)
        node = placed(a, _CONFIG)
        dbs = a.peers_of("database")
        database = None if not dbs else {
            "host": str(peer_address(dbs[0].node, dbs[0].address, _CONFIG)),
            "port": DATABASE_PORT,
            "name": values.identifier(s.database_name, what="database name", target=_CONFIG),
            "user": values.identifier(s.database_user, what="database user", target=_CONFIG),
            "password": values.secret_text(s.password_secret, secrets[s.password_secret],
                                           target=_CONFIG)}
        config = {"node": node.node, "bind": str(node.address),
                  "port": values.port(s.app_port, what="app port", target=_CONFIG),
                  "database": database}
        return Rendered(
            dirs=(*dirs(node.root), DirSpec(node.root / "app")),
            # JSON, written by json.dumps: the Ruby program parses it, never evaluates it.
            files=(FileSpec(node.root / "app" / "config.json",
                            json.dumps(config, indent=2) + "\n", 0o640, "root", RUN_AS,
                            reload=("webrick",)),),
        )

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        s = web_settings(a.settings)
        node = placed(a, "the app's command line")
        url = f"http://{values.host_port(node.address, s.app_port)}"
        return (ServiceSpec(
            name="webrick",
            # setpriv drops to the app's user after any namespace prefix has run as root.
            argv=(*a.exec_prefix, "setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}",
                  "--init-groups", "ruby", str(APP), str(node.root / "app" / "config.json")),
            cwd=str(node.root / "app"),
            liveness=http_probe(f"{url}/health"),
            readiness=http_probe(f"{url}/ready"),
            reload_argv=(),  # SIGHUP: app.rb re-reads its configuration
            log_path=str(node.root / "log" / "webrick.out"),
        ),)


class BalancerRole(Role):
    name = "balancer"
    depends_on = ("server",)

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("nginx",)

    def members(self, a: Assignment) -> tuple[str, ...]:
        """`address:port` of the healthy servers, sorted so equal health renders equal files."""
        port = values.port(web_settings(a.settings).app_port, what="app port", target=_NGINX)
        return tuple(sorted(values.host_port(peer_address(p.node, p.address, _NGINX), port)
                            for p in a.healthy("server")))

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        s = web_settings(a.settings)
        node = placed(a, _NGINX)
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
        tmp = node.root / "nginx" / "tmp"
        listen = values.host_port(
            node.address, values.port(s.balancer_port, what="balancer port", target=_NGINX))
        conf = fill("nginx.conf.tmpl", node=node.node, cloud=node.cloud, user=RUN_AS,
                    run=node.root / "run", log=node.root / "log", tmp=tmp, upstream=upstream,
                    listen=listen, location=location,
                    members="".join(f"{m}\\n" for m in members))
        return Rendered(
            dirs=(*dirs(node.root), DirSpec(node.root / "nginx"), DirSpec(tmp)),
            files=(FileSpec(node.root / "nginx" / "nginx.conf", conf, reload=("nginx",)),),
        )

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        s = web_settings(a.settings)
        node = placed(a, "nginx's command line")
        root = node.root
        nginx = (*a.exec_prefix, "/usr/sbin/nginx", "-c", f"{root}/nginx/nginx.conf",
                 "-p", f"{root}/nginx", "-e", f"{root}/log/nginx-error.log")
        health = f"http://{values.host_port(node.address, s.balancer_port)}/cloudd/health"
        return (ServiceSpec(
            name="nginx", argv=nginx, stop_grace=10.0,
            liveness=http_probe(health),
            readiness=http_probe(health),
            # nginx keeps its old configuration when the new one is invalid.
            reload_argv=(*nginx, "-s", "reload"),
            log_path=str(root / "log" / "nginx.out"),
        ),)


async def http_get(host: str | values.IPAddress, port: int, path: str, *,
                   within: float = 2.0) -> tuple[int, str]:
    """A plain HTTP/1.0 GET: (status, body). Raises OSError or TimeoutError."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(str(host), port)
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
                        asyncio.open_connection(str(node.address), port), 2.0)
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
        want = sorted(values.host_port(values.ip(p.address, what=f"address of {p.node}",
                                                 target="the upstream check"), s.app_port)
                      for p in cluster.of("server") if p.healthy)
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

"""Pure rendering of the web roles: upstream for given health, grants, settings errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cloudd.errors import PermanentError
from cloudd.providers.base import Assignment, Peer
from cloudd.providers.web.provider import PROVIDER, web_settings

PEERS = (
    Peer("w-database-1", "database", "10.1.0.9", True),
    Peer("w-server-1", "server", "10.1.0.3", True),
    Peer("w-server-2", "server", "10.1.0.2", True),
    Peer("w-balancer-1", "balancer", "10.1.0.1", True),
)
SECRETS = {"database_password": "pa'ss\\word"}


def _a(role: str, *, peers: tuple[Peer, ...] = PEERS, **settings: object) -> Assignment:
    address = {"database": "10.1.0.9", "server": "10.1.0.3", "balancer": "10.1.0.1"}[role]
    return Assignment(cloud="w", node=f"w-{role}-1", role=role, address=address,
                      root=Path(f"/srv/{role}"), secrets_dir=Path("/etc/cloudd/secrets"),
                      settings=settings, peers=peers)


def _file(role: str, name: str, a: Assignment | None = None) -> str:
    a = a or _a(role)
    files = PROVIDER.role(role).render(a, SECRETS).files
    return next(f.content for f in files if f.path.name == name)


def _with_health(s1: bool, s2: bool) -> tuple[Peer, ...]:
    return (PEERS[0], Peer("w-server-1", "server", "10.1.0.3", s1),
            Peer("w-server-2", "server", "10.1.0.2", s2), PEERS[3])


@pytest.mark.parametrize(("s1", "s2", "members"), [
    (True, True, ["10.1.0.2:8080", "10.1.0.3:8080"]),
    (True, False, ["10.1.0.3:8080"]),
    (False, True, ["10.1.0.2:8080"]),
])
def test_upstream_lists_exactly_the_healthy_servers(s1: bool, s2: bool,
                                                    members: list[str]) -> None:
    conf = _file("balancer", "nginx.conf", _a("balancer", peers=_with_health(s1, s2)))
    upstream = conf.split("upstream cloudd_servers {")[1].split("}")[0]
    assert [line.split()[1] for line in upstream.strip().splitlines()] == members
    assert "listen 10.1.0.1:80;" in conf
    assert "return 200 \"" + "".join(f"{m}\\n" for m in members) + "\";" in conf


def test_no_healthy_server_renders_a_503_not_an_empty_upstream() -> None:
    conf = _file("balancer", "nginx.conf", _a("balancer", peers=_with_health(False, False)))
    assert "upstream" not in conf.split("http {")[1].split("server {")[0]
    assert 'return 503 "no healthy server\\n";' in conf


def test_same_health_renders_the_same_file_whatever_the_peer_order() -> None:
    shuffled = tuple(reversed(PEERS))
    assert _file("balancer", "nginx.conf", _a("balancer", peers=shuffled)) == \
        _file("balancer", "nginx.conf")


def test_balancer_file_asks_for_an_nginx_reload() -> None:
    (conf,) = PROVIDER.role("balancer").render(_a("balancer"), SECRETS).files
    assert conf.reload == ("nginx",)
    (svc,) = PROVIDER.role("balancer").services(_a("balancer"))
    assert svc.reload_argv is not None and svc.reload_argv[-2:] == ("-s", "reload")


def test_database_grants_only_the_server_addresses_with_an_escaped_password() -> None:
    sql = _file("database", "init.sql")
    assert "CREATE DATABASE IF NOT EXISTS `app`;" in sql
    for host in ("10.1.0.3", "10.1.0.2"):
        assert (f"CREATE USER IF NOT EXISTS 'app'@'{host}' "
                "IDENTIFIED BY 'pa\\'ss\\\\word';") in sql
        assert f"GRANT ALL PRIVILEGES ON `app`.* TO 'app'@'{host}';" in sql
    assert "Host NOT IN ('10.1.0.3', '10.1.0.2')" in sql
    assert "10.1.0.1" not in sql and "10.1.0.9" not in sql
    init = next(f for f in PROVIDER.role("database").render(_a("database"), SECRETS).files
                if f.path.name == "init.sql")
    # root's, readable by mysql: root's client sources it on reload, so mysql may not edit it
    assert (init.mode, init.owner, init.group, init.reload) == (0o640, "root", "mysql",
                                                                ("mariadbd",))


def test_database_binds_to_the_node_address_under_its_root() -> None:
    cnf = _file("database", "my.cnf")
    assert "bind-address = 10.1.0.9" in cnf
    assert "datadir = /srv/database/mysql/data" in cnf
    assert "innodb-flush-log-at-trx-commit = 1" in cnf


def test_settings_name_the_password_secret() -> None:
    assert PROVIDER.role("database").secrets(_a("database")) == ("database_password",)
    a = _a("database", database_password_ref="dbpw", database_user="gb")
    assert PROVIDER.role("database").secrets(a) == ("dbpw",)
    sql = PROVIDER.role("database").render(a, {"dbpw": "x"}).files[1].content
    assert "IDENTIFIED BY 'x';" in sql and "'gb'@'10.1.0.3'" in sql


def test_server_config_points_at_the_database() -> None:
    config = json.loads(_file("server", "config.json", _a("server", app_port=9000)))
    assert config == {"node": "w-server-1", "bind": "10.1.0.3", "port": 9000, "database": {
        "host": "10.1.0.9", "port": 3306, "name": "app", "user": "app",
        "password": "pa'ss\\word"}}


def test_services_carry_the_namespace_prefix() -> None:
    a = Assignment(cloud="w", node="n", role="server", address="10.1.0.3", root=Path("/r"),
                   secrets_dir=Path("/s"), exec_prefix=("ip", "netns", "exec", "ns1"))
    (svc,) = PROVIDER.role("server").services(a)
    assert svc.argv[:5] == ("ip", "netns", "exec", "ns1", "setpriv")
    assert svc.readiness is not None and svc.readiness.url == "http://10.1.0.3:8080/ready"


@pytest.mark.parametrize(("settings", "message"), [
    ({"app_port": 70000}, "web settings: app_port: Input should be less than or equal to 65535"),
    ({"database_name": "x; DROP"}, "web settings: database_name: String should match pattern"),
    ({"colour": "red"}, "web settings: colour: Extra inputs are not permitted"),
    ({"app_port": "80"}, "web settings: app_port: Input should be a valid integer"),
])
def test_bad_settings_are_one_precise_error(settings: dict[str, object], message: str) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)):
        web_settings(settings)


@pytest.mark.parametrize("role", ["database", "server", "balancer"])
def test_root_writes_only_into_folders_no_service_user_can_write(role: str) -> None:
    """Every file root writes (rendered files, service output) is in a folder of the role that
    is root's and writable by nobody else; a service's own log goes to a folder of its own."""
    a = _a(role)
    rendered = PROVIDER.role(role).render(a, SECRETS)
    folders = {d.path: d for d in rendered.dirs}
    written = [f.path for f in rendered.files]
    written += [Path(s.log_path) for s in PROVIDER.role(role).services(a) if s.log_path]
    assert written
    for path in written:
        d = folders[path.parent]
        assert (d.owner, d.mode & 0o022) == ("root", 0), f"{path}: its folder is {d}"
    log = folders[a.root / "log"]
    assert (log.owner, log.group, log.mode) == ("root", "root", 0o755)


def test_mariadb_writes_its_own_log_and_socket_in_folders_of_its_own() -> None:
    a = _a("database")
    cnf = _file("database", "my.cnf")
    assert "log-error = /srv/database/log/mariadb/mariadb-error.log" in cnf
    assert "socket = /srv/database/run/mysqld.sock" in cnf
    folders = {d.path: d for d in PROVIDER.role("database").render(a, SECRETS).dirs}
    for own in (a.root / "log" / "mariadb", a.root / "run"):
        assert (folders[own].owner, folders[own].group) == ("mysql", "mysql")
    mysql = folders[a.root / "mysql"]
    assert (mysql.owner, mysql.group, mysql.mode) == ("root", "mysql", 0o750)

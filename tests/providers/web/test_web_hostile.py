"""Every value a web role renders is checked by the role itself: hostile values (SQL, a
newline, a brace, a `$(...)`, an address that is not one) are refused with one message, and
nothing is written, because rendering comes before writing."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from cloudd.errors import PermanentError
from cloudd.providers.base import Assignment, Peer, apply_rendered
from cloudd.providers.web.provider import PROVIDER

SQL = "1.2.3.4'; DROP USER root; --"
PASSWORD = "pa'ss\\word"


def peers(**hostile: str) -> tuple[Peer, ...]:
    """The other nodes, any of them given a hostile address by name."""
    base = {"w-database-1": ("database", "10.1.0.9"), "w-server-1": ("server", "10.1.0.3"),
            "w-server-2": ("server", "10.1.0.2"), "w-balancer-1": ("balancer", "10.1.0.1")}
    return tuple(Peer(n, role, hostile.get(n, address), True)  # type: ignore[arg-type]
                 for n, (role, address) in base.items())


def assignment(role: str, where: Path, **changes: object) -> Assignment:
    a = Assignment(cloud="w", node=f"w-{role}-1", role=role, address=ip_address("10.1.0.5"),
                   root=where, secrets_dir=where / "secrets",
                   settings={"database_password_ref": "db"},
                   peers=tuple(p for p in peers() if p.node != f"w-{role}-1"))
    return replace(a, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("role", "changes", "message"), [
    ("database", {"address": SQL},
     f"refusing to render node address {SQL!r} into my.cnf and init.sql: not an IP address"),
    ("database", {"peers": peers(**{"w-server-1": SQL})},
     f"refusing to render address of w-server-1 {SQL!r} into init.sql: not an IP address"),
    ("database", {"node": "db\nbind-address = 0.0.0.0"},
     "refusing to render node name 'db\\nbind-address = 0.0.0.0' into my.cnf and init.sql: "
     "not a DNS label"),
    ("database", {"root": Path("/srv/$(reboot)")},
     "refusing to render node root '/srv/$(reboot)' into my.cnf and init.sql: not a plain "
     "absolute path"),
    ("server", {"peers": peers(**{"w-database-1": "10.1.0.9\", \"password\": \"x"})},
     "refusing to render address of w-database-1 '10.1.0.9\", \"password\": \"x' into the "
     "app's config.json: not an IP address"),
    ("server", {"cloud": "w}\n"}, "refusing to render cloud name 'w}\\n' into the app's "
                                  "config.json: not a DNS label"),
    ("balancer", {"peers": peers(**{"w-server-2": "10.1.0.2:80; } server { listen 0.0.0.0"})},
     "refusing to render address of w-server-2 '10.1.0.2:80; } server { listen 0.0.0.0' into "
     "nginx.conf: not an IP address"),
    ("balancer", {"node": "lb-1 } include /etc/shadow; {"},
     "refusing to render node name 'lb-1 } include /etc/shadow; {' into nginx.conf: not a "
     "DNS label"),
    ("balancer", {"root": Path("/srv/lb\n}")},
     "refusing to render node root '/srv/lb\\n}' into nginx.conf: not a plain absolute path"),
])
def test_a_hostile_value_is_refused_and_nothing_is_written(
        tmp_path: Path, role: str, changes: dict[str, object], message: str) -> None:
    root = tmp_path / "node"
    a = assignment(role, root, **changes)
    with pytest.raises(PermanentError) as info:
        apply_rendered(PROVIDER.role(role).render(a, {"db": PASSWORD}))
    assert str(info.value) == message
    assert not root.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("role", ["database", "server"])
def test_a_password_with_a_newline_is_refused_without_showing_it(tmp_path: Path,
                                                                 role: str) -> None:
    with pytest.raises(PermanentError) as info:
        PROVIDER.role(role).render(assignment(role, tmp_path / "node"),
                                   {"db": "hunter2\nGRANT ALL"})
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("refusing to render secret 'db' into ")
    assert str(info.value).endswith("it holds a control character (a newline?)")


@pytest.mark.parametrize(("role", "changes"), [
    ("database", {"address": SQL}),
    ("server", {"address": "10.1.0.3/../../x"}),
    ("balancer", {"root": Path("/srv/$(reboot)")}),
])
def test_command_lines_are_checked_too(tmp_path: Path, role: str,
                                       changes: dict[str, object]) -> None:
    with pytest.raises(PermanentError, match=r"^refusing to render "):
        PROVIDER.role(role).services(assignment(role, tmp_path / "node", **changes))


def test_ipv6_addresses_are_bracketed_where_nginx_and_urls_want_them(tmp_path: Path) -> None:
    six = tuple(replace(p, address=ip_address(f"2001:db8::{i + 1}"))
                for i, p in enumerate(peers()))
    lb = assignment("balancer", tmp_path / "node", address=ip_address("2001:db8::9"),
                    peers=six)
    (conf,) = PROVIDER.role("balancer").render(lb, {}).files
    assert "listen [2001:db8::9]:80;" in conf.content
    assert "server [2001:db8::2]:8080 max_fails=1" in conf.content
    (svc,) = PROVIDER.role("server").services(replace(lb, role="server"))
    assert svc.readiness is not None and svc.readiness.url == "http://[2001:db8::9]:8080/ready"
    db = assignment("database", tmp_path / "node", peers=six)
    sql = next(f.content for f in PROVIDER.role("database").render(db, {"db": "x"}).files
               if f.path.name == "init.sql")
    assert "'app'@'2001:db8::2'" in sql


def test_secrets_are_declared_per_role() -> None:
    """Only the database and the servers hold the password; the balancer never sees it."""
    a = assignment("balancer", Path("/srv/n"))
    assert {r: PROVIDER.role(r).secrets(replace(a, role=r))
            for r in ("database", "server", "balancer")} == {
        "database": ("db",), "server": ("db",), "balancer": ()}

"""The web provider for real: MariaDB, two WEBrick servers and nginx in four namespaces."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from functools import partial

import pytest
from weblab import APP_PORT, BALANCER_PORT, LABELS, WebLab, until

from cloudd.errors import TemporaryError
from cloudd.providers.base import Changes
from cloudd.providers.web.provider import PROVIDER, http_get

pytestmark = [pytest.mark.services, pytest.mark.netns]


async def _request(lab: WebLab, method: str, path: str, body: str = "") -> tuple[int, str, str]:
    """One HTTP request to the balancer: (status, X-Served-By, body)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(lab.ns["lb"].ip, BALANCER_PORT), 5)
    try:
        writer.write((f"{method} {path} HTTP/1.0\r\nHost: w\r\n"
                      f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode())
        data = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    head, _, payload = data.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers.get("X-Served-By", ""), payload


async def _served_by(lab: WebLab, n: int = 6) -> set[str]:
    seen = set()
    for _ in range(n):
        status, who, _ = await _request(lab, "GET", "/entries")
        assert status == 200
        seen.add(who)
    return seen


async def _entries(lab: WebLab) -> list[str]:
    status, _, body = await _request(lab, "GET", "/entries")
    assert status == 200, body
    return [e["body"] for e in json.loads(body)]


async def _rebalance(lab: WebLab) -> Changes:
    """The leader re-judges the servers; the balancer node re-renders and reloads if needed."""
    await lab.judge_servers()
    changes = lab.render("lb")
    if changes.reload:
        assert changes.reload == ("nginx",)
        await lab.reload("lb")
    return changes


async def _upstream_ok(lab: WebLab) -> bool:
    (finding,) = await PROVIDER.monitor(lab.cluster())
    return finding.ok


@pytest.mark.timeout(300)
async def test_three_tiers_survive_server_loss_and_kill_9(weblab: WebLab) -> None:
    lab = weblab
    # Nothing runs yet: configuring a role is refused, to be retried.
    with pytest.raises(TemporaryError, match="database w-db unreachable"):
        await PROVIDER.configure(lab.cluster(), "database")
    # Roles come up in the provider's order, each checked by `configure` before the next.
    for role in PROVIDER.role_order:
        for label in [k for k, r in LABELS.items() if r == role]:
            await lab.converge(label)
        await PROVIDER.configure(lab.cluster(), role)

    # Data written through the balancer is read back through it, served by both servers.
    status, who, body = await _request(lab, "POST", "/entries", "first")
    assert status == 201, body
    assert who in {"w-s1", "w-s2"}
    assert await _entries(lab) == ["first"]
    await until(lambda: _served_by_both(lab), "both servers answering through the balancer")
    assert await _upstream_ok(lab)

    # Only server addresses may log in: the balancer's address is refused by MariaDB.
    password = (lab.secrets / "db_password").read_text().strip()
    denied = lab.net.run(lab.ns["lb"], ["mariadb", "-h", lab.ns["db"].ip, "-u", "guestbook",
                                        f"-p{password}", "guestbook", "-e", "SELECT 1"])
    assert denied.returncode != 0, denied.stderr
    assert f"Host '{lab.ns['lb'].ip}' is not allowed to connect" in denied.stderr
    allowed = lab.net.run(lab.ns["s1"], ["mariadb", "-h", lab.ns["db"].ip, "-u", "guestbook",
                                         f"-p{password}", "guestbook", "-e", "SELECT 1"])
    assert allowed.returncode == 0, allowed.stderr

    # A server taken off the wire: upstream re-rendered, nginx reloaded (same master pid).
    nginx_pid = lab.service("lb").pid
    lab.net.cut(lab.ns["s1"])
    # Even before the leader notices, nginx passes over the dead server to the live one.
    status, who, _ = await _request(lab, "GET", "/entries")
    assert (status, who) == (200, "w-s2")
    await lab.judge_servers()
    assert lab.health == {"s1": False, "s2": True}
    (finding,) = await PROVIDER.monitor(lab.cluster())
    assert not finding.ok and finding.node == "w-lb"
    assert finding.message == (f"upstream has ['{lab.ns['s1'].ip}:8080', '{lab.ns['s2'].ip}:8080'],"
                               f" healthy servers are ['{lab.ns['s2'].ip}:8080']")
    changes = await _rebalance(lab)
    assert changes.reload == ("nginx",)
    await until(lambda: _upstream_ok(lab), "the balancer's upstream without s1")
    assert lab.service("lb").pid == nginx_pid and lab.service("lb").starts == 1
    status, _, body = await _request(lab, "POST", "/entries", "while s1 is away")
    assert status == 201, body
    assert await _served_by(lab) == {"w-s2"}

    # Brought back: added again, and answering.
    lab.net.restore(lab.ns["s1"])
    await until(lambda: _healthy_again(lab), "s1 healthy and back in the upstream")
    await until(lambda: _served_by_both(lab), "s1 answering through the balancer again")
    assert lab.service("lb").pid == nginx_pid

    # kill -9 each tier in turn: restarted, and no committed row is lost.
    expected = ["first", "while s1 is away"]
    for label in ("db", "s2", "lb"):
        old = await lab.kill9(label)
        assert lab.service(label).pid not in (None, old)
        await until(lambda: _entries_are(lab, expected), f"entries readable after kill -9 {label}")
        status, _, body = await _request(lab, "POST", "/entries", f"after {label}")
        assert status == 201, body
        expected.append(f"after {label}")
    assert await _entries(lab) == expected
    assert await _upstream_ok(lab)


async def _served_by_both(lab: WebLab) -> bool:
    return await _served_by(lab) == {"w-s1", "w-s2"}


async def _entries_are(lab: WebLab, expected: list[str]) -> bool:
    try:
        status, _, body = await _request(lab, "GET", "/entries")
    except (OSError, TimeoutError):
        return False
    return status == 200 and [e["body"] for e in json.loads(body)] == expected


async def _healthy_again(lab: WebLab) -> bool:
    await _rebalance(lab)
    return lab.health == {"s1": True, "s2": True} and await _upstream_ok(lab)


@pytest.mark.timeout(180)
async def test_relations_are_reloaded_not_restarted(weblab: WebLab) -> None:
    """Grants follow the servers, and a new password reaches database and servers by reload."""
    lab = weblab
    for label in ("db", "s1", "s2"):
        await lab.converge(label)
    pids = {label: lab.service(label).pid for label in ("db", "s1", "s2")}
    # The data dir is initialised once: preparing again keeps it (and its rows).
    data = lab.root / "db" / "mysql" / "data"
    inode = data.stat().st_ino
    await PROVIDER.role("database").prepare(lab.assignment("db"))
    assert data.stat().st_ino == inode

    # s2 leaves the manifest: the database's assignment no longer lists it, its account goes.
    a = lab.assignment("db")
    without = replace(a, peers=tuple(p for p in a.peers if p.node != "w-s2"))
    assert lab.render("db", without).reload == ("mariadbd",)
    await lab.reload("db")
    assert (await http_get(lab.ns["s2"].ip, APP_PORT, "/ready"))[0] == 503
    assert (await http_get(lab.ns["s1"].ip, APP_PORT, "/ready"))[0] == 200
    # Back in: granted again.
    assert lab.render("db").reload == ("mariadbd",)
    await lab.reload("db")
    assert (await http_get(lab.ns["s2"].ip, APP_PORT, "/ready"))[0] == 200

    # The password secret changes: the database takes it on reload, the servers fail until
    # they are re-rendered and reloaded (SIGHUP) too.
    (lab.secrets / "db_password").write_text("a new password\n")
    assert lab.render("db").reload == ("mariadbd",)
    await lab.reload("db")
    assert (await http_get(lab.ns["s1"].ip, APP_PORT, "/ready"))[0] == 503
    for label in ("s1", "s2"):
        assert lab.render(label).reload == ("webrick",)
        await lab.reload(label)
        await until(partial(_ready, lab, label), f"{label} ready with the new password")
    assert {label: lab.service(label).pid for label in ("db", "s1", "s2")} == pids


async def _ready(lab: WebLab, label: str) -> bool:
    return (await http_get(lab.ns[label].ip, APP_PORT, "/ready"))[0] == 200


async def _writes_again(lab: WebLab, body: str) -> bool:
    status, _, _ = await _request(lab, "POST", "/entries", body)
    return status == 201


@pytest.mark.timeout(240)
async def test_a_database_back_empty_gets_the_apps_tables_again(weblab: WebLab) -> None:
    """The database's disk is lost (its host lost power) and it comes back from nothing: the
    servers, which made their tables once, make them again and the site takes writes."""
    lab = weblab
    for label in ("db", "s1", "s2", "lb"):
        await lab.converge(label)
    assert (await _request(lab, "POST", "/entries", "before the loss"))[0] == 201
    await lab.sups.pop("db").stop(within=30)
    shutil.rmtree(lab.root / "db" / "mysql" / "data")
    await lab.converge("db")  # a fresh data directory, the app's account granted again
    await until(partial(_writes_again, lab, "after the loss"), "the site writes again")
    assert await _entries(lab) == ["after the loss"]  # what the lost disk had is gone

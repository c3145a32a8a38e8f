"""Role assignment: dependency order, peer health, and which assignments go out."""

from __future__ import annotations

import base64
from dataclasses import replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest
from shared.batchtype import C1, C2, HEAD, KEY, LOGIN, batch
from shared.batchtype import MANIFEST as BATCH_MANIFEST
from shared.manifests import SHOP

from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud, Ensure, Secret
from cloudd.config.users import User
from cloudd.daemon.leader.assignment import assignments, due, healthy
from cloudd.daemon.network.catalogue import NodePhase, NodeReport
from cloudd.providers.catalog import CATALOG

MANIFEST = SHOP

DB, WEB1, WEB2, LB = "shop-database-1", "shop-server-1", "shop-server-2", "shop-balancer-1"
ALL = {DB, WEB1, WEB2, LB}
#: What the record holds of the secrets the leader made for the hpc cloud.
MADE = {"munge.key": b"\x00made by the leader"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Cloud:
    folder: Path = tmp_path_factory.mktemp("shop")
    (folder / "web.xml").write_text("<domain/>")
    (folder / "shop.yaml").write_text(MANIFEST)
    return load_cloud(folder / "shop.yaml", CATALOG)


def report(node: str, phase: NodePhase = NodePhase.READY, generation: str = "") -> NodeReport:
    return NodeReport(node=node, term=1, generation=generation, phase=phase)


@pytest.mark.parametrize(("ready", "alive", "assigned"), [
    # nothing ready: the database first
    (set(), ALL, [DB]),
    # the database ready: the servers too
    ({DB}, ALL, [DB, WEB1, WEB2]),
    # one server ready is enough for the balancer
    ({DB, WEB1}, ALL, [DB, WEB1, WEB2, LB]),
    # a ready database that is not alive does not count
    ({DB}, ALL - {DB}, [DB]),
])
def test_roles_follow_the_dependency_order(cloud: Cloud, ready: set[str], alive: set[str],
                                           assigned: list[str]) -> None:
    reports = {n: report(n) for n in ready}
    got = assignments(cloud, term=4, reports=reports, alive=alive)
    assert [a.node for a in got] == assigned
    assert {(a.term, a.generation, a.cloud) for a in got} == {(4, cloud.digest, "shop")}


def test_each_node_hears_of_every_other_with_its_health(cloud: Cloud) -> None:
    reports = {DB: report(DB), WEB1: report(WEB1, NodePhase.DEGRADED)}
    lb = assignments(cloud, term=1, reports=reports, alive=ALL)
    assert [a.node for a in lb] == [DB, WEB1, WEB2]  # no server ready: no balancer
    web1 = next(a for a in lb if a.node == WEB1)
    assert [(p.node, p.role, p.healthy) for p in web1.peers] == [
        (DB, "database", True), (WEB2, "server", False), (LB, "balancer", False)]


def test_addresses_are_ip_addresses(cloud: Cloud) -> None:
    (db,) = assignments(cloud, term=1, reports={}, alive=ALL)
    assert db.address == ip_address("192.0.2.177")
    assert {type(p.address) for p in db.peers} == {IPv4Address}


def test_each_role_gets_the_secrets_it_needs_and_no_other(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "db").write_bytes(b"hunter2\n")
    (tmp_path / "shop.yaml").write_text(MANIFEST.replace(
        "settings: {app_port: 8080}", "settings: {app_port: 8080, database_password_ref: db}\n"
        "secrets: {db: {file: db}}"))
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    got = {a.node: a.secrets for a in assignments(cloud, term=1, reports={
        n: report(n) for n in ALL}, alive=ALL)}
    password = (("db", base64.b64encode(b"hunter2\n").decode()),)
    assert got == {DB: password, WEB1: password, WEB2: password, LB: ()}
    # a node's view holds no secret: its leader would have none to send
    withheld = replace(cloud, secrets={"db": Secret()})
    assert {a.secrets for a in assignments(withheld, term=1, reports={}, alive=ALL)} == {()}


def test_a_secret_the_leader_makes_goes_to_the_roles_that_need_it(tmp_path: Path) -> None:
    hpc = batch(tmp_path)
    reports = {n: report(n) for n in (HEAD, C1, C2, LOGIN)}
    alive = set(reports)
    # not made yet: no role that needs it is assigned, nor any after it
    assert hpc.generated == (KEY,)
    assert assignments(hpc, term=1, reports=reports, alive=alive) == ()
    got = {a.node: a.secrets for a in assignments(hpc, term=1, reports=reports, alive=alive,
                                                  generated=MADE)}
    made = (("munge.key", base64.b64encode(b"\x00made by the leader").decode()),)
    assert got == {HEAD: made, C1: made, C2: made, LOGIN: ()}


def test_a_declared_secret_wins_over_a_made_one(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"the operator's")
    hpc = batch(tmp_path, BATCH_MANIFEST + "secrets: {munge.key: {file: key}}\n")
    assert hpc.generated == ()  # declared: the leader makes none
    (head, *_) = assignments(hpc, term=1, reports={}, alive={HEAD}, generated=MADE)
    assert head.secrets == (("munge.key", base64.b64encode(b"the operator's").decode()),)
    # a key named by the settings: the one the type makes is not needed, so not made
    named = batch(tmp_path, BATCH_MANIFEST + "settings: {key_ref: k}\nsecrets: {k: {file: key}}\n")
    assert named.generated == ()


def test_every_node_is_told_the_users(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(MANIFEST + "users: [{name: alice, uid: 1001}]\n")
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    got = assignments(cloud, term=1, reports={n: report(n) for n in ALL}, alive=ALL)
    assert {a.users for a in got} == {(User("alice", 1001, 1001),)} and len(got) == 4


def test_a_stopped_cloud_assigns_nothing(cloud: Cloud) -> None:
    stopped = replace(cloud, ensure=Ensure.STOPPED)
    assert assignments(stopped, term=1, reports={n: report(n) for n in ALL}, alive=ALL) == ()


def test_healthy_needs_ready_and_alive() -> None:
    reports = {DB: report(DB), WEB1: report(WEB1, NodePhase.CONVERGING)}
    assert healthy(DB, reports=reports, alive={DB})
    assert not healthy(DB, reports=reports, alive=set())
    assert not healthy(WEB1, reports=reports, alive={WEB1})
    assert not healthy(WEB2, reports=reports, alive={WEB2})


@pytest.mark.parametrize(("sent", "reported", "alive", "held", "goes"), [
    (False, None, True, False, True),      # never sent
    (True, "gen", True, False, False),     # sent, and the node runs it
    (True, None, True, False, True),       # sent, but the node never reported: again
    (True, "old", True, False, True),      # the node runs another generation: again
    (False, None, False, False, False),    # not alive: it would be lost
    (False, None, True, True, False),      # in maintenance: left alone
])
def test_due(cloud: Cloud, sent: bool, reported: str | None, alive: bool, held: bool,
             goes: bool) -> None:
    [a] = [x for x in assignments(cloud, term=2, reports={}, alive=ALL) if x.node == DB]
    a = replace(a, generation="gen")
    got = due([a], sent={DB: a} if sent else {},
              reports={DB: report(DB, generation=reported)} if reported else {},
              alive={DB} if alive else set(), maintenance={DB} if held else set())
    assert got == ((a,) if goes else ())


#: The shop with its balancer on the first server's node: one node, two roles.
SHARED = MANIFEST.replace("  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]\n",
                          "  balancer: [{address: 192.0.2.176}]\n")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Cloud:
    folder: Path = tmp_path_factory.mktemp("shared")
    (folder / "web.xml").write_text("<domain/>")
    (folder / "shop.yaml").write_text(SHARED)
    return load_cloud(folder / "shop.yaml", CATALOG)


@pytest.mark.parametrize(("ready", "assigned"), [
    (set(), [DB]),
    # the node of server and balancer is assigned with the servers: the roles it holds
    # itself (server, before balancer) it starts itself, in order; it comes at its last role
    ({DB}, [DB, WEB2, WEB1]),
])
def test_a_node_of_several_roles_is_assigned_once_with_them_all(
        shared: Cloud, ready: set[str], assigned: list[str]) -> None:
    got = assignments(shared, term=2, reports={n: report(n) for n in ready},
                      alive={DB, WEB1, WEB2})
    assert [a.node for a in got] == assigned
    for a in got:
        assert a.roles == (("server", "balancer") if a.node == WEB1 else ())
        assert a.role == ("database" if a.node == DB else "server")
    web2 = next((a for a in got if a.node == WEB2), None)
    if web2 is not None:
        (front,) = [p for p in web2.peers if p.node == WEB1]
        assert (front.role, front.roles) == ("server", ("server", "balancer"))


def test_a_node_waits_for_an_earlier_role_only_when_another_node_holds_it(
        tmp_path: Path) -> None:
    """Database and server on one node, a second server elsewhere: the shared node needs no
    ready database to be assigned (it is the database), the other server does."""
    text = MANIFEST.replace("    - {address: 192.0.2.176, image: /img/web1.qcow2}\n",
                            "    - {address: 192.0.2.177}\n")
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(text)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    got = assignments(cloud, term=1, reports={}, alive={DB, WEB2, LB})
    assert [(a.node, a.roles) for a in got] == [(DB, ("database", "server"))]
    got = assignments(cloud, term=1, reports={DB: report(DB)}, alive={DB, WEB2, LB})
    assert [a.node for a in got] == [DB, WEB2, LB]


def test_a_node_whose_later_role_needs_another_nodes_starts_with_what_it_can_run(
        tmp_path: Path) -> None:
    """Database and balancer on one node, the servers elsewhere: the node is given its
    database first (the servers need it ready), and its balancer once a server is ready."""
    text = MANIFEST.replace("  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]\n",
                            "  balancer: [{address: 192.0.2.177}]\n")
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(text)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    alive = {DB, WEB1, WEB2}
    first = assignments(cloud, term=1, reports={}, alive=alive)
    assert [(a.node, a.role, a.roles) for a in first] == [(DB, "database", ())]
    second = assignments(cloud, term=1, reports={DB: report(DB)}, alive=alive)
    assert [(a.node, a.roles) for a in second] == [(DB, ()), (WEB1, ()), (WEB2, ())]
    third = assignments(cloud, term=1, reports={DB: report(DB), WEB2: report(WEB2)},
                        alive=alive)
    assert [(a.node, a.roles) for a in third] == [(WEB1, ()), (WEB2, ()),
                                                  (DB, ("database", "balancer"))]

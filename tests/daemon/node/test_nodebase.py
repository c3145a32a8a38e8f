"""What every node gets before its role: its secrets, the cloud's names in its hosts file when
its type asks for them, and the manifest's users; all under the node's own system root."""

from __future__ import annotations

import base64
import stat
from ipaddress import ip_address
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cloudd import log
from cloudd.config.agent import AgentSettings, NodeSystem
from cloudd.config.model import Cloud, Ensure, Node, PoolHost
from cloudd.config.users import User
from cloudd.daemon.network.catalogue import PeerInfo, RoleAssignment
from cloudd.daemon.node.converge import NodeSide
from cloudd.daemon.node.nodebase import NodeBase
from cloudd.errors import PermanentError
from cloudd.providers.web.spec import WebSettings


def cloud(tmp_path: Path, *, hosts_file: bool) -> Cloud:
    return Cloud(name="batch", type="web", ensure=Ensure.RUNNING, source=tmp_path / "b.yaml",
                 digest="g1", domain_template=None, pool=(PoolHost("pm1", "10.0.0.254"),),
                 roles=("database",),
                 nodes=(Node("batch-db", "database", 1, "10.0.0.1", None, 64, 1),),
                 settings=WebSettings(), secrets={}, hosts_file=hosts_file)


def assignment(*peers: tuple[str, str], users: tuple[User, ...] = ()) -> RoleAssignment:
    return RoleAssignment(
        term=1, cloud="batch", node="batch-db", role="database",
        address=ip_address("10.0.0.1"), generation="g1",
        peers=tuple(PeerInfo(n, "server", ip_address(a), True) for n, a in peers),
        secrets=(("munge.key", base64.b64encode(b"\x00key").decode()),), users=users)


@pytest.fixture
def base(tmp_path: Path) -> NodeBase:
    (tmp_path / "root" / "etc").mkdir(parents=True)
    (tmp_path / "root" / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n")
    return NodeBase(tmp_path / "node" / "secrets", system_root=tmp_path / "root")


async def test_secrets_and_names_are_written_and_follow_the_peers(tmp_path: Path,
                                                                  base: NodeBase) -> None:
    c = cloud(tmp_path, hosts_file=True)
    with capture_logs() as logs:
        await base.prepare(assignment(("batch-web", "10.0.0.2")), c, logger=log.get("t"))
    key = base.secrets_dir / "munge.key"
    assert key.read_bytes() == b"\x00key" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert base.hosts_path.read_text() == (
        "# BEGIN cloudd batch\n10.0.0.1\tbatch-db\n10.0.0.2\tbatch-web\n# END cloudd batch\n"
        "127.0.0.1\tlocalhost\n")
    # a peer added, another gone: the block follows, the rest stays
    await base.prepare(assignment(("batch-web-2", "10.0.0.3")), c, logger=log.get("t"))
    assert base.hosts_path.read_text() == (
        "# BEGIN cloudd batch\n10.0.0.1\tbatch-db\n10.0.0.3\tbatch-web-2\n# END cloudd batch\n"
        "127.0.0.1\tlocalhost\n")
    assert [(e["event"], e["names"]) for e in logs] == [("hosts_written", 2)]


async def test_a_type_without_names_leaves_the_hosts_file_alone(tmp_path: Path,
                                                                base: NodeBase) -> None:
    await base.prepare(assignment(("batch-web", "10.0.0.2")), cloud(tmp_path, hosts_file=False),
                       logger=log.get("t"))
    assert base.hosts_path.read_text() == "127.0.0.1\tlocalhost\n"
    assert (base.secrets_dir / "munge.key").exists()


async def test_a_shadowing_line_is_logged_and_kept(tmp_path: Path, base: NodeBase) -> None:
    base.hosts_path.write_text("127.0.1.1\tbatch-db\n")
    with capture_logs() as logs:
        await base.prepare(assignment(), cloud(tmp_path, hosts_file=True), logger=log.get("t"))
    assert base.hosts_path.read_text().endswith("# END cloudd batch\n127.0.1.1\tbatch-db\n")
    [warning] = [e for e in logs if e["event"] == "hosts_line_shadowed"]
    assert warning["line"] == "127.0.1.1\tbatch-db"


async def test_users_are_refused_before_anything_runs(tmp_path: Path, base: NodeBase) -> None:
    (base.system_root / "etc" / "passwd").write_text("carol:x:1003:1003::/home/carol:/bin/sh\n")
    with pytest.raises(PermanentError, match="user carol exists on this node with uid 1003"):
        await base.prepare(assignment(users=(User("carol", 1004, 1004),)),
                           cloud(tmp_path, hosts_file=False), logger=log.get("t"))


def test_the_node_side_keeps_its_system_files_under_its_settings_root(tmp_path: Path) -> None:
    settings = AgentSettings(name="batch-db", state_dir=tmp_path / "state",
                             node=NodeSystem(system_root=tmp_path / "root"))
    side = NodeSide(me="batch-db", cloud=cloud(tmp_path, hosts_file=True), settings=settings,
                    report=lambda r: None)
    assert side._base == NodeBase(side.root / "secrets", system_root=tmp_path / "root")
    assert AgentSettings(name="n").node.system_root == Path("/")  # a node's own
    with pytest.raises(ValueError, match="must be an absolute path, got 'srv/n1'"):
        NodeSystem(system_root=Path("srv/n1"))

"""The normalized Cloud: names, defaults, order, file-pair roles, layouts, catalog injection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudd.config.catalog import LayoutNode, RoleSpec, Settings, TypeSpec
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Ensure, RunStrategy
from cloudd.config.plain import Plain
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
apiVersion: cloudd/v1
kind: Cloud
name: c1
type: {type}
domain_template: t.xml
pool:
  - {{name: pm1, address: 192.0.2.70}}
  - {{name: pm2, address: 192.0.2.71, libvirt_uri: "qemu+tls://192.0.2.71/system"}}
"""


def manifest(tmp_path: Path, body: str, type_: str = "torque") -> Path:
    (tmp_path / "t.xml").write_text("<domain/>")
    path = tmp_path / "c1.yaml"
    path.write_text(HEAD.format(type=type_) + body)
    return path


def refusal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    return [str(p).removeprefix(f"{path}:") for p in info.value.problems]


def test_nodes_are_flat_ordered_by_role_dependency_with_defaults(tmp_path: Path) -> None:
    path = manifest(tmp_path, """\
roles:
  compute:
    - {address: 192.0.2.11, image: /i/c1.qcow2, vcpus: 4}
    - {address: "2001:db8::12", image: /i/c2.qcow2, host: pm2, run: manual}
  head: [{address: 192.0.2.10, image: /i/h.qcow2, name: boss}]
resources: {memory_mib: 768}
ensure: stopped
""")
    cloud = load_cloud(path, CATALOG)
    assert cloud.ensure is Ensure.STOPPED
    assert cloud.roles == ("head", "compute")  # the type's order, not the file's
    assert [(n.name, n.role, n.index, n.address, n.memory_mib, n.vcpus, n.host, n.run)
            for n in cloud.nodes] == [
        ("boss", "head", 1, "192.0.2.10", 768, 1, None, RunStrategy.ALWAYS),
        ("c1-compute-1", "compute", 1, "192.0.2.11", 768, 4, None, RunStrategy.ALWAYS),
        ("c1-compute-2", "compute", 2, "2001:db8::12", 768, 1, "pm2", RunStrategy.MANUAL),
    ]
    assert cloud.domain_template == tmp_path / "t.xml"
    assert cloud.host("pm2").libvirt_uri == "qemu+tls://192.0.2.71/system"
    assert cloud.node("boss").image == "/i/h.qcow2"
    assert len(cloud.digest) == 64


def test_overlay_unmanaged_and_source_host(tmp_path: Path) -> None:
    path = manifest(tmp_path, """\
roles:
  head: [{address: 192.0.2.10, managed: false}]
  compute:
    - {address: 192.0.2.11, image: /i/c1.qcow2, base_image: /i/base.qcow2, overlay: true,
       source_host: pm1}
""")
    head, compute = load_cloud(path, CATALOG).nodes
    assert (head.managed, head.image) == (False, None)
    assert (compute.overlay, compute.base_image, compute.source_host) == (
        True, "/i/base.qcow2", "pm1")


@pytest.mark.parametrize(("body", "expected"), [
    ("roles:\n  head: [{address: 192.0.2.10}]\n  compute: [{address: 192.0.2.11, image: /c}]\n",
     "10:10: roles.head[0].image: is required for a managed node"),
    ("roles:\n  head: [{address: 192.0.2.10, image: /h}]\n"
     "  compute: [{address: 192.0.2.11, image: /c, overlay: true}]\n",
     "11:13: roles.compute[0].base_image: is required when overlay is true"),
    ("roles:\n  head: [{address: 192.0.2.10, image: h.qcow2}]\n"
     "  compute: [{address: 192.0.2.11, image: /c}]\n",
     "10:39: roles.head[0].image: 'h.qcow2' is not an absolute path"),
    ("roles:\n  head: [{address: 192.0.2.10, image: /h, name: Head_1}]\n"
     "  compute: [{address: 192.0.2.11, image: /c}]\n",
     "10:49: roles.head[0].name: 'Head_1' is not a DNS label (lowercase letters, digits and "
     "'-', 1 to 63 characters, not starting or ending with '-')"),
    ("roles:\n  head: [{address: 192.0.2.10, image: /h, name: x}]\n"
     "  compute: [{address: 192.0.2.11, image: /c, name: x}]\n",
     "11:52: roles.compute[0].name: name x is already used by node x"),
    ("roles:\n  head: [{address: 192.0.2.10, image: /h, memory_mib: 10}]\n"
     "  compute: [{address: 192.0.2.11, image: /c}]\n",
     "10:55: roles.head[0].memory_mib: should be greater than or equal to 64, not 10"),
    ("roles:\n  head: [{address: 192.0.2.10, image: /h, run: sometimes}]\n"
     "  compute: [{address: 192.0.2.11, image: /c}]\n",
     "10:48: roles.head[0].run: should be 'always', 'rerun-on-failure' or 'manual', "
     "not 'sometimes'"),
    ("roles:\n  head: {address: 192.0.2.10}\n  compute: [{address: 192.0.2.11, image: /c}]\n",
     "10:9: roles.head: must be a list of nodes, or {addresses_file: PATH, images_file: PATH}"),
])
def test_node_problems(tmp_path: Path, body: str, expected: str) -> None:
    assert refusal(manifest(tmp_path, body)) == [expected]


def test_a_layout_setting_chooses_the_roles(tmp_path: Path) -> None:
    @dataclass(frozen=True, kw_only=True)
    class Shaped(Plain):
        layout: str = "small"

    catalog = {"shaped": TypeSpec("shaped", Shaped, layout_field="layout", layouts={
        "small": (RoleSpec("controller", max_nodes=1),
                  RoleSpec("servers", min_nodes=0, required=False)),
        "large": (RoleSpec("zookeeper"), RoleSpec("master", max_nodes=1))})}
    small = manifest(tmp_path, "roles:\n  controller: [{address: 192.0.2.10, image: /a}]\n",
                     "shaped")
    assert load_cloud(small, catalog).roles == ("controller",)
    missing = manifest(tmp_path, "roles:\n  master: [{address: 192.0.2.10, image: /a}]\n"
                       "settings: {layout: large}\n", "shaped")
    with pytest.raises(ConfigError) as info:
        load_cloud(missing, catalog)
    assert [str(p).removeprefix(f"{missing}:") for p in info.value.problems] == [
        "9:1: roles.zookeeper: missing role 'zookeeper': type shaped needs at least 1 "
        "zookeeper node"]
    wrong = manifest(tmp_path, "roles:\n  controller: [{address: 192.0.2.10, image: /a}]\n"
                     "settings: {layout: large}\n", "shaped")
    with pytest.raises(ConfigError) as info:
        load_cloud(wrong, catalog)
    assert str(info.value.problems[0]).removeprefix(f"{wrong}:").startswith(
        "10:3: roles.controller: unknown role 'controller' for type shaped")


def test_catalog_is_an_argument(tmp_path: Path) -> None:
    @dataclass(frozen=True, kw_only=True)
    class Tiny(Plain):
        colour: str = "blue"

    catalog = {"tiny": TypeSpec("tiny", Tiny, roles=(RoleSpec("only", 2, 2),))}
    path = manifest(tmp_path, "roles:\n  only:\n    - {address: 192.0.2.1, image: /a}\n"
                    "    - {address: 192.0.2.2, image: /b}\nsettings: {colour: red}\n", "tiny")
    cloud = load_cloud(path, catalog)
    assert [n.name for n in cloud.nodes] == ["c1-only-1", "c1-only-2"]
    assert cloud.settings == Tiny(colour="red")


def test_secrets_resolve_relative_to_the_manifest(tmp_path: Path) -> None:
    path = manifest(tmp_path, """\
roles:
  database: [{address: 192.0.2.10, image: /d}]
  server: [{address: 192.0.2.11, image: /s}]
  balancer: [{address: 192.0.2.12, image: /b}]
settings: {database_password_ref: db}
secrets: {db: {file: secrets/db.txt}}
""", "web")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db.txt").write_text("hunter2\n")
    cloud = load_cloud(path, CATALOG)
    assert cloud.secrets["db"].value == b"hunter2\n"
    assert tmp_path / "secrets" / "db.txt" in cloud.inputs
    assert cloud.settings.database_password_ref == "db"  # type: ignore[attr-defined]
    assert "hunter2" not in repr(cloud)
    # a node agent reads neither the template nor the secrets: it is sent what its role needs
    node = load_cloud(path, CATALOG, with_template=False)
    assert node.secrets["db"].held is False and node.template_text is None


def test_example_slurm_reads_its_list_files() -> None:
    cloud = load_cloud(REPO / "manifests" / "slurm.yaml", CATALOG, with_secrets=False)
    assert [(n.address, n.image) for n in cloud.nodes_of("compute")] == [
        (f"192.0.2.2{i}", f"/var/lib/cloudd/images/slurm-c{i}.qcow2") for i in (1, 2, 3)]


@pytest.mark.parametrize("example", ["slurm", "torque"])
def test_the_batch_examples_name_their_nodes_in_every_hosts_file_and_a_user(example: str) -> None:
    # Both schedulers find nodes by name (TORQUE's trqauthd its own host's too); jobs run as
    # a user who has the same uid on every node.
    cloud = load_cloud(REPO / "manifests" / f"{example}.yaml", CATALOG, with_secrets=False)
    assert cloud.hosts_file is True
    assert [(u.name, u.uid) for u in cloud.users] == [("alice", 1001)]


def test_one_address_under_several_roles_is_one_node_holding_them(tmp_path: Path) -> None:
    """The node is declared by its one entry that says more than address and name, and is
    named after that role; every role counts it; nodes_of finds it under each."""
    path = manifest(tmp_path, """\
roles:
  database: [{address: 192.0.2.10}]
  balancer: [{address: 192.0.2.10, image: /i/front.qcow2, vcpus: 2}]
  server:
    - {address: 192.0.2.10}
    - {address: 192.0.2.11, image: /i/s2.qcow2}
""", type_="web")
    cloud = load_cloud(path, CATALOG)
    assert [(n.name, n.role, n.roles, n.image, n.vcpus) for n in cloud.nodes] == [
        ("c1-balancer-1", "balancer", ("database", "server", "balancer"), "/i/front.qcow2", 2),
        ("c1-server-2", "server", ("server",), "/i/s2.qcow2", 1)]
    assert cloud.roles == ("database", "server", "balancer")
    assert [n.name for n in cloud.nodes_of("server")] == ["c1-balancer-1", "c1-server-2"]
    assert [n.name for n in cloud.nodes_of("database")] == ["c1-balancer-1"]


def test_a_shared_node_may_be_declared_under_any_of_its_roles(tmp_path: Path) -> None:
    """The declaring entry need not be the first role's: the node's role is then that one,
    its roles still come in the type's order (the order its services start in)."""
    path = manifest(tmp_path, """\
roles:
  compute: [{address: 192.0.2.10, name: boss, managed: false}, {address: 192.0.2.11,
            managed: false}]
  head: [{address: 192.0.2.10}]
""")
    boss, other = load_cloud(path, CATALOG).nodes
    assert (boss.name, boss.role, boss.roles, boss.managed) == (
        "boss", "compute", ("head", "compute"), False)
    assert other.roles == ("compute",)


@pytest.mark.parametrize(("body", "message"), [
    ("""\
roles:
  head: [{address: 192.0.2.10, image: /i/h.qcow2}]
  compute: [{address: 192.0.2.10, image: /i/c.qcow2}]
""", "11:13: roles.compute[0]: address 192.0.2.10 is the node declared at roles.head[0] "
     "(role head); a further role's entry names it by address (and name) only, this one "
     "also gives image"),
    ("""\
roles:
  head: [{address: 192.0.2.10, image: /i/h.qcow2, name: boss}]
  compute: [{address: 192.0.2.10, name: worker}]
""", "10:10: roles.head[0]: address 192.0.2.10 is one node, named differently under its "
     "roles: boss, worker"),
    ("""\
roles:
  head: [{address: 192.0.2.10, image: /i/h.qcow2}]
  compute: [{address: 192.0.2.11, image: /i/c.qcow2}, {address: 192.0.2.11}]
""", "11:65: roles.compute[1].address: address 192.0.2.11 is already used by node "
     "c1-compute-1"),
])
def test_a_shared_node_is_refused_when_its_entries_disagree(tmp_path: Path, body: str,
                                                           message: str) -> None:
    assert refusal(manifest(tmp_path, body)) == [message]


def test_a_types_layout_check_sees_every_node_with_its_roles(tmp_path: Path) -> None:
    @dataclass(frozen=True, kw_only=True)
    class Empty(Plain):
        """No settings."""

    seen: list[tuple[LayoutNode, ...]] = []

    def check(settings: Settings, nodes: tuple[LayoutNode, ...]) -> str | None:
        seen.append(nodes)
        return None if any(len(n.roles) > 1 for n in nodes) else "a and b share a node here"

    catalog = {"pair": TypeSpec("pair", Empty, roles=(RoleSpec("a"), RoleSpec("b")),
                                layout_check=check)}
    apart = ("roles:\n  a: [{address: 192.0.2.1, image: /a}]\n"
             "  b: [{address: 192.0.2.2, image: /b}]\n")
    path = manifest(tmp_path, apart, "pair")
    with pytest.raises(ConfigError) as info:
        load_cloud(path, catalog)
    assert [f"{p.field}: {p.message}" for p in info.value.problems] == [
        "roles: a and b share a node here"]
    path.write_text(path.read_text().replace("b: [{address: 192.0.2.2, image: /b}]",
                                             "b: [{address: 192.0.2.1}]"))
    assert [n.roles for n in load_cloud(path, catalog).nodes] == [("a", "b")]
    assert seen[-1] == (LayoutNode("192.0.2.1", ("a", "b")),)

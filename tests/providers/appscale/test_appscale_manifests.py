"""The shipped AppScale manifests (the thesis's two deployments) load with the real catalog,
their layouts and AppScalefiles are taken by appscale-tools 3.8.1's own parser, and a
manifest whose layout the tools refuse is refused with the tools' reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudd.config.catalog import LayoutNode
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.errors import ConfigError
from cloudd.providers.appscale import appscalefile, layout
from cloudd.providers.catalog import CATALOG

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"
HEAD = ("zookeeper", "database", "master")


def load(path: Path) -> Cloud:
    return load_cloud(path, CATALOG, with_secrets=False)


def nodes_of(cloud: Cloud) -> tuple[LayoutNode, ...]:
    return tuple(LayoutNode(n.address, n.roles) for n in cloud.nodes)


def test_the_default_deployment_is_one_head_and_two_workers() -> None:
    cloud = load(MANIFESTS / "appscale.yaml")
    assert [(n.name, n.roles) for n in cloud.nodes] == [
        ("gae-head", (*HEAD, "taskqueue", "memcache")),
        ("gae-w1", ("database", "taskqueue", "memcache", "compute")),
        ("gae-w2", ("database", "taskqueue", "memcache", "compute"))]
    assert [n.image for n in cloud.nodes] == [
        f"/var/lib/cloudd/images/as-{n}.qcow2" for n in ("head", "w1", "w2")]


def test_the_custom_deployment_holds_four_roles_on_its_head() -> None:
    cloud = load(MANIFESTS / "appscale-custom.yaml")
    assert [(n.address, n.roles, n.memory_mib) for n in cloud.nodes] == [
        ("192.0.2.40", (*HEAD, "memcache"), 4096), ("192.0.2.43", ("compute",), 2048),
        ("192.0.2.44", ("compute",), 2048)]
    # only the master's node receives the administrator's password and the seed of the key
    # it logs into the others with; every node gets the host key's seed
    assert dict(cloud.role_secrets)["master"] == ("secret.key", "ssh-host.seed",
                                                  "ssh-client.seed", "admin")
    assert {s for r, s in cloud.role_secrets.items() if r != "master"} == {
        ("secret.key", "ssh-host.seed")}
    assert {g.name for g in cloud.generated} == {"secret.key", "ssh-host.seed",
                                                 "ssh-client.seed"}


@pytest.mark.parametrize("name", ["appscale.yaml", "appscale-custom.yaml"])
def test_the_tools_take_the_examples(appscale_parser: Any, tmp_path: Path, name: str) -> None:
    cloud = load(MANIFESTS / name)
    written = [s.as_yaml() for s in layout.ips_layout(nodes_of(cloud))]
    appscale_parser.warned.clear()
    assert appscale_parser.verdict(written, cloud.settings.replication) is None
    assert appscale_parser.warned == []
    text = appscalefile.render(nodes_of(cloud), cloud.settings, password=b"example-pass")
    (tmp_path / appscalefile.NAME).write_text(text)
    options = appscale_parser.up(tmp_path)
    assert options.ips == written and options.admin_user == cloud.settings.admin_email


@pytest.fixture
def custom(tmp_path: Path) -> dict[str, Any]:
    """The custom example as data, to change and write back beside its template."""
    shutil.copytree(MANIFESTS / "templates", tmp_path / "templates")
    data: dict[str, Any] = yaml.safe_load((MANIFESTS / "appscale-custom.yaml").read_text())
    return data


def refusal(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load(path)
    return [f"{p.field}: {p.message}" for p in err.value.problems]


def test_no_compute_is_refused_with_the_tools_reason(custom: dict[str, Any],
                                                     tmp_path: Path) -> None:
    del custom["roles"]["compute"]
    assert refusal(tmp_path, custom) == [
        "roles: AppScale (appscale-tools 3.8.1) refuses this layout: Need to specify at least "
        "one compute node."]


def test_no_database_is_refused_with_the_tools_reason(custom: dict[str, Any],
                                                      tmp_path: Path) -> None:
    del custom["roles"]["database"]
    assert refusal(tmp_path, custom) == [
        "roles: AppScale (appscale-tools 3.8.1) refuses this layout: At least one database "
        "node must be provided."]


def test_more_copies_than_databases_are_refused(custom: dict[str, Any], tmp_path: Path) -> None:
    custom["settings"]["replication"] = 2
    assert refusal(tmp_path, custom) == [
        "roles: AppScale (appscale-tools 3.8.1) refuses this layout: Replication factor cannot "
        "exceed # of databases."]


def test_login_is_no_role_of_appscale(custom: dict[str, Any], tmp_path: Path) -> None:
    custom["roles"]["login"] = [{"address": "192.0.2.40"}]
    (problem,) = refusal(tmp_path, custom)
    assert problem.startswith("roles.login: unknown role 'login' for type appscale (roles: "
                              "zookeeper, database, master, taskqueue, memcache, search, "
                              "search2, compute, appengine, load_balancer, open)")


def test_one_master_only(custom: dict[str, Any], tmp_path: Path) -> None:
    custom["roles"]["master"].append({"address": "192.0.2.45", "image": "/i/m2.qcow2"})
    assert refusal(tmp_path, custom) == [
        "roles.master: has 2 nodes; type appscale needs exactly 1"]


def test_the_password_is_a_secret_file(custom: dict[str, Any], tmp_path: Path) -> None:
    del custom["settings"]["admin_password_ref"]
    assert refusal(tmp_path, custom) == ["settings.admin_password_ref: is required"]

"""Which secrets the leader makes for a cloud: those of its type's that a role of the cloud
needs and the manifest does not declare."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.config.catalog import GeneratedSecret
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.providers.appscale.spec import SECRET_KEY
from cloudd.providers.appscale.sshtrust import CLIENT_SEED, HOST_SEED
from cloudd.providers.catalog import CATALOG

APPSCALE = """\
apiVersion: cloudd/v1
kind: Cloud
name: gae
type: appscale
domain_template: t.xml
pool: [{name: pm1, address: 192.0.2.70}]
roles:
  master: [{address: 192.0.2.10, image: /a}]
  database: [{address: 192.0.2.10}]
  compute: [{address: 192.0.2.11, image: /b}]
"""
ADMIN = "settings: {admin_password_ref: admin}\nsecrets: {admin: {file: admin}}\n"


def load(tmp_path: Path, text: str) -> Cloud:
    (tmp_path / "t.xml").write_text("<domain/>")
    (tmp_path / "admin").write_text("pw")
    (tmp_path / "key").write_text("mine")
    (tmp_path / "m.yaml").write_text(text)
    return load_cloud(tmp_path / "m.yaml", CATALOG)


def test_an_appscale_deployments_key_is_made_for_every_node(tmp_path: Path) -> None:
    cloud = load(tmp_path, APPSCALE + ADMIN)
    assert cloud.generated == (SECRET_KEY, CLIENT_SEED, HOST_SEED)
    node = ("secret.key", "ssh-host.seed")
    assert dict(cloud.role_secrets) == {"database": node, "compute": node,
                                        "master": (*node, "ssh-client.seed", "admin")}


def test_a_declared_secret_of_that_name_is_the_operators(tmp_path: Path) -> None:
    cloud = load(tmp_path, APPSCALE + "settings: {admin_password_ref: admin}\n"
                                      "secrets: {admin: {file: admin}, secret.key: {file: key}}\n")
    assert cloud.generated == (CLIENT_SEED, HOST_SEED)
    assert cloud.secrets["secret.key"].value == b"mine"


def test_a_type_that_makes_none_makes_none(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text("<domain/>")
    head = APPSCALE.split("roles:")[0].replace("type: appscale", "type: web")
    cloud = load(tmp_path, head + "roles:\n"
                 "  database: [{address: 192.0.2.10, image: /a}]\n"
                 "  server: [{address: 192.0.2.11, image: /b}]\n"
                 "  balancer: [{address: 192.0.2.12, image: /c}]\n")
    assert cloud.generated == () and cloud.hosts_file is False


@pytest.mark.parametrize("size", [0, 15, 4097])
def test_a_generated_secret_has_a_sane_size(size: int) -> None:
    with pytest.raises(ValueError, match=f"generated secret k: {size} bytes is outside 16 to "
                                         "4096"):
        GeneratedSecret("k", size)

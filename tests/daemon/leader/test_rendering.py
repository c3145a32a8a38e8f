"""A node's domain from the cloud's template: identity, metadata, and the template cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cloudd.config.manifest import load_cloud
from cloudd.daemon.leader.desired import desired_of
from cloudd.daemon.leader.rendering import DomainRenderer, template_extra
from cloudd.providers.catalog import CATALOG

from .test_assignment import DB, MANIFEST

TEMPLATE = ("<domain type='qemu'><name>${name}</name><os><cmdline>${cmdline}</cmdline></os>"
            "${metadata}<log>${serial_log}</log></domain>")


def test_a_domain_carries_the_nodes_identity_and_the_term(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    db = next(n for n in desired_of(cloud).nodes if n.name == DB)
    xml = DomainRenderer(port=7100, pki_dir="/etc/cloudd/pki").render(cloud, db, 9)
    assert f"<name>shop-{DB}</name>" in xml
    assert (f"cloudd.cloud=shop cloudd.node={DB} cloudd.role=database "
            "cloudd.ip=192.0.2.177/24 cloudd.members=pm1@192.0.2.70:7100 cloudd.term=9 "
            "cloudd.pki=/etc/cloudd/pki") in xml
    assert 'term="9"' in xml and 'role="database"' in xml
    assert f"<log>/var/log/libvirt/qemu/shop-{DB}.serial.log</log>" in xml


def test_the_template_comes_with_the_cloud_never_from_a_path(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    db = desired_of(cloud).nodes[0]
    renderer = DomainRenderer(port=7100, pki_dir="")
    renderer.render(cloud, db, 1)
    (tmp_path / "web.xml").write_text("<domain>changed ${name}</domain>")
    assert "<os>" in renderer.render(cloud, db, 1)  # the generation's text, as loaded
    other = replace(cloud, template_text="<domain>other ${name}</domain>")
    assert renderer.render(other, db, 1).startswith("<domain>other")


def test_the_manifests_own_serial_log_wins(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = replace(load_cloud(tmp_path / "shop.yaml", CATALOG),
                    template_values={"serial_log": "/dev/null", "bridge": "br0"})
    assert template_extra(cloud, DB) == {"serial_log": "/dev/null", "bridge": "br0"}

"""A node's domain from the cloud's template: identity, metadata, the template cache, and the
generation fingerprint the hosts check commands by."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from shared.manifests import SHOP

from cloudd.config.intent import Ensure
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.errors import PermanentError
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.domains import DomainRenderer, node_of_domain, template_extra, uses_seed

MANIFEST = SHOP
DB = "shop-database-1"

TEMPLATE = ("<domain type='qemu'><name>${name}</name><os><cmdline>${cmdline}</cmdline></os>"
            "${metadata}<log>${serial_log}</log></domain>")


def test_a_domain_carries_the_nodes_identity_and_the_term(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    xml = DomainRenderer(port=7100, pki_dir="/etc/cloudd/pki").render(cloud, DB, 9)
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
    db = cloud.nodes[0].name
    renderer = DomainRenderer(port=7100, pki_dir="")
    renderer.render(cloud, db, 1)
    (tmp_path / "web.xml").write_text("<domain>changed ${name}</domain>")
    assert "<os>" in renderer.render(cloud, db, 1)  # the generation's text, as loaded
    # the template edited in place is a new generation (its digest covers the template)
    edited = load_cloud(tmp_path / "shop.yaml", CATALOG)
    assert edited.digest != cloud.digest
    assert renderer.render(edited, db, 1).startswith("<domain>changed")
    other = replace(edited, template_text="<domain>other ${name}</domain>")
    assert renderer.render(other, db, 1).startswith("<domain>other")
    with pytest.raises(PermanentError, match="holds no domain template for cloud shop"):
        renderer.render(replace(cloud, template_text=None), db, 1)
    assert renderer.generation(replace(cloud, template_text=None)) == ""


def test_the_manifests_own_serial_log_wins(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = replace(load_cloud(tmp_path / "shop.yaml", CATALOG),
                    template_values={"serial_log": "/dev/null", "bridge": "br0"})
    assert template_extra(cloud, DB, seed_dir="/img") == {
        "serial_log": "/dev/null", "bridge": "br0", "seed": f"/img/shop-{DB}.seed.iso"}


SEEDED = ("<domain type='qemu'><name>${name}</name>${metadata}<devices><disk type='file' "
          "device='cdrom'><source file='${seed}'/><readonly/></disk></devices></domain>")


@pytest.mark.parametrize(("seed_dir", "path"), [
    ("/var/lib/cloudd/images", f"/var/lib/cloudd/images/shop-{DB}.seed.iso"),
    ("/srv/images/", f"/srv/images/shop-{DB}.seed.iso"),
])
def test_the_seed_is_in_the_first_image_folder_whoever_renders(tmp_path: Path, seed_dir: str,
                                                              path: str) -> None:
    """Leader and host render the same path: it depends on the manifest, the node and the
    hosts' first image folder only (not on the term, nor on which host)."""
    (tmp_path / "web.xml").write_text(SEEDED)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    renders = {DomainRenderer(port=7100, pki_dir=p, seed_dir=seed_dir).render(cloud, DB, t)
               .split("<source file='")[1].split("'")[0]
               for p in ("/a", "/b") for t in (1, 7)}
    assert renders == {path}
    assert uses_seed(SEEDED) and not uses_seed(TEMPLATE)


def test_a_manifest_cannot_say_where_the_seed_is(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text(SEEDED)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = replace(load_cloud(tmp_path / "shop.yaml", CATALOG),
                    template_values={"seed": "/etc/shadow"})
    with pytest.raises(PermanentError, match="template value 'seed' of cloud shop is cloudd's "
                                             "own"):
        DomainRenderer(port=7100, pki_dir="").render(cloud, DB, 1)


def shop(tmp_path: Path) -> Cloud:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    return load_cloud(tmp_path / "shop.yaml", CATALOG)


def test_only_managed_nodes_of_the_manifest_are_rendered(tmp_path: Path) -> None:
    cloud = shop(tmp_path)
    renderer = DomainRenderer(port=7100, pki_dir="")
    with pytest.raises(PermanentError, match="node ghost is not in the manifest of cloud shop"):
        renderer.render(cloud, "ghost", 1)
    unmanaged = replace(cloud, nodes=tuple(replace(n, managed=False) for n in cloud.nodes))
    with pytest.raises(PermanentError, match=f"node {DB} of cloud shop is not managed"):
        renderer.render(unmanaged, DB, 1)
    assert node_of_domain(cloud, f"shop-{DB}") == cloud.node(DB)
    assert node_of_domain(cloud, DB) is None


def test_the_generation_follows_what_hosts_check_and_nothing_else(tmp_path: Path) -> None:
    cloud = shop(tmp_path)
    renderer = DomainRenderer(port=7100, pki_dir="")
    before = renderer.generation(cloud)
    assert len(before) == 64
    # the same cloud from another file, in other words: the same generation
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "web.xml").write_text(TEMPLATE)
    (tmp_path / "copy" / "shop.yaml").write_text(MANIFEST.replace("type: web", "type:  web"))
    elsewhere = load_cloud(tmp_path / "copy" / "shop.yaml", CATALOG)
    assert elsewhere.digest != cloud.digest
    assert DomainRenderer(port=7100, pki_dir="").generation(elsewhere) == before
    # what a host checks a command against: another generation
    bigger = replace(cloud, nodes=(replace(cloud.nodes[0], memory_mib=1024),
                                   *cloud.nodes[1:]))
    assert renderer.generation(bigger) != before
    moved = replace(cloud, pool=(replace(cloud.pool[0], address="192.0.2.99"),))
    assert renderer.generation(moved) != before
    assert renderer.generation(replace(cloud, ensure=Ensure.STOPPED)) != before
    assert renderer.generation(replace(cloud, template_text="<domain>${name}</domain>")) \
        != before
    # no template held: no generation at all
    missing = replace(cloud, template_text=None)
    assert DomainRenderer(port=7100, pki_dir="").generation(missing) == ""

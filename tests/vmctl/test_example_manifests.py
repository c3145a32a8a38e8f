"""The example manifests with their shipped templates: every managed node's domain renders
(each placeholder has a value) and passes a host's check with the default image folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.config.manifest import load_cloud
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.confine import Folders, problem
from cloudd.vmctl.domains import SERIAL_LOG_DIR, DomainRenderer
from cloudd.vmctl.hostagent import DEFAULT_IMAGE_DIRS

REPO = Path(__file__).resolve().parents[2]
FOLDERS = Folders(images=tuple(str(d) for d in DEFAULT_IMAGE_DIRS), logs=(SERIAL_LOG_DIR,))


@pytest.mark.parametrize("manifest", sorted((REPO / "manifests").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_node_of_an_example_renders_and_stays_in_the_image_folder(manifest: Path) -> None:
    cloud = load_cloud(manifest, CATALOG, with_secrets=False)
    renderer = DomainRenderer(port=7760, pki_dir="")
    managed = [n for n in cloud.nodes if n.managed]
    assert managed
    for node in managed:
        xml = renderer.render(cloud, node.name, 1)
        assert "${" not in xml
        assert problem(xml, FOLDERS) is None, (node.name, problem(xml, FOLDERS))

"""A node's agent that starts from its identity alone: settings from the kernel command line,
the manifest fetched from the pool hosts, then membership and a role like any member."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cloudd_lab.agentlab import CLOUDD

from cloudd.config.manifest import load_cloud
from cloudd.config.portable import portable_text
from cloudd.daemon.node.boot import parse_member, settings_for
from cloudd.errors import ClouddError
from cloudd.providers.catalog import catalog
from cloudd.vmctl.identity import from_cmdline

REPO = Path(__file__).resolve().parents[2]
LINE = ("console=ttyS0 cloudd.cloud=lab cloudd.node=lab-server-1 cloudd.role=server "
        "cloudd.ip=10.1.2.3/24 cloudd.members=pm1@10.1.2.1:7760,pm2@10.1.2.2:7761 "
        "cloudd.term=3 cloudd.pki=/etc/cloudd/pki")


def test_settings_from_identity() -> None:
    settings, seeds = settings_for(from_cmdline(LINE), state_dir=Path("/s"))
    assert settings.name == "lab-server-1"
    assert (settings.listen.address, settings.listen.port) == ("10.1.2.3", 7760)
    assert settings.pki.cert == Path("/etc/cloudd/pki/lab-server-1.crt")
    assert settings.manifest_dir == Path("/s/manifests")
    assert [(s.name, s.address, s.port) for s in seeds] == [("pm1", "10.1.2.1", 7760),
                                                           ("pm2", "10.1.2.2", 7761)]


@pytest.mark.parametrize("bad", ["10.1.2.1:7760", "pm1@10.1.2.1", "@10.1.2.1:7760",
                                 "pm1@10.1.2.1:port"])
def test_bad_member_is_refused(bad: str) -> None:
    with pytest.raises(ClouddError, match="is not name@address:port"):
        parse_member(bad)


def test_identity_without_members_or_pki_is_refused() -> None:
    with pytest.raises(ClouddError, match="names no member"):
        settings_for(from_cmdline(LINE.replace(
            "cloudd.members=pm1@10.1.2.1:7760,pm2@10.1.2.2:7761 ", "")))
    with pytest.raises(ClouddError, match="names no certificate folder"):
        settings_for(from_cmdline(LINE.replace(" cloudd.pki=/etc/cloudd/pki", "")))


def test_portable_manifest_loads_elsewhere(tmp_path: Path) -> None:
    source = REPO / "manifests" / "web.yaml"
    cloud = load_cloud(source, catalog())
    moved = tmp_path / "web.yaml"
    moved.write_text(portable_text(cloud, source.read_text()))
    again = load_cloud(moved, catalog())
    assert again.domain_template == cloud.domain_template
    assert again.nodes == cloud.nodes


def test_cli_refuses_a_bad_identity(tmp_path: Path) -> None:
    line = tmp_path / "cmdline"
    line.write_text("console=ttyS0 cloudd.cloud=lab\n")
    done = subprocess.run([CLOUDD, "--from-cmdline", str(line)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{line}: kernel command line lacks cloudd.node, "
                                   "cloudd.role, cloudd.ip, cloudd.term")


def test_portable_manifest_inlines_list_files_and_loads_without_the_template(
        tmp_path: Path) -> None:
    source = REPO / "manifests" / "slurm.yaml"
    cloud = load_cloud(source, catalog())
    moved = tmp_path / "slurm.yaml"
    moved.write_text(portable_text(cloud, source.read_text()).replace(
        str(cloud.domain_template), "/nonexistent/template.xml"))
    with pytest.raises(ClouddError, match="no such file"):
        load_cloud(moved, catalog())
    again = load_cloud(moved, catalog(), with_template=False)
    assert [(n.name, n.address, n.image) for n in again.nodes] == [
        (n.name, n.address, n.image) for n in cloud.nodes]

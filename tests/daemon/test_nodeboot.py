"""A node's agent that starts from its identity alone: settings from the kernel command line,
the manifest fetched from the pool hosts, then membership and a role like any member."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import CLOUDD

from cloudd.config.manifest import load_cloud
from cloudd.config.portable import Recipient, text_for
from cloudd.daemon.node.boot import parse_member, read_identity_file, settings_for
from cloudd.errors import ClouddError
from cloudd.providers.catalog import catalog
from cloudd.vmctl.identity import NodeIdentity, from_cmdline, identity_json

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


def example(tmp_path: Path, name: str) -> Path:
    """An example manifest, its secrets' files made here instead of under /etc/cloudd."""
    text = (REPO / "manifests" / name).read_text()
    tmp_path.mkdir(exist_ok=True)
    for line in text.splitlines():
        if "/etc/cloudd/secrets/" in line:
            path = line.split("file: ")[1].rstrip("}")
            (tmp_path / Path(path).name).write_text(f"secret of {name}\n")
            text = text.replace(path, str(tmp_path / Path(path).name))
    (tmp_path / name).write_text(text)
    for folder in ("templates", "lists"):
        if not (tmp_path / folder).exists():
            shutil.copytree(REPO / "manifests" / folder, tmp_path / folder)
    return tmp_path / name


def test_a_pool_hosts_text_loads_elsewhere_with_its_template_and_secrets(
        tmp_path: Path) -> None:
    cloud = load_cloud(example(tmp_path / "a", "web.yaml"), catalog())
    moved = tmp_path / "b" / "web.yaml"
    moved.parent.mkdir()
    moved.write_text(text_for(cloud, Recipient.HOST))
    moved.chmod(0o600)  # as the manifest folder writes it
    again = load_cloud(moved, catalog())
    assert again.domain_template is None and again.template_text == cloud.template_text
    assert again.secrets == cloud.secrets and again.nodes == cloud.nodes


def test_a_nodes_view_inlines_list_files_and_carries_no_secret(tmp_path: Path) -> None:
    cloud = load_cloud(example(tmp_path / "a", "slurm.yaml"), catalog())
    moved = tmp_path / "b" / "slurm.yaml"
    moved.parent.mkdir()
    moved.write_text(text_for(cloud, Recipient.NODE))
    again = load_cloud(moved, catalog(), with_template=False)
    assert [(n.name, n.address, n.image) for n in again.nodes] == [
        (n.name, n.address, n.image) for n in cloud.nodes]
    assert again.inputs == () and again.template_text is None
    assert list(again.secrets) == ["munge"] and not again.secrets["munge"].held


def test_cli_refuses_a_bad_identity(tmp_path: Path) -> None:
    line = tmp_path / "cmdline"
    line.write_text("console=ttyS0 cloudd.cloud=lab\n")
    done = subprocess.run([CLOUDD, "--from-cmdline", str(line)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{line}: kernel command line lacks cloudd.node, "
                                   "cloudd.role, cloudd.ip, cloudd.term")


def identity_file(folder: Path, **change: object) -> Path:
    """An identity file as cloud-init writes it from a seed (etc/cloudd/identity.json)."""
    ident = NodeIdentity(**{**from_cmdline(LINE).__dict__, "pki": "", **change})  # type: ignore[arg-type]
    path = folder / "etc" / "cloudd" / "identity.json"
    path.parent.mkdir(parents=True)
    path.write_text(identity_json(ident))
    return path


def test_settings_from_a_seeds_identity_file(tmp_path: Path) -> None:
    """Same settings as from the command line, the certificates in the pki folder beside
    the file."""
    path = identity_file(tmp_path)
    settings, seeds = settings_for(read_identity_file(path), state_dir=Path("/s"))
    pki = tmp_path / "etc" / "cloudd" / "pki"
    assert (settings.pki.ca, settings.pki.cert, settings.pki.key) == (
        pki / "ca.crt", pki / "lab-server-1.crt", pki / "lab-server-1.key")
    assert settings.name == "lab-server-1"
    assert (settings.listen.address, settings.listen.port) == ("10.1.2.3", 7760)
    assert settings.manifest_dir == Path("/s/manifests")
    assert [(s.name, s.address, s.port) for s in seeds] == [("pm1", "10.1.2.1", 7760),
                                                           ("pm2", "10.1.2.2", 7761)]


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: p.write_text('{"cloud": "lab"}'),
     "the identity lacks node, role, address, members, term"),
    (lambda p: p.write_text("cloudd.cloud=lab"), "the identity is not JSON"),
    (None, "cannot read the identity from {path}: No such file or directory"),
])
def test_cli_refuses_a_bad_identity_file(tmp_path: Path, write: Any, message: str) -> None:
    path = tmp_path / "identity.json"
    if write is not None:
        write(path)
    done = subprocess.run([CLOUDD, "--from-identity", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"{path}: ")
    assert message.format(path=path) in done.stderr


def test_cli_takes_one_identity_only(tmp_path: Path) -> None:
    done = subprocess.run([CLOUDD, "--from-identity", "a", "--from-cmdline", "b"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr

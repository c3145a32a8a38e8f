"""`cloudd-cli seed`: the seed an operator makes for a node whose domain they define by hand."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from cloudd.cli import main
from cloudd.pki import ISSUER_KEY, Identity, MemberKind, identity_of_cert, init_ca

MANIFEST = """\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
domain_template: web.xml
pool:
  - {name: pm1, address: 192.0.2.70}
roles:
  balancer: [{name: lb, address: 192.0.2.175, managed: false}]
  server: [{name: web1, address: 192.0.2.176, managed: false}]
  database: [{name: db, address: 192.0.2.177, managed: false}]
"""


def isoinfo(iso: Path, path: str) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), "-R", "-x", path], capture_output=True,
                          text=True, check=True, timeout=30).stdout


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    init_ca(tmp_path / "pki", now=dt.datetime.now(dt.UTC))
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    return tmp_path


def seed(folder: Path, *args: str) -> list[str]:
    return ["seed", *args, "--manifest", str(folder / "shop.yaml"), "--dir",
            str(folder / "pki")]


def test_the_seed_of_a_node_defined_by_hand(folder: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    iso = folder / "web1.iso"
    assert main(seed(folder, "web1", "--out", str(iso), "--port", "7761")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {iso} (attach it as the domain's cdrom; its NIC's MAC: 52:54:00:")
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    files = {f["path"]: f["content"] for f in json.loads(
        isoinfo(iso, "/user-data").removeprefix("#cloud-config\n"))["write_files"]}
    assert json.loads(files["/etc/cloudd/identity.json"]) == {
        "cloud": "shop", "node": "web1", "role": "server", "address": "192.0.2.176/24",
        "gateway": "", "members": ["pm1@192.0.2.70:7761"], "term": 0}
    leaf, issuer = x509.load_pem_x509_certificates(files["/etc/cloudd/pki/web1.crt"].encode())
    leaf.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(x509.load_pem_x509_certificate(
        (folder / "pki" / "ca.crt").read_bytes()))
    assert identity_of_cert(leaf) == Identity("web1", MemberKind.NODE, "shop")
    network = json.loads(isoinfo(iso, "/network-config"))
    assert out.rstrip().endswith(network["ethernets"]["eth0"]["match"]["macaddress"] + ")")


@pytest.mark.parametrize(("args", "message"), [
    (["web9"], "node web9 is not in the manifest of cloud shop (db, web1, lb)"),
    (["web1", "--mac", "52:54:00:zz:00:01"], "bad --mac '52:54:00:zz:00:01'"),
    (["web1", "--port", "0"], "bad --port 0: must be 1-65535"),
])
def test_refusals_are_one_line_and_write_nothing(folder: Path, args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    iso = folder / "out.iso"
    assert main(seed(folder, *args, "--out", str(iso))) == 1
    assert capsys.readouterr().err.startswith(f"cloudd-cli seed: {message}")
    assert not iso.exists()


def test_without_the_node_issuer(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "pki" / ISSUER_KEY).unlink()
    assert main(seed(folder, "web1", "--out", str(folder / "out.iso"))) == 1
    assert capsys.readouterr().err.startswith(
        f"cloudd-cli seed: no node issuer in {folder / 'pki'}")
    assert not (folder / "out.iso").exists()


def test_an_existing_iso_is_replaced_only_with_force(folder: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    iso = folder / "web1.iso"
    iso.write_text("kept")
    assert main(seed(folder, "web1", "--out", str(iso))) == 1
    assert capsys.readouterr().err == (f"cloudd-cli seed: {iso} already exists: use --force "
                                       "to replace it\n")
    assert iso.read_text() == "kept"
    assert main(seed(folder, "web1", "--out", str(iso), "--force")) == 0
    assert iso.read_bytes() != b"kept"

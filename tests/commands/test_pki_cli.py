"""`cloudd-cli pki`: the installed command, its output and its one-line refusals."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from cloudd.cli import main

CLI = Path(sys.executable).with_name("cloudd-cli")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def test_init_then_issue_with_the_installed_command(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    done = cli("pki", "init", "--dir", str(d), "--days", "30")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"wrote {d}/ca.crt\nwrote {d}/ca.key\nwrote {d}/nodes-ca.crt\n"
                           f"wrote {d}/nodes-ca.key\n")
    done = cli("pki", "issue", "web1", "--kind", "node", "--cloud", "shop", "--dir", str(d),
               "--address", "192.0.2.176")
    assert (done.returncode, done.stderr) == (0, "")
    assert stat.S_IMODE((d / "web1.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((d / "web1.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((d / "ca.crt").read_bytes()))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "cloudd://member/web1", "cloudd://kind/node", "cloudd://cloud/shop"]


@pytest.mark.parametrize(("args", "message"), [
    (["issue", "pm1", "--kind", "host"],
     "cloudd-cli pki: no cluster CA in {d}: run `cloudd-cli pki init` first"),
])
def test_issue_before_init(tmp_path: Path, args: list[str], message: str) -> None:
    d = tmp_path / "pki"
    done = cli("pki", *args, "--dir", str(d))
    assert done.returncode == 1
    assert done.stderr == message.format(d=d) + "\n"
    assert not d.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["init"], "cloudd-cli pki: {d}/ca.crt already exists: use --force to replace it"),
    (["issue", "pm1", "--kind", "host"],
     "cloudd-cli pki: {d}/pm1.crt already exists: use --force to replace it"),
    (["issue", "Bad_Name", "--kind", "host"], "cloudd-cli pki: bad member name 'Bad_Name': use "
     "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, and "
     "not 'ca' or 'nodes-ca'"),
    (["issuer"], "cloudd-cli pki: {d}/nodes-ca.crt already exists: use --force to replace it"),
    (["issue", "pm2", "--kind", "host", "--address", "pm2.example"],
     "cloudd-cli pki: bad address 'pm2.example': not an IPv4 or IPv6 address"),
    (["issue", "pm2", "--kind", "host", "--days", "-3"],
     "cloudd-cli pki: bad --days -3: must be at least 1"),
    (["issue", "web1", "--kind", "node"],
     "cloudd-cli pki: a node certificate names its cloud: give --cloud for web1"),
    (["issue", "pm2", "--kind", "host", "--cloud", "shop"],
     "cloudd-cli pki: only a node certificate names a cloud, not a host's"),
])
def test_refusals_are_one_line_and_change_nothing(tmp_path: Path, args: list[str],
                                                  message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    assert main(["pki", "issue", "pm1", "--kind", "host", "--dir", str(d)]) == 0
    before = files(d)
    capsys.readouterr()
    assert main(["pki", *args, "--dir", str(d)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", message.format(d=d) + "\n")
    assert files(d) == before


def test_force_replaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    old = files(d)
    assert main(["pki", "init", "--dir", str(d), "--force"]) == 0
    assert files(d)["ca.key"] != old["ca.key"]
    assert files(d)["nodes-ca.key"] != old["nodes-ca.key"]
    again = files(d)
    capsys.readouterr()
    assert main(["pki", "issuer", "--dir", str(d), "--force"]) == 0
    assert capsys.readouterr().out == f"wrote {d}/nodes-ca.crt\nwrote {d}/nodes-ca.key\n"
    assert files(d)["nodes-ca.key"] != again["nodes-ca.key"]
    assert files(d)["ca.key"] == again["ca.key"]


def test_unwritable_directory_is_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["pki", "init", "--dir", str(blocker / "pki")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cloudd-cli pki: ") and err.count("\n") == 1
    assert "Not a directory" in err



def test_issue_from_a_folder_whose_ca_crt_is_a_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    assert main(["pki", "init", "--dir", str(old)]) == 0
    assert main(["pki", "init", "--dir", str(new)]) == 0
    old_ca, new_ca = (old / "ca.crt").read_bytes(), (new / "ca.crt").read_bytes()
    # the new CA's key beside a bundle without its certificate: refused, nothing written
    (new / "ca.crt").write_bytes(old_ca)
    before = files(new)
    capsys.readouterr()
    assert main(["pki", "issue", "pm1", "--kind", "host", "--dir", str(new)]) == 1
    assert capsys.readouterr() == (
        "", f"cloudd-cli pki: {new}/ca.key is the key of no certificate in {new}/ca.crt\n")
    assert files(new) == before
    # with both CAs in the bundle, the old one first, it signs as the CA whose key it has
    (new / "ca.crt").write_bytes(old_ca + new_ca)
    assert main(["pki", "issue", "pm1", "--kind", "host", "--dir", str(new)]) == 0
    cert = x509.load_pem_x509_certificate((new / "pm1.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(new_ca))

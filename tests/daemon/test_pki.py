"""The cluster PKI: what `init_ca` and `issue` write, and what they refuse."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from cloudd.pki import (
    Identity,
    MemberKind,
    PkiError,
    PkiFiles,
    identity_from_uris,
    identity_of_cert,
    identity_of_file,
    init_ca,
    issue,
    member_of_cert,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def test_init_makes_a_ca_with_a_private_key(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    files = init_ca(d, now=NOW, days=10)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    ca = load(files.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc == NOW + dt.timedelta(days=10)
    ca.verify_directly_issued_by(ca)
    assert sorted(p.name for p in d.iterdir()) == [  # no temp files left
        "ca.crt", "ca.key", "nodes-ca.crt", "nodes-ca.key"]


def test_issue_names_the_member_every_way(tmp_path: Path) -> None:
    init_ca(tmp_path, now=NOW)
    files = issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST, days=30,
                  addresses=["192.0.2.70", "2001:db8::1"])
    assert files == PkiFiles.for_member(tmp_path, "pm1")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = load(files.cert)
    cert.verify_directly_issued_by(load(tmp_path / "ca.crt"))
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cn == "pm1"
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "cloudd://member/pm1", "cloudd://kind/host"]
    assert san.get_values_for_type(x509.DNSName) == ["pm1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.70"), ipaddress.ip_address("2001:db8::1")]
    assert member_of_cert(cert) == "pm1"
    assert member_of_cert(load(tmp_path / "ca.crt")) is None
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)


def test_keys_never_go_through_a_link_at_a_guessable_name(tmp_path: Path) -> None:
    """Files are written through cloudd's one durable write: a fresh temporary name, created
    exclusively, never following a link (a name like `.pm1.key.tmp<pid>` could be planted)."""
    init_ca(tmp_path, now=NOW)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    for name in ("pm1.key", "pm1.crt"):
        (tmp_path / f".{name}.tmp{os.getpid()}").symlink_to(victim)
    files = issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST)
    assert victim.read_text() == "untouched\n"
    assert not files.key.is_symlink() and stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in files.key.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pm1")) == [
        f".pm1.crt.tmp{os.getpid()}", f".pm1.key.tmp{os.getpid()}"]  # left alone, not used


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    init_ca(tmp_path, now=NOW)
    issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST)
    before = snapshot(tmp_path)
    with pytest.raises(PkiError, match=r"ca.crt already exists: use --force to replace it"):
        init_ca(tmp_path, now=NOW)
    with pytest.raises(PkiError, match=r"pm1.crt already exists: use --force to replace it"):
        issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST)
    assert snapshot(tmp_path) == before
    issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST, force=True)
    assert snapshot(tmp_path)["pm1.key"] != before["pm1.key"]


@pytest.mark.parametrize(("name", "addresses", "days", "reason"), [
    ("PM1", [], 5, r"bad member name 'PM1': use 1-63 lowercase letters"),
    ("-pm1", [], 5, r"bad member name '-pm1'"),
    ("a/b", [], 5, r"bad member name 'a/b'"),
    ("ca", [], 5, r"bad member name 'ca'"),
    ("x" * 64, [], 5, r"bad member name"),
    ("pm1", ["192.0.2.300"], 5, r"bad address '192.0.2.300': not an IPv4 or IPv6 address"),
    ("pm1", [], 0, r"bad --days 0: must be at least 1"),
])
def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path, name: str,
                                                  addresses: list[str], days: int,
                                                  reason: str) -> None:
    init_ca(tmp_path, now=NOW)
    before = snapshot(tmp_path)
    with pytest.raises(PkiError, match=reason):
        issue(tmp_path, name, now=NOW, kind=MemberKind.HOST, days=days, addresses=addresses)
    assert snapshot(tmp_path) == before


def test_issue_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=rf"no cluster CA in {tmp_path}: run `cloudd-cli pki "
                       r"init` first"):
        issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST)
    assert snapshot(tmp_path) == {}


def test_unreadable_ca_is_one_error(tmp_path: Path) -> None:
    init_ca(tmp_path, now=NOW)
    (tmp_path / "ca.key").write_text("not a key")
    with pytest.raises(PkiError, match=r"cluster CA in .* is unreadable"):
        issue(tmp_path, "pm1", now=NOW, kind=MemberKind.HOST)


def test_a_node_certificate_names_its_kind_and_its_cloud(tmp_path: Path) -> None:
    init_ca(tmp_path, now=NOW)
    node = load(issue(tmp_path, "web1", now=NOW, kind=MemberKind.NODE, cloud="shop").cert)
    op = load(issue(tmp_path, "alice", now=NOW, kind=MemberKind.OPERATOR).cert)
    assert identity_of_cert(node) == Identity("web1", MemberKind.NODE, "shop")
    assert identity_of_cert(op) == Identity("alice", MemberKind.OPERATOR)
    assert identity_of_cert(load(tmp_path / "ca.crt")) is None


@pytest.mark.parametrize("reader", ["ssl", "cryptography"])
def test_an_agents_own_identity_from_its_certificate_file(
        tmp_path: Path, reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if reader == "cryptography":  # a Python whose ssl cannot decode a certificate file
        monkeypatch.delattr(ssl._ssl, "_test_decode_cert")  # type: ignore[attr-defined]
    init_ca(tmp_path, now=NOW)
    files = issue(tmp_path, "web1", now=NOW, kind=MemberKind.NODE, cloud="shop")
    assert identity_of_file(files.cert) == Identity("web1", MemberKind.NODE, "shop")
    chain = tmp_path / "chain.crt"  # a node's file: its certificate, then its issuer's
    chain.write_bytes(files.cert.read_bytes() + (tmp_path / "nodes-ca.crt").read_bytes())
    assert identity_of_file(chain) == Identity("web1", MemberKind.NODE, "shop")
    files.key.write_text("not a certificate")
    assert identity_of_file(files.key) is None
    assert identity_of_file(tmp_path / "missing.crt") is None
    assert identity_of_file(tmp_path / "ca.crt") is None  # a CA names no member


@pytest.mark.parametrize(("kind", "cloud", "why"), [
    (MemberKind.NODE, "", "names its cloud"),
    (MemberKind.HOST, "shop", "only a node certificate names a cloud"),
    (MemberKind.NODE, "Bad Cloud", "bad member name"),
])
def test_kind_and_cloud_must_agree(tmp_path: Path, kind: MemberKind, cloud: str,
                                   why: str) -> None:
    init_ca(tmp_path, now=NOW)
    before = snapshot(tmp_path)
    with pytest.raises(PkiError, match=why):
        issue(tmp_path, "web1", now=NOW, kind=kind, cloud=cloud)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("uris", [
    [],
    ["cloudd://member/web1"],                                   # no kind: refused
    ["cloudd://member/web1", "cloudd://kind/root"],             # unknown kind
    ["cloudd://member/web1", "cloudd://kind/node"],             # a node without its cloud
    ["cloudd://member/pm1", "cloudd://kind/host", "cloudd://cloud/shop"],  # a host with one
    ["cloudd://member/a", "cloudd://member/b", "cloudd://kind/host"],      # two names
    ["cloudd://member/a", "cloudd://kind/host", "cloudd://kind/operator"],  # two kinds
    ["cloudd://member/", "cloudd://kind/host"],                 # an empty name
])
def test_ambiguous_or_partial_identities_are_no_identity(uris: list[str]) -> None:
    assert identity_from_uris(uris) is None

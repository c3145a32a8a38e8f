"""The node issuer: an intermediate CA under the root that pool hosts hold to sign the
certificates of the nodes they boot, and the transport's rule that what it signs is a node's.

The handshakes run over memory BIOs with the agents' own contexts (`tls.server_context`,
`tls.client_context`), then the transport's own check of the peer (`tls.peer_identity`).
"""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from shared.tlspair import Refused, handshake

from cloudd.certs import cert_pem, key_pem, member_cert, new_key
from cloudd.daemon.network.tls import (
    PeerIdentityError,
    client_context,
    peer_identity,
    server_context,
)
from cloudd.pki import (
    ISSUER_CERT,
    ISSUER_KEY,
    Identity,
    MemberKind,
    NodeIssuer,
    PkiError,
    PkiFiles,
    identity_of_cert,
    init_ca,
    init_node_issuer,
    issue,
)

NOW = dt.datetime.now(dt.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def constraints(cert: x509.Certificate) -> x509.BasicConstraints:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_ca(d, now=NOW)
    issue(d, "pm1", now=NOW, kind=MemberKind.HOST, addresses=["192.0.2.70"])
    return d


def node_files(d: Path, name: str, *, kind: MemberKind = MemberKind.NODE,
               cloud: str = "shop", chain: bool = True) -> PkiFiles:
    """`name`'s files as a node booted from a seed has them: signed by the node issuer, the
    issuer's certificate after its own (unless not `chain`), the root as its CA. With
    another `kind`, the forgery of a host that holds the issuer's key."""
    issuer = NodeIssuer.load(d)
    if kind is MemberKind.NODE:
        creds = issuer.issue(name, cloud=cloud, addresses=["192.0.2.176"], now=NOW)
        key, leaf_and_issuer = creds.key, creds.chain
    else:
        k = new_key()
        cert = member_cert(name, uris=[f"cloudd://member/{name}", f"cloudd://kind/{kind}"],
                           ips=[], key=k, now=NOW, days=30, signer=(issuer.cert, issuer.key))
        key, leaf_and_issuer = key_pem(k), cert_pem(cert) + cert_pem(issuer.cert)
    files = PkiFiles(ca=d / "ca.crt", cert=d / f"{name}.crt", key=d / f"{name}.key")
    files.key.write_bytes(key)
    files.key.chmod(0o600)
    leaf = leaf_and_issuer.split(b"-----END CERTIFICATE-----\n")[0] + \
        b"-----END CERTIFICATE-----\n"
    files.cert.write_bytes(leaf_and_issuer if chain else leaf)
    return files


def test_init_makes_the_root_and_its_node_issuer(pki: Path) -> None:
    assert sorted(p.name for p in pki.iterdir()) == [
        "ca.crt", "ca.key", "nodes-ca.crt", "nodes-ca.key", "pm1.crt", "pm1.key"]
    assert stat.S_IMODE((pki / ISSUER_KEY).stat().st_mode) == 0o600
    root, issuer = load(pki / "ca.crt"), load(pki / ISSUER_CERT)
    assert (constraints(root).ca, constraints(root).path_length) == (True, 1)
    assert (constraints(issuer).ca, constraints(issuer).path_length) == (True, 0)
    issuer.verify_directly_issued_by(root)
    assert issuer.subject != root.subject
    assert issuer.subject.rfc4514_string() == "CN=cloudd node issuer"


def test_the_issuer_makes_node_certificates_in_memory(pki: Path) -> None:
    before = sorted(p.name for p in pki.iterdir())
    creds = NodeIssuer.load(pki).issue("web1", cloud="shop", addresses=["192.0.2.176"],
                                       now=NOW)
    assert sorted(p.name for p in pki.iterdir()) == before  # nothing written
    leaf, issuer = x509.load_pem_x509_certificates(creds.chain)
    leaf.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(load(pki / "ca.crt"))
    assert identity_of_cert(leaf) == Identity("web1", MemberKind.NODE, "shop")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.176"]
    assert b"PRIVATE KEY" in creds.key


@pytest.mark.parametrize(("name", "cloud", "why"), [
    ("web1", "", "a node certificate names its cloud"),
    ("Web1", "shop", "bad member name 'Web1'"),
    ("nodes-ca", "shop", "bad member name 'nodes-ca'"),
])
def test_the_issuer_refuses_bad_names(pki: Path, name: str, cloud: str, why: str) -> None:
    with pytest.raises(PkiError, match=why):
        NodeIssuer.load(pki).issue(name, cloud=cloud, addresses=[], now=NOW)


def test_loading_the_issuer_says_what_is_missing_or_wrong(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=rf"no node issuer in {tmp_path} \(nodes-ca.crt, "
                                       r"nodes-ca.key\): `cloudd-cli pki init` makes one"):
        NodeIssuer.load(tmp_path)
    (pki / ISSUER_KEY).write_bytes((pki / "ca.key").read_bytes())
    with pytest.raises(PkiError, match=r"nodes-ca.key is not the key of .*nodes-ca.crt"):
        NodeIssuer.load(pki)


def test_a_new_issuer_for_an_existing_root(pki: Path) -> None:
    old = (pki / ISSUER_KEY).read_bytes()
    with pytest.raises(PkiError, match=r"nodes-ca.crt already exists: use --force"):
        init_node_issuer(pki, now=NOW)
    init_node_issuer(pki, now=NOW, force=True)
    assert (pki / ISSUER_KEY).read_bytes() != old
    load(pki / ISSUER_CERT).verify_directly_issued_by(load(pki / "ca.crt"))


def test_init_refuses_to_replace_any_of_its_files(tmp_path: Path) -> None:
    (tmp_path / ISSUER_KEY).write_text("kept")
    with pytest.raises(PkiError, match=r"nodes-ca.key already exists: use --force"):
        init_ca(tmp_path, now=NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ISSUER_KEY]


@pytest.mark.parametrize("node_serves", [True, False])
def test_a_node_with_the_issuers_chain_and_a_host_know_each_other(pki: Path,
                                                                  node_serves: bool) -> None:
    node = node_files(pki, "web1")
    host = PkiFiles.for_member(pki, "pm1")
    if node_serves:
        s, c = handshake(server_context(node), client_context(host))
        assert peer_identity(c) == Identity("web1", MemberKind.NODE, "shop")
        assert peer_identity(s) == Identity("pm1", MemberKind.HOST)
    else:
        s, c = handshake(server_context(host), client_context(node))
        assert peer_identity(s) == Identity("web1", MemberKind.NODE, "shop")
        assert peer_identity(c) == Identity("pm1", MemberKind.HOST)


def test_without_the_issuers_certificate_a_node_is_refused(pki: Path) -> None:
    node = node_files(pki, "web1", chain=False)
    with pytest.raises(Refused, match=r"^server: .*unable to get local issuer certificate"):
        handshake(server_context(PkiFiles.for_member(pki, "pm1")), client_context(node))


@pytest.mark.parametrize("kind", [MemberKind.HOST, MemberKind.OPERATOR])
@pytest.mark.parametrize("trust_issuer_too", [False, True])
def test_a_host_or_operator_certificate_from_the_issuer_is_refused(
        pki: Path, kind: MemberKind, trust_issuer_too: bool) -> None:
    """The forgery a host's issuer key allows: TLS verifies the chain, the transport refuses
    the kind, on both sides of a connection. Even an agent whose CA file wrongly holds the
    issuer too refuses it: only self-signed CAs count as roots."""
    forged = node_files(pki, "pm9", kind=kind)
    host = PkiFiles.for_member(pki, "pm1")
    if trust_issuer_too:
        both = pki / "both.crt"
        both.write_bytes((pki / "ca.crt").read_bytes() + (pki / ISSUER_CERT).read_bytes())
        host = PkiFiles(ca=both, cert=host.cert, key=host.key)
    why = (f"^pm9's certificate says kind {kind.value} but is signed by 'cloudd node issuer', "
           "not by a root CA: an intermediate \\(the node issuer\\) signs node certificates "
           "only$")
    s, _ = handshake(server_context(host), client_context(forged))
    with pytest.raises(PeerIdentityError, match=why):
        peer_identity(s)
    _, c = handshake(server_context(forged), client_context(host))
    with pytest.raises(PeerIdentityError, match=why):
        peer_identity(c)


def test_an_issuer_under_a_root_without_room_for_it_is_refused(tmp_path: Path) -> None:
    """A CA made before node issuers (pathlen 0) cannot have one: the chain would not verify."""
    from cryptography.hazmat.primitives import serialization

    from cloudd.certs import ca_cert, common_name

    key = new_key()
    old = ca_cert(subject=common_name("old cluster CA"), key=key, now=NOW, days=30,
                  path_length=0, signer=None)
    (tmp_path / "ca.crt").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(key_pem(key))
    with pytest.raises(PkiError, match=r"allows no CA below it \(pathlen 0\): make a new one"):
        init_node_issuer(tmp_path, now=NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]

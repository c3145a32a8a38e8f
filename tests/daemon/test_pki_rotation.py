"""Rotating the cluster CA, in memory: `issue` signs from a folder whose `ca.crt` is a bundle,
and the agents' TLS contexts trust every CA of their bundle, and only those.

The handshakes run over memory BIOs with the agents' own contexts (`tls.server_context`,
`tls.client_context`); tests/real/daemon/test_pki_rotation_real.py follows the whole procedure
against real agents.
"""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from shared import tlspair
from shared.tlspair import Refused

from cloudd.daemon.network.tls import client_context, server_context
from cloudd.pki import MemberKind, PkiError, PkiFiles, init_ca, issue, member_of_cert

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def bundle(path: Path, *cas: Path) -> Path:
    path.write_bytes(b"".join(ca.read_bytes() for ca in cas))
    return path


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """A whole TLS handshake between the two contexts; the member the server then sees (a
    refusal raises `Refused`)."""
    s, _ = tlspair.handshake(server, client)
    cert = s.getpeercert(binary_form=True)
    assert cert is not None
    member = member_of_cert(x509.load_der_x509_certificate(cert))
    assert member is not None
    return member


@pytest.fixture
def cas(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    init_ca(old, now=NOW, cluster="old")  # two names, so that a wrong issuer shows
    init_ca(new, now=NOW, cluster="new")
    for d in (old, new):
        issue(d, "pm1", now=NOW, kind=MemberKind.HOST)
        issue(d, "pm2", now=NOW, kind=MemberKind.HOST)
    return old, new


@pytest.mark.parametrize("order", ["old first", "new first"])
def test_issue_signs_as_the_ca_whose_key_is_in_the_folder(cas: tuple[Path, Path],
                                                          order: str) -> None:
    old, new = cas
    ca_of_new = load(new / "ca.crt")
    first = (old, new) if order == "old first" else (new, old)
    both = bundle(new.parent / "both.crt", *(d / "ca.crt" for d in first))
    shutil.copy(both, new / "ca.crt")
    cert = load(issue(new, "pm3", now=NOW, kind=MemberKind.HOST).cert)
    cert.verify_directly_issued_by(ca_of_new)
    assert cert.issuer == ca_of_new.subject
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_of_new.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_a_key_of_no_certificate_in_the_bundle_is_refused(cas: tuple[Path, Path]) -> None:
    old, new = cas
    bundle(new / "ca.crt", old / "ca.crt")  # the new CA's key, only the old CA's certificate
    before = sorted(p.name for p in new.iterdir())
    with pytest.raises(PkiError, match=r"ca.key is the key of no certificate in .*ca.crt"):
        issue(new, "pm3", now=NOW, kind=MemberKind.HOST)
    assert sorted(p.name for p in new.iterdir()) == before


def test_agents_trust_every_ca_of_their_bundle_and_only_those(cas: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    old, new = cas
    both = bundle(tmp_path / "both.crt", old / "ca.crt", new / "ca.crt")

    def agent(folder: Path, name: str, trust: Path) -> PkiFiles:
        files = PkiFiles.for_member(folder, name)
        return PkiFiles(ca=trust, cert=files.cert, key=files.key)

    # during the rotation: a server with the bundle takes clients of either CA, and a client
    # with the bundle takes servers of either CA
    for server_ca in (old, new):
        for client_ca in (old, new):
            server = server_context(agent(server_ca, "pm1", both))
            client = client_context(agent(client_ca, "pm2", both))
            assert handshake(server, client) == "pm2"
    # once the old CA is dropped, its certificates are refused both ways (whether or not
    # their holder sends the old CA along)
    server = server_context(agent(new, "pm1", new / "ca.crt"))
    for trust, why in ((new / "ca.crt", "unable to get local issuer certificate"),
                       (both, "self-signed certificate in certificate chain")):
        with pytest.raises(Refused, match=f"^server: .*certificate verify failed: {why}"):
            handshake(server, client_context(agent(old, "pm2", trust)))
    client = client_context(agent(new, "pm2", new / "ca.crt"))
    with pytest.raises(Refused, match=r"^client: .*certificate verify failed"):
        handshake(server_context(agent(old, "pm1", both)), client)
    assert handshake(server, client) == "pm2"

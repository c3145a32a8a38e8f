"""The cluster's own PKI: one CA, and one key and certificate per agent.

Agents authenticate each other with mutual TLS; a certificate signed by the cluster CA is a
membership card, and its subject names the member it belongs to three ways: the subject CN,
a SAN URI `cloudd://member/NAME` (what the transport checks), and a SAN DNS name NAME (so that
ordinary TLS tools can verify it), plus any IP addresses given.

A certificate also says what *kind* of member holds it, in a second SAN URI the transport
reads back: `cloudd://kind/host` (a pool host), `cloudd://kind/node` (a node, with a third URI
`cloudd://cloud/CLOUD` naming the one cloud it belongs to) or `cloudd://kind/operator` (an
operator outside every roster). A SAN URI was chosen over an OU or a private extension because
Python's `ssl` hands it to the transport already parsed, and `openssl x509 -text` shows it.
A certificate without a kind is refused by the transport.

Files in the PKI directory (default /etc/cloudd/pki): `ca.crt`, `ca.key` (the root),
`nodes-ca.crt`, `nodes-ca.key` (the node issuer), `NAME.crt`, `NAME.key`. `ca.crt` may be a
bundle of CAs (agents trust every one, as during a rotation of the CA); `issue` signs as the
one whose key is `ca.key`. Keys are written 0600 and every file is replaced with cloudd's
one durable write (`cloudd.durable.write_durable`: a fresh temporary file, fsync, rename,
folder fsync), so neither a crash nor a power cut leaves half a key or an empty certificate.
Nothing is overwritten without `force`, and every input is checked before the first file
is touched: bad input changes nothing.

The node issuer is an intermediate CA under the root (CA:TRUE, pathlen 0, its own subject):
pool hosts hold its key, never the root's, and sign with it the certificates of the nodes
they boot (`NodeIssuer`). Agents trust the root only; a node presents its certificate with
the issuer's after it, and the transport takes a certificate the issuer signed only when it
is a node's (`cloudd.daemon.network.tls`), so the key a host holds can make nothing but
node certificates.

Time is an input (`now`), so tests can make certificates that are already expired.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloudd.durable import write_durable
from cloudd.errors import PermanentError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from cloudd.certs import Signer

DEFAULT_DIR = Path("/etc/cloudd/pki")
#: The SAN URI prefix that names a member; the transport trusts nothing else in a certificate.
MEMBER_URI = "cloudd://member/"
#: The SAN URI prefix that says which kind of member holds the certificate.
KIND_URI = "cloudd://kind/"
#: The SAN URI prefix that names a node certificate's cloud.
CLOUD_URI = "cloudd://cloud/"
#: The node issuer's files, beside the root's, and the end of its subject's common name.
ISSUER_CERT = "nodes-ca.crt"
ISSUER_KEY = "nodes-ca.key"
ISSUER_CN = "node issuer"
CA_DAYS = 3650
MEMBER_DAYS = 825

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class PkiError(PermanentError):
    """A PKI command was refused; the message is one line an operator can act on."""


class MemberKind(enum.StrEnum):
    """Who holds a certificate: what it may do is decided by this and the roster in force."""

    HOST = "host"
    """A pool host's agent: grants leases, runs the leader's host commands, may lead."""
    NODE = "node"
    """A node's agent, inside a VM that may belong to a tenant: reports about itself only."""
    OPERATOR = "operator"
    """An operator's CLI outside the cloud: may hand a manifest to a pool host and inspect."""


@dataclass(frozen=True)
class Identity:
    """What a verified certificate says about its holder."""

    name: str
    kind: MemberKind
    #: the one cloud a node certificate belongs to ("" for hosts and operators)
    cloud: str = ""


def identity_from_uris(uris: Sequence[str]) -> Identity | None:
    """The identity named by a certificate's SAN URIs, or None if it names no kind of member.

    Exactly one of each URI is accepted: a certificate naming two members, two kinds or two
    clouds is no identity at all."""
    def one(prefix: str) -> str | None:
        found = [u[len(prefix):] for u in uris if u.startswith(prefix)]
        return found[0] if len(found) == 1 else None

    name, kind_text, cloud = one(MEMBER_URI), one(KIND_URI), one(CLOUD_URI)
    if not name or kind_text not in {k.value for k in MemberKind}:
        return None
    kind = MemberKind(kind_text)
    if (kind is MemberKind.NODE) != bool(cloud):
        return None  # a node names its cloud; nothing else does
    return Identity(name=name, kind=kind, cloud=cloud or "")


@dataclass(frozen=True)
class PkiFiles:
    """The three files one agent needs for mutual TLS."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_member(cls, directory: Path, name: str) -> PkiFiles:
        return cls(ca=directory / "ca.crt", cert=directory / f"{name}.crt",
                   key=directory / f"{name}.key")


def check_member_name(name: str) -> None:
    if name in ("ca", "nodes-ca") or not _NAME.match(name):
        raise PkiError(f"bad member name {name!r}: use 1-63 lowercase letters, digits and '-', "
                       "starting and ending with a letter or digit, and not 'ca' or 'nodes-ca'")


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"bad --days {days}: must be at least 1")


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise PkiError(f"{path} already exists: use --force to replace it")


def init_ca(directory: Path = DEFAULT_DIR, *, now: dt.datetime, days: int = CA_DAYS,
            force: bool = False, cluster: str = "cloudd") -> PkiFiles:
    """Create the cluster CA in `directory`, and its node issuer; returns the root's paths
    (cert and key)."""
    from cloudd.certs import ca_cert, cert_pem, common_name, key_pem, new_key

    _check_days(days)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    _refuse_existing([cert_path, key_path, directory / ISSUER_CERT, directory / ISSUER_KEY],
                     force)
    key = new_key()
    # pathlen 1: one CA below the root, the node issuer, and none below that
    cert = ca_cert(subject=common_name(f"{cluster} cluster CA"), key=key, now=now, days=days,
                   path_length=1, signer=None)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_durable(key_path, key_pem(key), mode=0o600)
    write_durable(cert_path, cert_pem(cert), mode=0o644)
    _make_issuer(directory, root=(cert, key), now=now, days=days, cluster=cluster)
    return PkiFiles(ca=cert_path, cert=cert_path, key=key_path)


def _make_issuer(directory: Path, *, root: Signer, now: dt.datetime, days: int,
                 cluster: str) -> PkiFiles:
    from cloudd.certs import ca_cert, cert_pem, common_name, key_pem, new_key

    key = new_key()
    cert = ca_cert(subject=common_name(f"{cluster} {ISSUER_CN}"), key=key, now=now,
                   days=days, path_length=0, signer=root)
    files = PkiFiles(ca=directory / "ca.crt", cert=directory / ISSUER_CERT,
                     key=directory / ISSUER_KEY)
    write_durable(files.key, key_pem(key), mode=0o600)
    write_durable(files.cert, cert_pem(cert), mode=0o644)
    return files


def init_node_issuer(directory: Path = DEFAULT_DIR, *, now: dt.datetime, days: int = CA_DAYS,
                     force: bool = False) -> PkiFiles:
    """(Re)make the node issuer of the CA in `directory` (the one whose key is `ca.key`): for
    a CA folder made before node issuers, or to replace a host-held issuer key."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    _check_days(days)
    root = _load_ca(directory)
    if root[0].extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0:
        raise PkiError(f"the CA in {directory} allows no CA below it (pathlen 0): make a new "
                       "one with `cloudd-cli pki init` and rotate to it")
    _refuse_existing([directory / ISSUER_CERT, directory / ISSUER_KEY], force)
    names = root[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cluster = str(names[0].value).removesuffix(" cluster CA") if names else "cloudd"
    return _make_issuer(directory, root=root, now=now, days=days, cluster=cluster)


def _load_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what} {path} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC key")
    return key


def _load_ca(directory: Path) -> Signer:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cloudd.certs import spki

    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if not cert_path.exists() or not key_path.exists():
        raise PkiError(f"no cluster CA in {directory}: run `cloudd-cli pki init` first")
    try:
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cluster CA in {directory} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC key")
    # ca.crt may be a bundle (during a rotation, the old CA and the new): sign as the CA
    # whose key this is, whatever its place in the bundle.
    for cert in certs:
        if spki(cert.public_key()) == spki(key.public_key()):
            return cert, key
    raise PkiError(f"{key_path} is the key of no certificate in {cert_path}")


def parse_addresses(addresses: Sequence[str]) -> list[ipaddress.IPv4Address |
                                                      ipaddress.IPv6Address]:
    parsed = []
    for text in addresses:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            raise PkiError(f"bad address {text!r}: not an IPv4 or IPv6 address") from None
    return parsed


def _check_kind(name: str, kind: MemberKind, cloud: str) -> None:
    check_member_name(name)
    if kind is MemberKind.NODE:
        if not cloud:
            raise PkiError(f"a node certificate names its cloud: give --cloud for {name}")
        check_member_name(cloud)
    elif cloud:
        raise PkiError(f"only a node certificate names a cloud, not a {kind.value}'s")


def _uris(name: str, kind: MemberKind, cloud: str) -> list[str]:
    return [MEMBER_URI + name, KIND_URI + kind.value] + ([CLOUD_URI + cloud] if cloud else [])


def issue(directory: Path, name: str, *, now: dt.datetime, kind: MemberKind,
          cloud: str = "", days: int = MEMBER_DAYS, addresses: Sequence[str] = (),
          force: bool = False) -> PkiFiles:
    """Make `name`'s key and certificate, signed by the CA in `directory`, for a member of
    `kind` (a node's certificate names its `cloud`)."""
    from cloudd.certs import cert_pem, key_pem, member_cert, new_key

    _check_kind(name, kind, cloud)
    _check_days(days)
    ips = parse_addresses(addresses)
    signer = _load_ca(directory)
    files = PkiFiles.for_member(directory, name)
    _refuse_existing([files.cert, files.key], force)
    key = new_key()
    cert = member_cert(name, uris=_uris(name, kind, cloud), ips=ips, key=key, now=now,
                       days=days, signer=signer)
    write_durable(files.key, key_pem(key), mode=0o600)
    write_durable(files.cert, cert_pem(cert), mode=0o644)
    return files


@dataclass(frozen=True)
class NodeCredentials:
    """A node's key and certificate chain (its certificate, then the node issuer's), PEM."""

    key: bytes
    chain: bytes


@dataclass(frozen=True)
class NodeIssuer:
    """The node issuer's certificate and key, as a pool host (or the operator) holds them."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: Path) -> NodeIssuer:
        """From `nodes-ca.crt` and `nodes-ca.key` in `directory`."""
        from cryptography import x509

        from cloudd.certs import spki

        cert_path, key_path = directory / ISSUER_CERT, directory / ISSUER_KEY
        if not cert_path.exists() or not key_path.exists():
            raise PkiError(f"no node issuer in {directory} ({ISSUER_CERT}, {ISSUER_KEY}): "
                           "`cloudd-cli pki init` makes one, `cloudd-cli bootstrap` hands it "
                           "to a pool host")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise PkiError(f"node issuer {cert_path} is unreadable: {exc}") from None
        key = _load_key(key_path, "node issuer key")
        if spki(cert.public_key()) != spki(key.public_key()):
            raise PkiError(f"{key_path} is not the key of {cert_path}")
        return cls(cert, key)

    def issue(self, name: str, *, cloud: str, addresses: Sequence[str], now: dt.datetime,
              days: int = MEMBER_DAYS) -> NodeCredentials:
        """A fresh key and certificate for node `name` of `cloud`, in memory."""
        from cloudd.certs import cert_pem, key_pem, member_cert, new_key

        _check_kind(name, MemberKind.NODE, cloud)
        _check_days(days)
        ips = parse_addresses(addresses)
        key = new_key()
        cert = member_cert(name, uris=_uris(name, MemberKind.NODE, cloud), ips=ips, key=key,
                           now=now, days=days, signer=(self.cert, self.key))
        return NodeCredentials(key=key_pem(key), chain=cert_pem(cert) + cert_pem(self.cert))


def member_of_cert(cert: x509.Certificate) -> str | None:
    """The member a certificate names through its SAN URI, or None."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(MEMBER_URI):
            return uri[len(MEMBER_URI):]
    return None


def identity_of_file(path: Path) -> Identity | None:
    """The identity the certificate in `path` names (the first of a chain), or None when the
    file is missing, unreadable or names none (whoever loads it for TLS then says why).

    Read by Python's `ssl`, the parser that gives the transport its peers' certificates, so
    that an agent knows itself without loading cryptography (about 9 MiB of its RSS): only
    the commands that make keys and certificates, and a pool host signing a node's, need it.
    `ssl` decodes a certificate file only through its `_test_decode_cert` (CPython has it
    since 2.7); were it gone, cryptography reads the file instead."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        from cryptography import x509

        try:
            return identity_of_cert(x509.load_pem_x509_certificate(path.read_bytes()))
        except (OSError, ValueError):
            return None
    try:
        decoded = decode(str(path))
    except (OSError, ssl.SSLError, ValueError):
        return None
    return identity_from_uris([value for kind, value in decoded.get("subjectAltName", ())
                               if kind == "URI"])


def identity_of_cert(cert: x509.Certificate) -> Identity | None:
    """The identity a certificate's SAN URIs name, or None."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return identity_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))

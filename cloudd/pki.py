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

Files in the PKI directory (default /etc/cloudd/pki): `ca.crt`, `ca.key`, `NAME.crt`,
`NAME.key`. `ca.crt` may be a bundle of CAs (agents trust every one, as during a rotation of
the CA); `issue` signs as the one whose key is `ca.key`. Keys are written 0600 and every file
is replaced atomically (written aside, then renamed), so a crash never leaves half a key.
Nothing is overwritten without `force`, and every input is checked before the first file is
touched: bad input changes nothing.

Time is an input (`now`), so tests can make certificates that are already expired.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudd.errors import PermanentError

DEFAULT_DIR = Path("/etc/cloudd/pki")
#: The SAN URI prefix that names a member; the transport trusts nothing else in a certificate.
MEMBER_URI = "cloudd://member/"
#: The SAN URI prefix that says which kind of member holds the certificate.
KIND_URI = "cloudd://kind/"
#: The SAN URI prefix that names a node certificate's cloud.
CLOUD_URI = "cloudd://cloud/"
CA_DAYS = 3650
MEMBER_DAYS = 825

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock differences between members


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
    if name in ("ca",) or not _NAME.match(name):
        raise PkiError(f"bad member name {name!r}: use 1-63 lowercase letters, digits and '-', "
                       "starting and ending with a letter or digit, and not 'ca'")


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"bad --days {days}: must be at least 1")


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise PkiError(f"{path} already exists: use --force to replace it")


def _write(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; keys must be exactly 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: Path = DEFAULT_DIR, *, now: dt.datetime, days: int = CA_DAYS,
            force: bool = False, cluster: str = "cloudd") -> PkiFiles:
    """Create the cluster CA in `directory`; returns its paths (cert and key)."""
    _check_days(days)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    _refuse_existing([cert_path, key_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} cluster CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), mode=0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return PkiFiles(ca=cert_path, cert=cert_path, key=key_path)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
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
        if _spki(cert.public_key()) == _spki(key.public_key()):
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


def issue(directory: Path, name: str, *, now: dt.datetime, kind: MemberKind,
          cloud: str = "", days: int = MEMBER_DAYS, addresses: Sequence[str] = (),
          force: bool = False) -> PkiFiles:
    """Make `name`'s key and certificate, signed by the CA in `directory`, for a member of
    `kind` (a node's certificate names its `cloud`)."""
    check_member_name(name)
    _check_days(days)
    if kind is MemberKind.NODE:
        if not cloud:
            raise PkiError(f"a node certificate names its cloud: give --cloud for {name}")
        check_member_name(cloud)
    elif cloud:
        raise PkiError(f"only a node certificate names a cloud, not a {kind.value}'s")
    ips = parse_addresses(addresses)
    ca_cert, ca_key = _load_ca(directory)
    files = PkiFiles.for_member(directory, name)
    _refuse_existing([files.cert, files.key], force)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(MEMBER_URI + name),
        x509.UniformResourceIdentifier(KIND_URI + kind.value)]
    if cloud:
        sans.append(x509.UniformResourceIdentifier(CLOUD_URI + cloud))
    sans.append(x509.DNSName(name))
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.key, _key_pem(key), mode=0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def member_of_cert(cert: x509.Certificate) -> str | None:
    """The member a certificate names through its SAN URI, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(MEMBER_URI):
            return uri[len(MEMBER_URI):]
    return None


def identity_of_cert(cert: x509.Certificate) -> Identity | None:
    """The identity a certificate's SAN URIs name, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return identity_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))

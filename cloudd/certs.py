"""X.509 certificates as the cluster's PKI makes them: CAs and members' leaf certificates.

`cloudd.pki` decides what a certificate says (names, kinds, which CA signs) and keeps the
files; this module only builds the certificates, so both the root and the node issuer are
made, and every member's certificate is signed, the same way. Every certificate starts a few
minutes before `now`, to tolerate small clock differences between members.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BACKDATE = dt.timedelta(minutes=5)

#: A CA that signs: its certificate (whose subject becomes the issuer) and its key.
Signer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def spki(public_key: CertificatePublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo: equal for a certificate and the key it certifies."""
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def common_name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def ca_cert(*, subject: x509.Name, key: ec.EllipticCurvePrivateKey, now: dt.datetime,
            days: int, path_length: int, signer: Signer | None) -> x509.Certificate:
    """A CA certificate for `key`: self-signed without `signer`, else signed by it;
    `path_length` CAs at most may stand below it."""
    issuer_name, signing_key = (subject, key) if signer is None else (signer[0].subject,
                                                                     signer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False))
    if signer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer[1].public_key()),
            critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def member_cert(name: str, *, uris: Sequence[str], ips: Sequence[Address],
                key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int,
                signer: Signer) -> x509.Certificate:
    """A member's certificate for `key`: CN and SAN DNS `name`, the SAN `uris` (what it says
    of its holder) and `ips`, for TLS servers and clients alike."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans.append(x509.DNSName(name))
    sans += [x509.IPAddress(ip) for ip in ips]
    return (
        x509.CertificateBuilder()
        .subject_name(common_name(name))
        .issuer_name(signer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer[1].public_key()), critical=False)
        .sign(signer[1], hashes.SHA256())
    )

"""Mutual TLS between agents, and the check that a peer is the member it claims to be.

Both sides present a certificate from the cluster CA and both verify the other's (TLS 1.3
only): a missing client certificate, a certificate from another CA, or an expired one fails
the handshake itself. The handshake proves "this is some member"; the first frame of every
connection, `Hello{member, version}`, says which member, and `check_hello` refuses the
connection unless the certificate's SAN URI names that same member. Clients also check that
the server they dialled is the member they meant to reach.

What the certificate says of its holder (`cloudd.pki.Identity`: name, kind of member, and a
node's cloud) travels with every message the connection delivers, so that handlers decide
what this sender may do; a certificate that names no kind of member gets no connection.

Agents trust the cluster's roots only (the CA file). Pool hosts hold the node issuer, an
intermediate CA under the root, to sign the certificates of the nodes they boot; a node
presents its certificate and the issuer's, and OpenSSL verifies that chain up to a root. A
certificate signed by anything but a root is therefore the node issuer's work, and it is
taken only when it says it is a node's: a host or operator certificate the issuer signed (a
host's issuer key put to forging) is refused. Python's `ssl` hands over the peer's own
certificate only, but its issuer name is enough once the chain is verified: it is compared
with the subjects of the self-signed CAs this agent trusts.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from cloudd.daemon.network.codec import PROTOCOL_VERSION, default_codec
from cloudd.errors import ConfigError, Problem, RemoteProtocolError
from cloudd.pki import Identity, MemberKind, PkiFiles, identity_from_uris

#: A distinguished name as Python's `ssl` gives it: RDNs of (attribute, value) pairs.
Name = tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True)
class Hello:
    """The first frame each side sends: who it is and which protocol it speaks."""

    member: str
    version: int


default_codec.register(Hello, "cloudd.hello")


class PeerIdentityError(RemoteProtocolError):
    """The peer's certificate does not name the member it claims (or that we dialled)."""


def _load(ctx: ssl.SSLContext, files: PkiFiles) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    path = files.ca
    try:
        ctx.load_verify_locations(cafile=str(files.ca))
        path = files.cert
        ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([Problem(str(path), None, None, "pki",
                                   f"cannot load TLS files: {exc}")]) from None
    return ctx


def server_context(files: PkiFiles) -> ssl.SSLContext:
    """Accepts only TLS 1.3 clients that present a certificate from the cluster CA."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)


def client_context(files: PkiFiles) -> ssl.SSLContext:
    """Presents this agent's certificate; trusts only the cluster CA.

    Host names are not checked by OpenSSL: peers are dialled by address, and the member
    identity in the SAN URI is checked after the handshake instead (`check_server`).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _load(ctx, files)


def peer_identity(ssl_object: Any) -> Identity:
    """What the verified peer certificate's `cloudd://` SAN URIs say of its holder."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        raise PeerIdentityError("peer presented no certificate")
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    identity = identity_from_uris(uris)
    if identity is None:
        raise PeerIdentityError(
            "peer certificate names no kind of cloudd member (one cloudd://member/, one "
            "cloudd://kind/ SAN URI, and cloudd://cloud/ for a node, are required)")
    issuer: Name = cert.get("issuer", ())
    # The chain is verified: an issuer that is no trusted root is a CA below one, the node
    # issuer, whose certificates are nodes' only.
    if identity.kind is not MemberKind.NODE and issuer not in _roots(ssl_object):
        raise PeerIdentityError(
            f"{identity.name}'s certificate says kind {identity.kind.value} but is signed by "
            f"{_cn(issuer)!r}, not by a root CA: an intermediate (the node issuer) signs node "
            "certificates only")
    return identity


def _roots(ssl_object: Any) -> frozenset[Name]:
    """The subjects of the self-signed CAs this side trusts."""
    context = getattr(ssl_object, "context", None)
    cas = context.get_ca_certs() if context is not None else []
    return frozenset(ca["subject"] for ca in cas if ca.get("subject") == ca.get("issuer"))


def _cn(name: Name) -> str:
    return next((value for rdn in name for key, value in rdn if key == "commonName"),
                "an unnamed CA")


def check_hello(ssl_object: Any, msg: object) -> Identity:
    """Server side: the first frame must be a Hello whose member the certificate names."""
    if not isinstance(msg, Hello):
        raise RemoteProtocolError(f"expected Hello first, got {type(msg).__qualname__}")
    if msg.version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"Hello for protocol version {msg.version}, this agent speaks {PROTOCOL_VERSION}")
    named = peer_identity(ssl_object)
    if named.name != msg.member:
        raise PeerIdentityError(
            f"certificate names {named.name!r} but Hello claims {msg.member!r}")
    return named


def check_server(ssl_object: Any, msg: object, expected: str) -> Identity:
    """Client side: the server's certificate and Hello both name the member we dialled."""
    named = check_hello(ssl_object, msg)
    if named.name != expected:
        raise PeerIdentityError(f"dialled {expected!r} but the server is {named.name!r}")
    return named

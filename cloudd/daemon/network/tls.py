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
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from cloudd.daemon.network.codec import PROTOCOL_VERSION, default_codec
from cloudd.errors import ConfigError, Problem, RemoteProtocolError
from cloudd.pki import Identity, PkiFiles, identity_from_uris


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
    return identity


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

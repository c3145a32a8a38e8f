"""Mutual TLS between agents, and the check that a peer is the member it claims to be.

Both sides present a certificate from the cluster CA and both verify the other's (TLS 1.3
only): a missing client certificate, a certificate from another CA, or an expired one fails
the handshake itself. The handshake proves "this is some member"; the first frame of every
connection, `Hello{member, version}`, says which member, and `check_hello` refuses the
connection unless the certificate's SAN URI names that same member. Clients also check that
the server they dialled is the member they meant to reach.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from cloudd.daemon.network.codec import PROTOCOL_VERSION, default_codec
from cloudd.errors import ConfigError, Problem, RemoteProtocolError
from cloudd.pki import MEMBER_URI, PkiFiles


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


def peer_member(ssl_object: Any) -> str:
    """The member named by the verified peer certificate's `cloudd://member/` SAN URI."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        raise PeerIdentityError("peer presented no certificate")
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(MEMBER_URI):
            return str(value[len(MEMBER_URI):])
    raise PeerIdentityError("peer certificate names no cloudd member (no cloudd:// SAN URI)")


def check_hello(ssl_object: Any, msg: object) -> str:
    """Server side: the first frame must be a Hello whose member the certificate names."""
    if not isinstance(msg, Hello):
        raise RemoteProtocolError(f"expected Hello first, got {type(msg).__qualname__}")
    if msg.version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"Hello for protocol version {msg.version}, this agent speaks {PROTOCOL_VERSION}")
    named = peer_member(ssl_object)
    if named != msg.member:
        raise PeerIdentityError(
            f"certificate names {named!r} but Hello claims {msg.member!r}")
    return named


def check_server(ssl_object: Any, msg: object, expected: str) -> None:
    """Client side: the server's certificate and Hello both name the member we dialled."""
    named = check_hello(ssl_object, msg)
    if named != expected:
        raise PeerIdentityError(f"dialled {expected!r} but the server is {named!r}")

"""An operator's client written by hand from the agents' wire format, and the largest manifest
an agent takes from outside its folder: what the manifest flood's real test
(tests/real/daemon/test_manifest_flood_real.py) and its bench (bench/bench_manifest_flood.py)
both send, defined once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cloudd.config.yamlsrc import MAX_MANIFEST_BYTES
from cloudd.daemon.network.codec import PROTOCOL_VERSION, FrameDecoder, default_codec
from cloudd.daemon.network.tls import Hello
from cloudd.pki import PkiFiles


def maximal_manifest(cloud: str, pool: Iterable[tuple[str, str]]) -> str:
    """A self-contained web cloud `cloud` on `pool` (name, address), with servers until it is
    exactly MAX_MANIFEST_BYTES; its last server repeats the first one's address: one
    problem, found once all of it was parsed and validated."""
    hosts = "".join(f"  - {{name: {n}, address: {a}, libvirt_uri: \"test:///default\"}}\n"
                    for n, a in pool)
    text = (f"apiVersion: cloudd/v1\nkind: Cloud\nname: {cloud}\ntype: web\n"
            f"self_contained: true\ndomain_template_text: \"<domain/>\"\npool:\n{hosts}"
            "roles:\n  balancer: [{address: 10.200.0.1, image: /img/lb.qcow2}]\n"
            "  database: [{address: 10.200.0.2, image: /img/db.qcow2}]\n  server:\n")
    last = "    - {address: 10.201.0.1, image: /img/again.qcow2}\n"
    servers, size, i = [text], len(text) + len(last), 0
    while True:
        line = (f"    - {{address: 10.{201 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}, "
                f"image: /img/w{i}.qcow2}}\n")
        if size + len(line) > MAX_MANIFEST_BYTES - 2:
            break
        servers.append(line)
        size += len(line)
        i += 1
    text = "".join([*servers, last])
    text += "#" * (MAX_MANIFEST_BYTES - len(text) - 1) + "\n"
    assert len(text.encode()) == MAX_MANIFEST_BYTES
    return text


def operator_socket(address: tuple[str, int], *, ca: Path, files: PkiFiles, name: str,
                    timeout: float) -> ssl.SSLSocket:
    """A connection to the agent at `address` that passed TLS and the Hello, as operator
    `name` holding `files`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    sock = ctx.wrap_socket(socket.create_connection(address, timeout=timeout))
    sock.sendall(default_codec.encode(Hello(name, PROTOCOL_VERSION)))
    decoder = FrameDecoder(default_codec)
    got: list[object] = []
    while not got:
        chunk = sock.recv(65536)
        if not chunk:
            sock.close()
            raise ConnectionError(f"{address[0]} closed the operator's connection before its "
                                  "Hello")
        got = decoder.feed(chunk)
    if not isinstance(got[0], Hello):
        sock.close()
        raise ConnectionError(f"{address[0]} answered the Hello with {got[0]!r}")
    return sock


def pipeline(sock: ssl.SSLSocket, request: Callable[[int], bytes], *,
             more: Callable[[int], bool], outstanding: int, kind_of: Callable[[object], str],
             deadline: float) -> dict[str, int]:
    """Requests (`request(rid)`, rid from 1) on `sock` while `more(sent)`, at most
    `outstanding` of them unanswered, each sent as fast as the agent reads it; then wait for
    every answer. One thread, non-blocking (an SSL socket is not for two threads). Returns
    the answers by `kind_of`, and how many were sent; TimeoutError past `deadline`
    (monotonic)."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    decoder = FrameDecoder(default_codec)
    answered: dict[str, int] = {}
    sent, pending = 0, b""
    try:
        while pending or more(sent) or sum(answered.values()) < sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sent} requests sent, not all answered: {answered}")
            if not pending and more(sent) and sent - sum(answered.values()) < outstanding:
                sent += 1
                pending = request(sent)
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0))
            for _key, mask in sel.select(timeout=0.1):
                if mask & selectors.EVENT_WRITE and pending:
                    with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pending = pending[sock.send(pending[:1 << 18]):]
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 20)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                    if not chunk:
                        raise ConnectionError(f"the agent closed the connection after "
                                              f"{answered}")
                    for frame in decoder.feed_frames(chunk):
                        kind = kind_of(frame.msg)
                        answered[kind] = answered.get(kind, 0) + 1
    finally:
        sel.close()
    return {**answered, "sent": sent}

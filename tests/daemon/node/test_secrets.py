"""What a node keeps on disk besides its role's files: its assignment's secrets and the saved
assignment."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from ipaddress import ip_address
from pathlib import Path

import pytest
import structlog

from cloudd.daemon.network.catalogue import PeerInfo, RoleAssignment, register_all
from cloudd.daemon.network.codec import Codec
from cloudd.daemon.node.saved_assignment import (
    ASSIGNMENT_FILE,
    load_assignment,
    save_assignment,
)
from cloudd.daemon.node.secrets import write_secrets
from cloudd.errors import PermanentError, RemoteProtocolError


def pair(name: str, value: bytes) -> tuple[str, str]:
    return name, base64.b64encode(value).decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_private_files_and_forgotten_ones_go(tmp_path: Path) -> None:
    dest = tmp_path / "node" / "secrets"
    umask = os.umask(0o022)
    try:
        write_secrets((pair("a", b"one\n"), pair("b", b"\x00binary")), dest)
    finally:
        os.umask(umask)
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert (dest / "a").read_text() == "one\n" and mode(dest / "a") == 0o600
    assert (dest / "b").read_bytes() == b"\x00binary" and mode(dest) == 0o700
    (dest / "b").chmod(0o644)  # drifted: rewritten with its mode
    write_secrets((pair("a", b"changed\n"), pair("b", b"\x00binary")), dest)
    assert (dest / "a").read_text() == "changed\n" and mode(dest / "b") == 0o600
    write_secrets((pair("b", b"two"),), dest)  # the assignment no longer carries `a`
    assert [p.name for p in dest.iterdir()] == ["b"]
    write_secrets((), dest)  # a role that needs none keeps none
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x"])
def test_a_secret_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(PermanentError, match="is not a plain file name"):
        write_secrets((pair(name, b"x"),), tmp_path / "secrets")
    assert not (tmp_path / "secrets").exists()


def test_a_secret_that_is_not_base64_is_refused_without_its_value(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        write_secrets((("a", "hunter2!"),), tmp_path / "secrets")
    assert str(info.value) == "secret 'a' from the leader is not base64"
    assert not (tmp_path / "secrets").exists()


A = RoleAssignment(term=3, cloud="t", node="n1", role="database",
                   address=ip_address("10.0.0.1"), generation="g",
                   peers=(PeerInfo("s1", "server", ip_address("2001:db8::2"), True),),
                   secrets=(pair("db", b"hunter2"),))


def test_an_assignment_never_shows_its_secrets() -> None:
    assert "aHVudGVyMg" not in repr(A) and "hunter2" not in repr(A)


def test_saved_assignment_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "nodes" / "n1"
    assert load_assignment(root, node="n1", cloud="t") is None
    umask = os.umask(0o022)
    try:
        save_assignment(root, A)
    finally:
        os.umask(umask)
    assert mode(root / ASSIGNMENT_FILE) == 0o600
    assert mode(root) == 0o755  # not private: the role's services reach their files below
    assert load_assignment(root, node="n1", cloud="t") == A
    assert load_assignment(root, node="n2", cloud="t") is None
    assert load_assignment(root, node="n1", cloud="other") is None


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"term": 1}), json.dumps({
    "term": 1, "cloud": "t", "node": "n1", "role": "database", "generation": "g",
    "address": "1.2.3.4'; DROP USER root; --", "peers": [], "secrets": []})])
def test_an_unreadable_saved_assignment_counts_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / ASSIGNMENT_FILE).write_text(text)
    with structlog.testing.capture_logs() as logs:
        assert load_assignment(tmp_path, node="n1", cloud="t") is None
    assert [e["event"] for e in logs] == ["node.assignment_unreadable"]


def test_an_assignment_travels_with_its_secrets_and_typed_addresses() -> None:
    codec = register_all(Codec())
    frame = codec.encode(A)
    assert codec.decode_payload(frame[4:]).msg == A


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("address", "1.2.3.4'; DROP USER root; --",
     "address: Value error, \"1.2.3.4'; DROP USER root; --\" is not an IP address"),
    ("secrets", [["../x", "aGk="]], "secret name '../x' is not a plain name"),
    ("secrets", [["db", "not base64!"]], "secret 'db' is not base64 text"),
])
def test_the_codec_refuses_a_hostile_assignment(field: str, value: object,
                                                problem: str) -> None:
    codec = register_all(Codec())
    frame = codec.encode(A)
    body = json.loads(frame[4 + 7 + len(b"cloudd.role-assignment"):])
    body[field] = value
    raw = json.dumps(body).encode()
    head = frame[4:4 + 7 + len(b"cloudd.role-assignment")]
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        codec.decode_payload(head + raw)

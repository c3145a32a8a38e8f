"""What a node keeps on disk besides its role's files: the secrets' copies and the saved
assignment."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import structlog

from cloudd.config.model import Cloud, Ensure, Node, PoolHost
from cloudd.daemon.network.catalogue import PeerInfo, RoleAssignment
from cloudd.daemon.node.saved_assignment import (
    ASSIGNMENT_FILE,
    load_assignment,
    save_assignment,
)
from cloudd.daemon.node.secrets import copy_secrets
from cloudd.errors import PermanentError
from cloudd.providers.web.spec import WebSettings


def cloud(tmp_path: Path, secrets: dict[str, Path]) -> Cloud:
    return Cloud(name="t", type="web", ensure=Ensure.RUNNING, source=tmp_path / "t.yaml",
                 digest="g", domain_template=tmp_path / "t.xml",
                 pool=(PoolHost("pm1", "127.0.0.1"),), roles=("database",),
                 nodes=(Node("n1", "database", 1, "127.0.0.1", None, 64, 1, managed=False),),
                 settings=WebSettings(), secrets=secrets)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_private_copies_and_forgotten_ones_go(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one\n")
    (tmp_path / "b").write_text("two\n")
    dest = tmp_path / "node" / "secrets"
    copy_secrets(cloud(tmp_path, {"a": tmp_path / "a", "b": tmp_path / "b"}), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert (dest / "a").read_text() == "one\n" and mode(dest / "a") == 0o600
    assert mode(dest) == 0o700
    (dest / "b").chmod(0o644)  # drifted: rewritten with its mode
    (tmp_path / "a").write_text("changed\n")
    copy_secrets(cloud(tmp_path, {"a": tmp_path / "a", "b": tmp_path / "b"}), dest)
    assert (dest / "a").read_text() == "changed\n" and mode(dest / "b") == 0o600
    copy_secrets(cloud(tmp_path, {"b": tmp_path / "b"}), dest)
    assert [p.name for p in dest.iterdir()] == ["b"]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b"])
def test_a_secret_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    (tmp_path / "a").write_text("one\n")
    with pytest.raises(PermanentError, match="is not a plain file name"):
        copy_secrets(cloud(tmp_path, {name: tmp_path / "a"}), tmp_path / "secrets")


def test_a_missing_secret_names_its_file(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=f"secret 'a': cannot read {tmp_path}/gone"):
        copy_secrets(cloud(tmp_path, {"a": tmp_path / "gone"}), tmp_path / "secrets")


A = RoleAssignment(term=3, cloud="t", node="n1", role="database", address="10.0.0.1",
                   generation="g", peers=(PeerInfo("s1", "server", "10.0.0.2", True),))


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


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"term": 1})])
def test_an_unreadable_saved_assignment_counts_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / ASSIGNMENT_FILE).write_text(text)
    with structlog.testing.capture_logs() as logs:
        assert load_assignment(tmp_path, node="n1", cloud="t") is None
    assert [e["event"] for e in logs] == ["node.assignment_unreadable"]

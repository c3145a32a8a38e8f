"""The assignment a node accepted last, kept in its node root across agent restarts.

An agent that restarts (systemd after a crash, an upgrade) must not leave its role's services
unsupervised until the leader speaks again: it reads the assignment it accepted before,
converges at once, and its supervisor re-adopts the running processes. The file is written
durably (a crash leaves the old assignment or the new one) and private (0600); one that
cannot be read, or that names another node or cloud, counts as none.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from cloudd import log
from cloudd.daemon.network.catalogue import PeerInfo, RoleAssignment
from cloudd.durable import write_durable

ASSIGNMENT_FILE = "assignment.json"


def load_assignment(root: Path, *, node: str, cloud: str) -> RoleAssignment | None:
    """The assignment saved in the node root `root` for `node` of `cloud`, if any."""
    path = root / ASSIGNMENT_FILE
    try:
        raw = json.loads(path.read_text())
        peers = tuple(PeerInfo(**p) for p in raw.pop("peers"))
        saved = RoleAssignment(**raw, peers=peers)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.get("nodeside").error("node.assignment_unreadable", path=str(path), error=str(exc))
        return None
    return saved if saved.node == node and saved.cloud == cloud else None


def save_assignment(root: Path, a: RoleAssignment) -> None:
    """Keep `a` in the node root (OSError when the disk refuses)."""
    # The node root is made with the usual mode, not write_durable's 0700: the role's
    # services (mysql, www-data) reach their own files below it.
    root.mkdir(parents=True, exist_ok=True)
    write_durable(root / ASSIGNMENT_FILE, json.dumps(asdict(a)), mode=0o600)

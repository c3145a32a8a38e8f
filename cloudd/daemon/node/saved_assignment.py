"""The assignment a node accepted last, kept in its node root across agent restarts.

An agent that restarts (systemd after a crash, an upgrade) must not leave its role's services
unsupervised until the leader speaks again: it reads the assignment it accepted before,
converges at once, and its supervisor re-adopts the running processes. The file is written
durably (a crash leaves the old assignment or the new one) and private (0600: it holds the
role's secrets); one that cannot be read, fails the wire's own checks (an address that is
not one), or names another node or cloud, counts as none. It is read and written as the
codec reads and writes a message (`checks.Shape`), without pydantic.
"""

from __future__ import annotations

from pathlib import Path

from cloudd import log
from cloudd.daemon.network import jsontext
from cloudd.daemon.network.catalogue import RoleAssignment
from cloudd.daemon.network.checks import BAD, Problem, Shape
from cloudd.durable import write_durable

ASSIGNMENT_FILE = "assignment.json"
#: The same checks as the codec's: the file is read back as strictly as the wire.
_SHAPE = Shape.of(RoleAssignment)


def load_assignment(root: Path, *, node: str, cloud: str) -> RoleAssignment | None:
    """The assignment saved in the node root `root` for `node` of `cloud`, if any."""
    path = root / ASSIGNMENT_FILE
    try:
        data = jsontext.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, jsontext.JsonError) as exc:
        _unreadable(path, str(exc))
        return None
    problems: list[Problem] = []
    saved = _SHAPE.check(data, problems)
    if saved is BAD:
        _unreadable(path, f"{len(problems)} invalid field(s)")  # never the values: secrets
        return None
    assert isinstance(saved, RoleAssignment)
    return saved if saved.node == node and saved.cloud == cloud else None


def _unreadable(path: Path, error: str) -> None:
    log.get("nodeside").error("node.assignment_unreadable", path=str(path), error=error)


def save_assignment(root: Path, a: RoleAssignment) -> None:
    """Keep `a` in the node root (OSError when the disk refuses)."""
    # The node root is made with the usual mode, not write_durable's 0700: the role's
    # services (mysql, www-data) reach their own files below it.
    root.mkdir(parents=True, exist_ok=True)
    write_durable(root / ASSIGNMENT_FILE, jsontext.dumps(_SHAPE.dump(a)), mode=0o600)

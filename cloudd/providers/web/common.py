"""What the web roles share: their settings, their templates, and the checked node values.

Every value a web role renders comes through here or through `cloudd.providers.values`:
`placed(a, target)` checks the node's name, cloud, address and root for the file they go
into, so that no role writes a value it has not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.providers import values
from cloudd.providers.base import Assignment, DirSpec
from cloudd.providers.service import ProbeKind, ProbeSpec
from cloudd.providers.web import spec

HERE = Path(__file__).resolve().parent
APP = HERE / "app.rb"
#: The MariaDB port the servers connect to.
DATABASE_PORT = 3306
#: InnoDB buffer pool, MiB; small, the guestbook is small.
BUFFER_POOL_MIB = 64
#: The unprivileged user the app and nginx's workers run as.
RUN_AS = "www-data"


def web_settings(raw: Mapping[str, Any]) -> spec.WebSettings:
    """Settings from the manifest's mapping; one precise error for the first bad value."""
    return values.settings(spec.WebSettings, raw, kind="web")


def fill(template: str, **fields: object) -> str:
    """Fill `{{name}}` fields of a template shipped next to this module (values checked by
    the caller; a value is inserted once, never expanded again)."""
    text = (HERE / template).read_text()

    def one(m: re.Match[str]) -> str:
        if m[1] not in fields:
            raise KeyError(f"{template}: no value for {{{{{m[1]}}}}}")
        return str(fields[m[1]])

    return re.sub(r"\{\{(\w+)\}\}", one, text)


@dataclass(frozen=True)
class Placed:
    """A node's own values, each checked for the files they are rendered into."""

    node: str
    cloud: str
    address: values.IPAddress
    root: Path


def placed(a: Assignment, target: str) -> Placed:
    """The assignment's node, cloud, address and root, refused if any could break `target`."""
    return Placed(node=values.label(a.node, what="node name", target=target),
                  cloud=values.label(a.cloud, what="cloud name", target=target),
                  address=values.ip(a.address, what="node address", target=target),
                  root=values.path(a.root, what="node root", target=target))


def peer_address(name: str, address: Any, target: str) -> values.IPAddress:
    """A peer's address, checked for `target`."""
    return values.ip(address, what=f"address of {name}", target=target)


def dirs(root: Path, *, run_owner: str = "root") -> tuple[DirSpec, ...]:
    """A node's root, its `log/` and its `run/`. `log/` is root's (0755) whatever the role:
    root appends the services' output there, so no service's user may plant anything in it
    (a service that writes logs of its own gets a folder of its own below). `run/` (pid
    files, sockets) belongs to the user that writes them."""
    return (DirSpec(root), DirSpec(root / "log"),
            DirSpec(root / "run", owner=run_owner, group=run_owner))


def http_probe(url: str, *, period: float = 2.0) -> ProbeSpec:
    return ProbeSpec(kind=ProbeKind.HTTP, url=url, period=period, timeout=2.0)

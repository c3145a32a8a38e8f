"""What a cloud type is, as data: its roles with their node counts and its settings model,
the secrets its roles need and which of them the leader makes, and whether its nodes get
cloudd's block of `/etc/hosts`.

A type's settings model is a plain frozen dataclass read by `cloudd.config.plain`, as the
agent's own settings are: every node agent loads its type's, and pydantic would cost it about
10.5 MiB (issue 18).

`cloudd.config` sits below the providers, so it cannot know the four types itself: the
manifest loader takes a catalog (type name -> TypeSpec) as an argument, and
`cloudd.providers.catalog` builds the real one from each provider's `spec` module.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudd.config import plain
from cloudd.config.intent import DrainMove

if TYPE_CHECKING:
    from cloudd.config.yamlsrc import Document, Loc
    from cloudd.errors import Problem

#: A cloud's validated settings: an instance of its type's `settings_model`.
Settings = Any


@dataclass(frozen=True)
class RoleSpec:
    """One role of a cloud type and how many nodes it may have."""

    name: str
    #: Fewest nodes when the role is present.
    min_nodes: int = 1
    #: Most nodes; None for no limit.
    max_nodes: int | None = None
    #: Whether the manifest must list the role at all.
    required: bool = True
    #: Whether the role may be elastic (its nodes follow its scheduler's queue: a batch
    #: type's compute role, whose provider reports the queue and drains a node to leave).
    elastic: bool = False
    #: How its nodes leave a drained host: a replica (stateless), a batch compute node
    #: (drained in its scheduler first), or stateful (its disk holds the role's data).
    move: DrainMove = DrainMove.REPLICA

    def __post_init__(self) -> None:
        if self.min_nodes < 0 or (self.max_nodes is not None and self.max_nodes < self.min_nodes):
            raise ValueError(f"role {self.name}: bad counts {self.min_nodes}..{self.max_nodes}")

    def describe(self) -> str:
        """`exactly 1`, `at least 1`, `1 to 3`, `any number` of nodes."""
        if self.max_nodes is None:
            return "any number of" if self.min_nodes == 0 else f"at least {self.min_nodes}"
        if self.max_nodes == self.min_nodes:
            return f"exactly {self.min_nodes}"
        return f"{self.min_nodes} to {self.max_nodes}"


@dataclass(frozen=True)
class GeneratedSecret:
    """A secret the leader makes, once, when the manifest declares none of that name and a
    role of the cloud needs it (`TypeSpec.role_secrets` names it): a key every node of a
    cluster shares, such as munge's. The leader keeps it in the cloud's replicated record, so
    that every later leader hands out the same one; nodes get it as any other secret, in
    their assignment, as the file `<secrets dir>/<name>` (0600)."""

    #: the secret's name: the file's name on the nodes, and the name a manifest declares
    #: under `secrets` to give its own instead
    name: str
    #: random bytes drawn from the system's CSPRNG
    size: int
    #: False: the file holds the random bytes as they are (a key); True: their URL-safe
    #: base64, without padding (a password a program reads as one line of text)
    text: bool = False

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"generated secret {self.name}: {self.size} bytes is outside "
                             "16 to 4096")

    def contents(self, random_bytes: bytes) -> bytes:
        """The secret's contents (its file) from its random bytes, in the form `text` says."""
        return base64.urlsafe_b64encode(random_bytes).rstrip(b"=") if self.text else random_bytes

    def random_bytes(self, contents: bytes) -> bytes:
        """The random bytes back from the secret's contents (a trailing newline ignored)."""
        if not self.text:
            return contents
        text = contents.strip()
        return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


@dataclass(frozen=True)
class LayoutNode:
    """One node as a type's layout check sees it: its address and every role it holds."""

    address: str
    roles: tuple[str, ...]


#: (validated settings, the nodes in the manifest's order) -> why the type's own rules refuse
#: this layout, in one sentence, or None.
LayoutCheck = Callable[[Settings, tuple[LayoutNode, ...]], "str | None"]


def any_layout(settings: Settings, nodes: tuple[LayoutNode, ...]) -> str | None:
    """The default layout check: counts per role are all a type asks."""
    return None


def no_secrets(settings: Settings, role: str) -> tuple[str, ...]:
    """The default declaration of a type's secrets: no role needs any."""
    return ()


@dataclass(frozen=True)
class TypeSpec:
    """One cloud type: its roles (in dependency order) and the model of its `settings`.

    A type with `layouts` (appscale) picks its role set by the value of the settings field
    named `layout_field`; `roles` is then unused.
    """

    name: str
    #: a frozen dataclass read by `cloudd.config.plain` (the tests' own types' too)
    settings_model: type[plain.Plain]
    roles: tuple[RoleSpec, ...] = ()
    layouts: Mapping[str, tuple[RoleSpec, ...]] = field(default_factory=dict)
    layout_field: str | None = None
    #: (validated settings, role) -> names (entries of the manifest's `secrets`) of the
    #: secrets that role's nodes need. The leader sends a node exactly these, so a role
    #: that does not name a secret never receives it.
    role_secrets: Callable[[Settings, str], tuple[str, ...]] = no_secrets
    #: Secrets the leader makes when the manifest declares none of their name (and some
    #: role needs them): e.g. a Slurm cluster's munge key.
    generated_secrets: tuple[GeneratedSecret, ...] = ()
    #: Whether each node keeps cloudd's block in its `/etc/hosts`, naming every node of the
    #: cloud (`cloudd.daemon.node.hostsfile`): types whose programs find each other by
    #: name (a batch scheduler's nodes) set it.
    hosts_file: bool = False
    #: The type's own rules on which roles go together and how many (AppScale's layout
    #: rules), beyond each role's counts; its sentence is the manifest's problem at `roles`.
    layout_check: LayoutCheck = any_layout

    def read_settings(self, doc: Document, data: dict[Any, Any],
                      prefix: Loc) -> tuple[Settings | None, list[Problem]]:
        """The settings read from `data` (found at `prefix` in `doc`), or None and the
        placed problems."""
        got, refused = plain.read(self.settings_model, data, prefix)
        return got, [doc.place(r.loc, message=r.message, at_key=r.at_key) for r in refused]

    def roles_for(self, settings: Settings) -> tuple[RoleSpec, ...]:
        """The roles this cloud may have, given its validated settings."""
        if self.layout_field is None:
            return self.roles
        return self.layouts[str(getattr(settings, self.layout_field))]


#: type name -> TypeSpec.
Catalog = Mapping[str, TypeSpec]


def settings_dict(settings: Settings) -> dict[str, Any]:
    """A cloud's settings as a mapping (what a provider's `Assignment` and `ClusterView`
    carry)."""
    return dataclasses.asdict(settings)


#: What pydantic's `model_dump_json` wrote: compact, UTF-8 as it is.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def settings_json(settings: Settings) -> bytes:
    """A cloud's settings as compact JSON, for the leader's hooks to digest (the digest lives
    only in the leader's memory: a new leader configures every role again anyway)."""
    return _JSON.encode(settings_dict(settings)).encode()

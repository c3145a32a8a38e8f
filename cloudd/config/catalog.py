"""What a cloud type is, as data: its roles with their node counts and its settings model.

`cloudd.config` sits below the providers, so it cannot know the four types itself: the
manifest loader takes a catalog (type name -> TypeSpec) as an argument, and
`cloudd.providers.catalog` builds the real one from each provider's `spec` module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel


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


def no_secrets(settings: BaseModel, role: str) -> tuple[str, ...]:
    """The default declaration of a type's secrets: no role needs any."""
    return ()


@dataclass(frozen=True)
class TypeSpec:
    """One cloud type: its roles (in dependency order) and the model of its `settings`.

    A type with `layouts` (appscale) picks its role set by the value of the settings field
    named `layout_field`; `roles` is then unused.
    """

    name: str
    settings_model: type[BaseModel]
    roles: tuple[RoleSpec, ...] = ()
    layouts: Mapping[str, tuple[RoleSpec, ...]] = field(default_factory=dict)
    layout_field: str | None = None
    #: (validated settings, role) -> names (entries of the manifest's `secrets`) of the
    #: secrets that role's nodes need. The leader sends a node exactly these, so a role
    #: that does not name a secret never receives it.
    role_secrets: Callable[[BaseModel, str], tuple[str, ...]] = no_secrets

    def roles_for(self, settings: BaseModel) -> tuple[RoleSpec, ...]:
        """The roles this cloud may have, given its validated settings."""
        if self.layout_field is None:
            return self.roles
        return self.layouts[str(getattr(settings, self.layout_field))]


#: type name -> TypeSpec.
Catalog = Mapping[str, TypeSpec]

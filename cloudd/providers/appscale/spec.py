"""The `appscale` type's roles and settings, in AppScale's two layouts.

`layout: default` is AppScale's simple form (one controller, any number of servers);
`layout: custom` names each role, as an AppScale `ips_layout` does.

Every node of a deployment holds its secret key (AppScale's `/etc/appscale/secret.key`, with
which its services authenticate to each other): the leader makes one unless the manifest
declares a secret named `secret.key`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudd.config.catalog import GeneratedSecret, RoleSpec, TypeSpec


class AppScaleSettings(BaseModel):
    """`settings:` of an AppScale cloud."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)

    layout: Literal["default", "custom"] = "default"
    """Which role set the manifest uses (see the module docstring)."""
    admin_email: str = Field(default="admin@example.com", pattern=r"^[^@\s]+@[^@\s]+$")
    """The AppScale administrator account."""
    admin_password_ref: str | None = None
    """Name of the entry under `secrets` holding the administrator's password."""
    replication: int = Field(default=1, ge=1, le=9)
    """Copies of each datastore row (AppScale's `n`)."""


_OPTIONAL = tuple(RoleSpec(r, min_nodes=0, required=False)
                  for r in ("login", "memcache", "open", "search", "taskqueue"))

#: The roles that create the administrator's account: the head of either layout.
ADMIN_ROLES = ("controller", "master")

#: The deployment's secret key, shared by every node: 24 random bytes as 32 characters of
#: text, the length of the key appscale-tools makes.
SECRET_KEY = GeneratedSecret("secret.key", size=24, text=True)


def role_secrets(settings: BaseModel, role: str) -> tuple[str, ...]:
    """Every node holds the deployment's secret key; only the head creates the
    administrator's account, so only it gets the password."""
    assert isinstance(settings, AppScaleSettings)
    ref = settings.admin_password_ref
    return (SECRET_KEY.name, *((ref,) if ref and role in ADMIN_ROLES else ()))


SPEC = TypeSpec(
    name="appscale",
    settings_model=AppScaleSettings,
    role_secrets=role_secrets,
    generated_secrets=(SECRET_KEY,),
    layout_field="layout",
    layouts={
        "default": (
            RoleSpec("controller", min_nodes=1, max_nodes=1),
            RoleSpec("servers", min_nodes=0, required=False),
        ),
        # Dependency order: coordination and storage before the master, app servers last.
        "custom": (
            RoleSpec("zookeeper", min_nodes=1),
            RoleSpec("database", min_nodes=1),
            RoleSpec("master", min_nodes=1, max_nodes=1),
            RoleSpec("appengine", min_nodes=1),
            *_OPTIONAL,
        ),
    },
)

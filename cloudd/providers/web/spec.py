"""The `web` type's roles and settings: nginx balancers, WEBrick app servers, one MariaDB."""

from __future__ import annotations

from dataclasses import dataclass

from cloudd.config.catalog import RoleSpec, Settings, TypeSpec
from cloudd.config.intent import DrainMove
from cloudd.config.plain import Plain, setting

#: The secret name used when the manifest's settings name none.
DEFAULT_PASSWORD_SECRET = "database_password"


@dataclass(frozen=True, kw_only=True)
class WebSettings(Plain):
    """`settings:` of a web cloud (a plain dataclass read by `cloudd.config.plain`: every
    node agent reads it)."""

    app_port: int = setting(8080, ge=1, le=65535)
    """TCP port the app servers listen on and the balancers forward to."""
    balancer_port: int = setting(80, ge=1, le=65535)
    """TCP port the balancers listen on."""
    database_name: str = setting("app", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    """The MariaDB database the app uses."""
    database_user: str = setting("app", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
    """The MariaDB account the app servers connect as."""
    database_password_ref: str | None = None
    """Name of the entry under `secrets` holding that account's password."""

    @property
    def password_secret(self) -> str:
        """The secret (a file in the node's secrets dir) that holds the app's DB password."""
        return self.database_password_ref or DEFAULT_PASSWORD_SECRET


#: The roles that hold the database password: the database (it grants the servers' account)
#: and the servers (they log in with it). The balancers only forward HTTP.
PASSWORD_ROLES = ("database", "server")


def role_secrets(settings: Settings, role: str) -> tuple[str, ...]:
    """The secrets a web role's nodes need, and the only ones the leader sends them."""
    assert isinstance(settings, WebSettings)
    return (settings.password_secret,) if role in PASSWORD_ROLES else ()


#: Dependency order: the database before the servers before the balancers.
SPEC = TypeSpec(
    name="web",
    settings_model=WebSettings,
    role_secrets=role_secrets,
    roles=(
        RoleSpec("database", min_nodes=1, max_nodes=1, move=DrainMove.STATEFUL),
        RoleSpec("server", min_nodes=1),
        RoleSpec("balancer", min_nodes=1),
    ),
)

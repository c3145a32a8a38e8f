"""The `appscale` type's roles and settings, as appscale-tools 3.8.1 knows them.

A manifest names each node's roles as AppScale's `ips_layout` does (its advanced list form,
the only one the 3.8.1 tools accept): `master`, `compute`, `database`, `zookeeper` and the
optional services. One VM may hold several roles (listed under each, by its address). Which
layouts are acceptable is AppScale's own rule, checked by `layout.layout_check` with
AppScale's reasons; the role counts here only say what cloudd itself needs (one master).

Every node of a deployment holds its secret key (AppScale's `/etc/appscale/secret.key`, with
which its services authenticate to each other): the leader makes one unless the manifest
declares a secret named `secret.key`. Only the master holds the administrator's password,
which the operator gives as a secret file and which goes into the AppScalefile there.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudd.config.catalog import GeneratedSecret, RoleSpec, Settings, TypeSpec
from cloudd.config.intent import DrainMove
from cloudd.config.plain import Plain, constrained, setting
from cloudd.providers.appscale.layout import layout_check
from cloudd.providers.appscale.sshtrust import CLIENT_SEED, HOST_SEED

#: AppScale's own test for an e-mail address (appscale-tools' `get_username_from_stdin`),
#: without white space, which would not survive the tools' command line.
EMAIL_PATTERN = r"^[^\s@]+@\[?[a-zA-Z0-9.-]+\.([a-zA-Z]{2,63}|[0-9]{1,3})\]?$"


@dataclass(frozen=True, kw_only=True)
class AppScaleSettings(Plain):
    """`settings:` of an AppScale cloud (a plain dataclass read by `cloudd.config.plain`:
    every node agent reads it)."""

    admin_email: str = setting("admin@example.com", pattern=EMAIL_PATTERN)
    """The AppScale administrator's e-mail (the AppScalefile's `admin_user`)."""
    admin_password_ref: str
    """Name of the entry under `secrets` holding the administrator's password (the
    AppScalefile's `admin_pass`). Required: without it `appscale up` would prompt for one."""
    keyname: str = setting("appscale", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    """The deployment's name to the AppScale tools (their `keyname` and `group`: the key
    `~/.appscale/<keyname>.key`, the state `~/.appscale/locations-<keyname>.json`). The
    default is the tools' own default keyname."""
    tools: str = setting("/usr/local/bin/appscale", pattern=r"^/")
    """The AppScale tools' `appscale` executable on the master (appscale-tools 3.8.1; Python 2
    code, which Debian 12 does not carry: the operator installs it). Missing or not
    executable: the master's runs are refused with its path."""
    sshd_reload: list[str] = constrained(
        factory=lambda: ["systemctl", "reload", "ssh.service"], min_length=1)
    """The command that makes the node's sshd read the deployment's host key and drop-in
    once cloudd wrote them (Debian's ssh unit by default)."""
    replication: int | None = setting(None, ge=1)
    """Copies of each datastore row; None leaves AppScale's default (every database node,
    at most 3). AppScale refuses more than the database nodes (see `layout.py`)."""


#: The roles, in dependency order: coordination and storage before the master (whose
#: `appscale up` starts the deployment), the services the app servers use before them, the
#: app servers, the balancers in front of them, spare nodes last. Only the master's count
#: is cloudd's own rule; whether a layout lacks a database or a compute node is AppScale's,
#: said in AppScale's words by `layout_check`.
ROLES = (
    RoleSpec("zookeeper", required=False, move=DrainMove.STATEFUL),
    RoleSpec("database", required=False, move=DrainMove.STATEFUL),
    RoleSpec("master", min_nodes=1, max_nodes=1, move=DrainMove.STATEFUL),
    RoleSpec("taskqueue", required=False),
    RoleSpec("memcache", required=False),
    RoleSpec("search", required=False),
    RoleSpec("search2", required=False),
    RoleSpec("compute", required=False),
    # AppScale's deprecated name for compute: its tools map it to compute, and so does the
    # AppScalefile cloudd writes (`layout.ips_layout`).
    RoleSpec("appengine", required=False),
    RoleSpec("load_balancer", required=False),
    RoleSpec("open", required=False),
)

#: The role that runs the AppScale tools and creates the administrator's account.
ADMIN_ROLE = "master"

#: The deployment's secret key, shared by every node: 24 random bytes as 32 characters of
#: text, the length of the key appscale-tools makes.
SECRET_KEY = GeneratedSecret("secret.key", size=24, text=True)


def role_secrets(settings: Settings, role: str) -> tuple[str, ...]:
    """Every node holds the deployment's secret key and its sshd host key's seed; only the
    master writes the AppScalefile and logs into the others, so only it gets the
    administrator's password and the seed of the key it logs in with."""
    assert isinstance(settings, AppScaleSettings)
    admin = ((CLIENT_SEED.name, settings.admin_password_ref) if role == ADMIN_ROLE else ())
    return (SECRET_KEY.name, HOST_SEED.name, *admin)


SPEC = TypeSpec(
    name="appscale",
    settings_model=AppScaleSettings,
    roles=ROLES,
    role_secrets=role_secrets,
    generated_secrets=(SECRET_KEY, CLIENT_SEED, HOST_SEED),
    layout_check=layout_check,
    # AppScale's nodes find each other by name as well as address
    hosts_file=True,
)

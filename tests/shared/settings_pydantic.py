"""The four cloud types' settings as pydantic models, as they were before the types' specs
(`cloudd.providers.*.spec`) made them plain dataclasses read by `cloudd.config.plain`: kept
unchanged as the oracle of tests/providers/test_settings_differential.py (same accept or
refuse, same values, same sentences, same JSON). Do not edit but to follow a deliberate
change of the settings. Only the models: the roles and the secrets are the specs' own.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloudd.providers.appscale.spec import EMAIL_PATTERN
from cloudd.providers.web.spec import DEFAULT_PASSWORD_SECRET


class WebSettings(BaseModel):
    """`settings:` of a web cloud."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)

    app_port: int = Field(default=8080, ge=1, le=65535)
    """TCP port the app servers listen on and the balancers forward to."""
    balancer_port: int = Field(default=80, ge=1, le=65535)
    """TCP port the balancers listen on."""
    database_name: str = Field(default="app", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    """The MariaDB database the app uses."""
    database_user: str = Field(default="app", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
    """The MariaDB account the app servers connect as."""
    database_password_ref: str | None = None
    """Name of the entry under `secrets` holding that account's password."""

    @property
    def password_secret(self) -> str:
        """The secret (a file in the node's secrets dir) that holds the app's DB password."""
        return self.database_password_ref or DEFAULT_PASSWORD_SECRET


#: A folder every node sees at the same path; plain characters only, since it is rendered
#: into pbs_mom's configuration.
SharedPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/+@=-]*$", max_length=200)]


class TorqueSettings(BaseModel):
    """`settings:` of a TORQUE cloud."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)

    queue: str = Field(default="batch", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,14}$")
    """The default execution queue created on the head."""
    np: int | None = Field(default=None, ge=1, le=4096)
    """Job slots per compute node; None: the node's vcpus (TORQUE's `auto_node_np`: each
    pbs_mom reports its processors)."""
    scheduler: bool = True
    """Run pbs_sched on the head (False: jobs are run only by hand, `qrun`)."""
    shared_paths: list[SharedPath] = Field(default_factory=list, max_length=16)
    """Folders mounted at the same path on every node (NFS, say): pbs_mom copies a job's
    output into them with `cp` (its `$usecp`) instead of `scp` to the submitting host."""


class SlurmSettings(BaseModel):
    """`settings:` of a Slurm cloud."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)

    cluster_name: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,39}$")
    """slurm.conf's ClusterName; None: the cloud's name."""
    partition: str = Field(default="main", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    """The default partition, holding every compute node."""
    max_time: str = Field(default="INFINITE", pattern=r"^(INFINITE|UNLIMITED|[0-9:-]+)$")
    """The partition's MaxTime, in Slurm's own format (minutes, or days-hours:minutes)."""
    munge_key_ref: str | None = None
    """Name of the entry under `secrets` holding the munge key; None: one is generated."""
    slurmd_timeout: int = Field(default=300, ge=10, le=86400)
    """slurm.conf's SlurmdTimeout, seconds: how long a compute node may not answer before
    slurmctld marks it DOWN and requeues its jobs (Slurm's own default)."""
    max_nodes: int = Field(default=1024, ge=1, le=65000)
    """slurm.conf's MaxNodeCount: most compute nodes slurmctld can hold. Compute nodes join
    as dynamic nodes, which need this room; slurmctld reads it only when it starts."""


class AppScaleSettings(BaseModel):
    """`settings:` of an AppScale cloud."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)

    admin_email: str = Field(default="admin@example.com", pattern=EMAIL_PATTERN)
    """The AppScale administrator's e-mail (the AppScalefile's `admin_user`)."""
    admin_password_ref: str
    """Name of the entry under `secrets` holding the administrator's password (the
    AppScalefile's `admin_pass`). Required: without it `appscale up` would prompt for one."""
    keyname: str = Field(default="appscale", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    """The deployment's name to the AppScale tools (their `keyname` and `group`: the key
    `~/.appscale/<keyname>.key`, the state `~/.appscale/locations-<keyname>.json`). The
    default is the tools' own default keyname."""
    tools: str = Field(default="/usr/local/bin/appscale", pattern=r"^/")
    """The AppScale tools' `appscale` executable on the master (appscale-tools 3.8.1; Python 2
    code, which Debian 12 does not carry: the operator installs it). Missing or not
    executable: the master's runs are refused with its path."""
    sshd_reload: list[str] = Field(default=["systemctl", "reload", "ssh.service"],
                                   min_length=1)
    """The command that makes the node's sshd read the deployment's host key and drop-in
    once cloudd wrote them (Debian's ssh unit by default)."""
    replication: int | None = Field(default=None, ge=1)
    """Copies of each datastore row; None leaves AppScale's default (every database node,
    at most 3). AppScale refuses more than the database nodes (see `layout.py`)."""



"""The `slurm` type's roles and settings: one slurmctld head, slurmd compute nodes."""

from __future__ import annotations

from dataclasses import dataclass

from cloudd.config.catalog import GeneratedSecret, RoleSpec, Settings, TypeSpec
from cloudd.config.intent import DrainMove
from cloudd.config.plain import Plain, setting


@dataclass(frozen=True, kw_only=True)
class SlurmSettings(Plain):
    """`settings:` of a Slurm cloud (a plain dataclass read by `cloudd.config.plain`: every
    node agent reads it)."""

    cluster_name: str | None = setting(None, pattern=r"^[a-z][a-z0-9_]{0,39}$")
    """slurm.conf's ClusterName; None: the cloud's name."""
    partition: str = setting("main", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    """The default partition, holding every compute node."""
    max_time: str = setting("INFINITE", pattern=r"^(INFINITE|UNLIMITED|[0-9:-]+)$")
    """The partition's MaxTime, in Slurm's own format (minutes, or days-hours:minutes)."""
    munge_key_ref: str | None = None
    """Name of the entry under `secrets` holding the munge key; None: one is generated."""
    slurmd_timeout: int = setting(300, ge=10, le=86400)
    """slurm.conf's SlurmdTimeout, seconds: how long a compute node may not answer before
    slurmctld marks it DOWN and requeues its jobs (Slurm's own default)."""
    max_nodes: int = setting(1024, ge=1, le=65000)
    """slurm.conf's MaxNodeCount: most compute nodes slurmctld can hold. Compute nodes join
    as dynamic nodes, which need this room; slurmctld reads it only when it starts."""


#: The secret holding the munge key when the manifest names none: the one the leader makes
#: (1024 random bytes, as munge's own `mungekey` makes them).
GENERATED_MUNGE_KEY = "munge.key"


def munge_key_name(settings: SlurmSettings) -> str:
    """The secret the nodes' munge key comes from."""
    return settings.munge_key_ref or GENERATED_MUNGE_KEY


def role_secrets(settings: Settings, role: str) -> tuple[str, ...]:
    """Every Slurm node runs munge, and munge's credentials need the one shared key."""
    assert isinstance(settings, SlurmSettings)
    return (munge_key_name(settings),)


#: Dependency order: the head (slurmctld, munge) before the compute nodes (slurmd).
SPEC = TypeSpec(
    name="slurm",
    settings_model=SlurmSettings,
    role_secrets=role_secrets,
    generated_secrets=(GeneratedSecret(GENERATED_MUNGE_KEY, size=1024),),
    hosts_file=True,
    roles=(
        RoleSpec("head", min_nodes=1, max_nodes=1, move=DrainMove.STATEFUL),
        RoleSpec("compute", min_nodes=1, elastic=True, move=DrainMove.SCHEDULED),
    ),
)

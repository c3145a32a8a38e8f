"""The `torque` type's roles and settings: one pbs_server head, pbs_mom compute nodes."""

from __future__ import annotations

from dataclasses import dataclass

from cloudd.config.catalog import RoleSpec, TypeSpec
from cloudd.config.intent import DrainMove
from cloudd.config.plain import LengthLimits, Plain, constrained, setting

#: A folder every node sees at the same path; plain characters only, since it is rendered
#: into pbs_mom's configuration.
SHARED_PATH = LengthLimits(pattern=r"^/[A-Za-z0-9._/+@=-]*$", max_length=200)


@dataclass(frozen=True, kw_only=True)
class TorqueSettings(Plain):
    """`settings:` of a TORQUE cloud (a plain dataclass read by `cloudd.config.plain`: every
    node agent reads it)."""

    queue: str = setting("batch", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,14}$")
    """The default execution queue created on the head."""
    np: int | None = setting(None, ge=1, le=4096)
    """Job slots per compute node; None: the node's vcpus (TORQUE's `auto_node_np`: each
    pbs_mom reports its processors)."""
    scheduler: bool = True
    """Run pbs_sched on the head (False: jobs are run only by hand, `qrun`)."""
    shared_paths: list[str] = constrained(factory=list, max_length=16, items=SHARED_PATH)
    """Folders mounted at the same path on every node (NFS, say): pbs_mom copies a job's
    output into them with `cp` (its `$usecp`) instead of `scp` to the submitting host."""


#: Dependency order: the head (pbs_server) before the compute nodes (pbs_mom).
SPEC = TypeSpec(
    name="torque",
    settings_model=TorqueSettings,
    # TORQUE finds its nodes by name (pbs_server's node list, $pbsserver, trqauthd's own
    # host), so every node's name must resolve on every node: cloudd's /etc/hosts block.
    hosts_file=True,
    roles=(
        RoleSpec("head", min_nodes=1, max_nodes=1, move=DrainMove.STATEFUL),
        RoleSpec("compute", min_nodes=1, elastic=True, move=DrainMove.SCHEDULED),
    ),
)

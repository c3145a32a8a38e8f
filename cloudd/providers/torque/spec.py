"""The `torque` type's roles and settings: one pbs_server head, pbs_mom compute nodes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloudd.config.catalog import RoleSpec, TypeSpec
from cloudd.config.intent import DrainMove

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

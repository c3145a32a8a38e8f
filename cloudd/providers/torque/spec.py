"""The `torque` type's roles and settings: one pbs_server head, pbs_mom compute nodes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cloudd.config.catalog import RoleSpec, TypeSpec


class TorqueSettings(BaseModel):
    """`settings:` of a TORQUE cloud."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)

    queue: str = Field(default="batch", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,14}$")
    """The default execution queue created on the head."""
    np: int | None = Field(default=None, ge=1, le=4096)
    """Job slots per compute node; None: the node's vcpus."""
    scheduler: bool = True
    """Run pbs_sched on the head (False: jobs are run only by hand, `qrun`)."""


#: Dependency order: the head (pbs_server) before the compute nodes (pbs_mom).
SPEC = TypeSpec(
    name="torque",
    settings_model=TorqueSettings,
    roles=(
        RoleSpec("head", min_nodes=1, max_nodes=1),
        RoleSpec("compute", min_nodes=1),
    ),
)

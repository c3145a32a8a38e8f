"""What a manifest asks for: the cloud's `ensure` and each node's `run` strategy; and how a
role's node may leave a drained host, as its type declares it.

One definition for the manifest's model and for the planner (`cloudd.vmctl.plan`), which
acts on exactly these values. Pure enums with no imports, so that the planner, a pure core,
may use them.
"""

from __future__ import annotations

from enum import StrEnum


class Ensure(StrEnum):
    """Whether the cloud should exist and run, or be stopped and its domains removed."""

    RUNNING = "running"
    STOPPED = "stopped"


class RunStrategy(StrEnum):
    """When a node's VM is (re)started, after KubeVirt's run strategies of the same names."""

    ALWAYS = "always"
    """Start it whenever it is not running, whatever stopped it."""
    RERUN_ON_FAILURE = "rerun-on-failure"
    """Start it unless the guest powered itself off."""
    MANUAL = "manual"
    """Define it, never start it: the operator starts and stops it."""


class DrainMove(StrEnum):
    """How a role's node may be moved off a drained host (`RoleSpec.move`, its type's word)."""

    REPLICA = "replica"
    """Stateless: moved only while another node of its role is ready (a sole node of its
    role moves at once: its role is down until it is ready again)."""
    SCHEDULED = "scheduled"
    """A batch compute node: its jobs would be killed by a stop, so it moves once its
    scheduler has drained it (or at once with the operator's `drain --move-stateful`), after
    the stateless nodes."""
    STATEFUL = "stateful"
    """Its disk is local and holds the role's data (a database): moved last, and only with
    the operator's word."""

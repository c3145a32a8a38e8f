"""What a manifest asks for: the cloud's `ensure` and each node's `run` strategy.

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

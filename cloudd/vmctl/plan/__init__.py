"""The leader's reconcile planner: pure, deterministic, no I/O.

`plan(desired, observed, now)` returns the actions (define, start, shutdown, reset, destroy,
undefine, move a running domain live, copy a missing image from a source host, create an
overlay, remove an overlay no node needs, fence a host) that move the pool towards the
manifest; the controller in `cloudd.daemon.leader.controller` performs them and calls again.
See `planner` for the rules, `placement` for host choice, `leftovers` for the overlays left
behind and `backoff` for failure bookkeeping.
"""

from cloudd.config.intent import DrainMove, Ensure, RunStrategy
from cloudd.vmctl.plan.backoff import BackoffPolicy, Ledger, delay, failed
from cloudd.vmctl.plan.model import (
    AFTER_RESET,
    GUEST_SHUTDOWN,
    UNREACHABLE_RESET_AFTER,
    Action,
    CopyImage,
    CreateOverlay,
    Define,
    Desired,
    Destroy,
    DomainObs,
    DomainState,
    FailRecord,
    Fence,
    HostObs,
    ImageSource,
    Limits,
    Liveness,
    Migrate,
    NodeAction,
    NodeSpec,
    Observed,
    Planned,
    RemoveImage,
    Reset,
    Shutdown,
    Start,
    Undefine,
    Waiting,
)
from cloudd.vmctl.plan.planner import plan, planned, summarize

__all__ = [
    "AFTER_RESET",
    "GUEST_SHUTDOWN",
    "UNREACHABLE_RESET_AFTER",
    "Action",
    "BackoffPolicy",
    "CopyImage",
    "CreateOverlay",
    "Define",
    "Desired",
    "Destroy",
    "DomainObs",
    "DomainState",
    "DrainMove",
    "Ensure",
    "FailRecord",
    "Fence",
    "HostObs",
    "ImageSource",
    "Ledger",
    "Limits",
    "Liveness",
    "Migrate",
    "NodeAction",
    "NodeSpec",
    "Observed",
    "Planned",
    "RemoveImage",
    "Reset",
    "RunStrategy",
    "Shutdown",
    "Start",
    "Undefine",
    "Waiting",
    "delay",
    "failed",
    "plan",
    "planned",
    "summarize",
]

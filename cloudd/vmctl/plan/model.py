"""The planner's vocabulary: what the operator wants, what the hosts report, what to do.

Everything here is a frozen dataclass or an Enum so that a plan is a pure function of values.
The integrator maps the manifest into `Desired` and the hosts' reports (plus the controller's
own bookkeeping: failures, in-flight actions, fences) into `Observed`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cloudd.config.intent import DrainMove, Ensure, RunStrategy


class Liveness(enum.Enum):
    """A host's liveness as decided by the pool's quorum (SWIM), not by the leader alone."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class DomainState(enum.Enum):
    """libvirt's domain states, by name."""

    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    """Shutting down, not yet off."""
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    NOSTATE = "nostate"


#: The shutoff reason libvirt gives when the guest powered itself off.
GUEST_SHUTDOWN = "shutdown"
#: The shutoff reason the controller keeps for a guest that powered off after the leader's
#: reset (a template whose `on_reboot` is destroy turns a reset into a power-off): not the
#: guest's own doing, so even a `rerun-on-failure` node is started again.
AFTER_RESET = "reset"
#: The manifest's default `timing.unreachable_reset_after`, seconds (`cloudd.config.model`
#: keeps the same number; a test holds them equal).
UNREACHABLE_RESET_AFTER = 900.0


@dataclass(frozen=True)
class ImageSource:
    """A pool host a node's missing image can be copied from (over SFTP, by the target host)."""

    host: str
    """The source host's pool name: its inventory must list the image for a copy to be planned."""
    address: str
    """Where the target host connects to fetch it."""


@dataclass(frozen=True)
class NodeSpec:
    """One VM of the cloud as the manifest declares it."""

    name: str
    role: str
    memory_mib: int
    vcpus: int
    image: str
    """The node's own disk image, as a path the host agent understands."""
    base_image: str | None = None
    """A backing image: a host that has it can get `image` as a qcow2 overlay (CreateOverlay)."""
    pin: str | None = None
    """The only host this node may run on, or None for any."""
    run: RunStrategy = RunStrategy.ALWAYS
    managed: bool = True
    """False: the node belongs to the cloud but its VM is not cloudd's to create or stop."""
    source: ImageSource | None = None
    """A host to copy the image from (its base image, when it has one) where it is missing."""
    held: bool = False
    """The operator's maintenance hold (with `run` manual): the node is left where and as it
    is. It is not started, and not placed, moved or taken off a dead host to be re-placed: a
    held node without a domain stays without one until the hold is released."""
    move: DrainMove = DrainMove.REPLICA
    """How it may leave a drained host."""

    @property
    def copied_image(self) -> str:
        """What a CopyImage copies: the shared base image when there is one (an overlay alone
        is useless without its backing file), else the node's own image."""
        return self.base_image if self.base_image is not None else self.image


@dataclass(frozen=True)
class Desired:
    cloud: str
    ensure: Ensure
    nodes: tuple[NodeSpec, ...]
    role_order: tuple[str, ...] = ()
    """Roles in dependency order; nodes are handled role by role, unknown roles last."""
    unreachable_reset_after: float = UNREACHABLE_RESET_AFTER
    """Seconds a node's agent may stay unreachable while its domain runs before the domain is
    reset (and, that long again after the reset, destroyed to be started again): the
    manifest's `timing.unreachable_reset_after`."""
    drained: frozenset[str] = frozenset()
    """Hosts the operator drained: no new domain goes there, and the nodes on them are moved
    elsewhere one role-safe step at a time (`planner`'s drain rules)."""
    move_stateful: frozenset[str] = frozenset()
    """The drained hosts whose stateful and batch compute nodes the operator allowed to move."""
    storage: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Host -> the shared storage its image folders are on, for the hosts that take part in
    live migration (the manifest's pool `migration`); a host absent takes none, so a node
    leaves it, and reaches it, by stop-and-re-place only."""


@dataclass(frozen=True)
class HostObs:
    name: str
    liveness: Liveness
    reachable: bool
    """The leader can reach this host's agent right now."""
    free_memory_mib: int
    images: frozenset[str] = frozenset()
    fenced: bool = False
    """A fence command succeeded since the host was declared dead: nothing runs there."""
    reported: bool = True
    """This leader has had at least one list of the host's domains (False: they are unknown,
    so no node may get a new domain until the host reports or is fenced)."""
    overlays: frozenset[tuple[str, str]] = frozenset()
    """(path, node) of the per-node overlays the host made for this cloud and still has (the
    host's own record, so never a base image or another cloud's file)."""


@dataclass(frozen=True)
class DomainObs:
    """One domain a host reported (the last report, if the host is unreachable now)."""

    host: str
    node: str
    cloud: str
    state: DomainState
    reason: str = ""
    """libvirt's reason for the state, e.g. `shutdown` (the guest powered off), `destroyed`."""
    term: int = 0
    """The leader term that defined it."""
    since: float = 0.0
    """When the domain entered `state`, on the controller's clock."""
    migrating: bool = False
    """A live migration of it runs (in or out): the node is on two hosts until it ends."""


@dataclass(frozen=True)
class FailRecord:
    """Repeated failures of one node or host, and when it may be tried again."""

    count: int
    last: float
    not_before: float


def _frozen(m: Mapping[str, FailRecord] | None = None) -> Mapping[str, FailRecord]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class Observed:
    hosts: tuple[HostObs, ...]
    domains: tuple[DomainObs, ...]
    node_failures: Mapping[str, FailRecord] = field(default_factory=_frozen)
    host_failures: Mapping[str, FailRecord] = field(default_factory=_frozen)
    in_flight: frozenset[str] = frozenset()
    """Nodes with an action still running: the planner leaves them alone."""
    fencing: frozenset[str] = frozenset()
    """Hosts with a fence command still running."""
    shutdowns: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: MappingProxyType({}))
    """(node, host) -> when a graceful shutdown was sent, for the destroy timeout."""
    unreachable: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """node -> since when its agent has been dead by this leader's own SWIM probes, as far as
    this leader has seen; a node absent is not known to be unreachable."""
    resets: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: MappingProxyType({}))
    """(node, host) -> when that domain was reset for an unreachable agent that has not been
    alive since (the next step is a destroy)."""
    ready: frozenset[str] = frozenset()
    """Nodes whose agent is alive and reports its role ready (a drain moves a node only
    while another of its role is among them)."""
    emptied: frozenset[str] = frozenset()
    """Batch compute nodes their scheduler shows drained with no job left (or taking none):
    a drain moves such a node without the operator's `--move-stateful`."""


@dataclass(frozen=True)
class Limits:
    """Planner knobs. Seconds on the controller's clock."""

    shutdown_timeout: float = 60.0
    """How long a guest gets to power off after a shutdown request before it is destroyed."""


# ---- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyImage:
    """Have `host` copy `image` from the source host `source` (before CreateOverlay/Define)."""

    node: str
    host: str
    source: str
    image: str
    reason: str


@dataclass(frozen=True)
class CreateOverlay:
    node: str
    host: str
    reason: str


@dataclass(frozen=True)
class Define:
    node: str
    host: str
    reason: str


@dataclass(frozen=True)
class Start:
    node: str
    host: str
    reason: str
    respawn: bool = False
    """The domain ran before and died: a restart, not a first start."""


@dataclass(frozen=True)
class Shutdown:
    node: str
    host: str
    reason: str


@dataclass(frozen=True)
class Reset:
    """Reset a running domain whose agent stays unreachable (a hung guest): it reboots at
    once, as by its reset button."""

    node: str
    host: str
    reason: str
    unreachable_for: float
    """Seconds the node's agent had been unreachable when the reset was decided."""


@dataclass(frozen=True)
class Destroy:
    node: str
    host: str
    reason: str
    unreachable_for: float | None = None
    """Set when this destroy is the hung-guest rule's second step (the agent stayed
    unreachable after a reset): seconds it had been unreachable. Like a reset, it counts
    against the node's backoff."""


@dataclass(frozen=True)
class Undefine:
    node: str
    host: str
    reason: str


@dataclass(frozen=True)
class RemoveImage:
    """Have `host` remove `image`, the overlay it made as `node`'s disk, which no node needs
    any more (the node left the manifest, or the cloud is stopped)."""

    node: str
    host: str
    image: str
    reason: str


@dataclass(frozen=True)
class Migrate:
    """Move `node`'s running domain from `host` to `target` live (libvirt's peer-to-peer
    migration): the two hosts share the storage its disks are on, so only its memory and
    device state cross, while the guest runs; it pauses for the last round only."""

    node: str
    host: str
    target: str
    reason: str


@dataclass(frozen=True)
class Fence:
    host: str
    reason: str


NodeAction = (CopyImage | CreateOverlay | Define | Start | Shutdown | Reset | Destroy | Undefine
              | RemoveImage | Migrate)
Action = NodeAction | Fence


@dataclass(frozen=True)
class Waiting:
    """A node the planner wanted to act on but could not yet, and why (for `inspect`)."""

    node: str
    reason: str


@dataclass(frozen=True)
class Planned:
    actions: tuple[Action, ...]
    waiting: tuple[Waiting, ...] = ()

"""The agent's own settings (`kind: Agent`, by default `/etc/cloudd/agent.yaml`).

Grouped, documented values, one docstring per field with its unit and why its default.
`profile: production` (the default) suits real hosts; `profile: local` is fast, for tests and
for agents that all run on one machine. A profile only chooses defaults: any value written
in the file wins. `check()` then rejects combinations that cannot work, in one sentence each.

Plain frozen dataclasses read by `cloudd.config.plain`, not pydantic models: every agent
loads these, a node agent in every VM among them, and pydantic alone costs one about 10.5 MiB
(docs/operations.md, "An agent's footprint"). The refusals are worded as they were.

The listen port defaults to 7760: clear of memberlist/Serf/Docker Swarm's 7946, which the
same hosts may also run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cloudd.config import yamlsrc
from cloudd.config.plain import FieldLimits, Plain, ip_address, read, setting
from cloudd.config.secretscan import inline_secrets
from cloudd.config.yamlsrc import Document
from cloudd.errors import ConfigError, Problem

DEFAULT_PATH = Path("/etc/cloudd/agent.yaml")
DEFAULT_PORT = 7760
DAY = 86400.0
DEFAULT_API_SOCKET = Path("/run/cloudd/cloudd.sock")
#: A member's name: a DNS label (lowercase letters, digits, '-'), as in the manifests.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

Seconds = float


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(value)!r}")
    return value


def _a_week_at_least(value: float) -> float:
    if value < 7 * DAY:
        raise ValueError(f"must be at least 7 days ({7 * DAY:g} s), got {value:g} s")
    return value


@dataclass(frozen=True, kw_only=True)
class Listen(Plain):
    address: str = setting("0.0.0.0", check=ip_address)
    """Address the agent's mTLS port binds to; 0.0.0.0: every interface."""
    port: int = setting(DEFAULT_PORT, ge=1, le=65535)
    """TCP port for every agent-to-agent message (election, gossip, commands)."""


@dataclass(frozen=True, kw_only=True)
class PkiSettings(Plain):
    ca: Path = Path("/etc/cloudd/pki/ca.pem")
    """The cluster CA certificate: peers must present a certificate it signed."""
    cert: Path = Path("/etc/cloudd/pki/agent.pem")
    """This agent's certificate; its name must match `name`."""
    key: Path = Path("/etc/cloudd/pki/agent.key")
    """This agent's private key (mode 0600)."""


@dataclass(frozen=True, kw_only=True)
class Libvirt(Plain):
    uri: str | None = "qemu:///system"
    """libvirt connection of a host agent; None on VMs (node agents have none)."""
    image_dirs: list[Path] = setting(factory=lambda: [Path("/var/lib/cloudd/images")])
    """Folders whose image files this host reports to the leader (placement only puts a
    node on a host that has its image, or its base image for an overlay). A domain's disks,
    shared folders, kernels and initrds must be inside them, or the host refuses it."""
    lab_allow_host_root_share: bool = False
    """LAB ONLY: let a domain share this host's whole `/` with its guest (the project's busybox
    test guest runs the host's own Python over virtiofs). Off by default, and never on a real
    host: a guest that sees `/` reads every secret on it."""


@dataclass(frozen=True, kw_only=True)
class Images(Plain):
    """Copying a node's missing image from its manifest `source_host`, over SFTP. The host
    that lacks the image connects to the source host's sshd, so these are the settings of
    the copying side; the source host only needs sshd and this key in its authorized_keys."""

    ssh_user: str = setting("root", min_length=1)
    """User to log in as on the source host; root by default, since images live in
    root-owned folders (/var/lib/cloudd/images)."""
    ssh_key: Path = Path("/etc/cloudd/ssh/id_ed25519")
    """This host's private key for the copy (mode 0600), kept apart from the operator's keys."""
    known_hosts: Path = Path("/etc/cloudd/ssh/known_hosts")
    """The operator's known_hosts file: a source host whose key is not in it is refused
    (never trust on first use: an image is what a VM boots)."""
    ssh_port: int = setting(22, ge=1, le=65535)
    """The source hosts' sshd port."""
    copy_limit: Seconds = setting(1800.0, gt=0)
    """Seconds one copy may take before it is abandoned (and retried with backoff); 30 min
    moves a 20 GiB image at ~12 MiB/s."""


@dataclass(frozen=True, kw_only=True)
class MetricsSettings(Plain):
    enabled: bool = False
    """Serve Prometheus metrics; off by default so that nothing listens unasked."""
    address: str = "127.0.0.1:9760"
    """host:port of the metrics endpoint; loopback by default (it is unauthenticated)."""


@dataclass(frozen=True, kw_only=True)
class Log(Plain):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe event logged; info shows every state transition."""


@dataclass(frozen=True, kw_only=True)
class MembershipSettings(Plain):
    """SWIM liveness. The defaults are the election core's production timing
    (`cloudd.election.config.Timing`) but for `probe_interval`, which is twice the core's
    (with `election.lease`, see there): agents keep TLS connections open, so probing is
    cheap, and a dead leader is noticed in well under a second. Nodes (members that are
    not pool hosts: VMs) are probed with the patience of the `node_*` fields instead, so that
    a guest whose agent stalls for seconds is not declared dead while its domain runs."""

    probe_interval: Seconds = setting(0.2, gt=0)
    """Seconds between two probes of a random member (memberlist's LAN profile uses 1 s).
    Idle, an agent's CPU is its messages: at 0.2 s with `election.lease` 0.8 s a host agent
    idles at about 0.8 % of a core and a leader's death is acted on in about 0.9 s; at the
    core's 0.1 s and 0.4 s, about 1.3 % and 0.4 s (bench/idle_agent.py, bench/failover.py,
    docs/operations.md "An agent's footprint"). The suspicion timeout counts in these
    periods, so this sets the failover time."""
    probe_timeout: Seconds = setting(0.04, gt=0)
    """Seconds to wait for an ack before asking others: 200 times a LAN round trip."""
    indirect_probes: int = setting(3, ge=1, le=16)
    """Members asked to probe on our behalf when a direct probe fails; 3 rides out one path."""
    suspicion_mult: float = setting(2.0, ge=1, le=32)
    """Suspicion lasts suspicion_mult * max(1, log10(N)) * probe_interval before a member is
    declared dead (memberlist's formula)."""
    node_probe_timeout: Seconds = setting(1.0, gt=0)
    """Seconds to wait for a node's ack before asking others, and as long again for theirs,
    before a probe of a node fails. A guest under TCG on a busy machine answers hundreds of
    milliseconds late and stalls for a second now and then: 1 s rides that out, and the
    other members are probed meanwhile at the usual pace."""
    node_suspicion: Seconds = setting(10.0, gt=0)
    """Seconds a suspect node stays suspect before a failed probe of ours declares it dead: a
    guest stalled for a few seconds answers again in time and is never dead. Nothing waits
    on it (a dead VM reaches the leader as libvirt's event), and a node that is really gone
    is dead within about this plus 2 * node_probe_timeout plus two probe rounds."""


@dataclass(frozen=True, kw_only=True)
class ElectionSettings(Plain):
    """Bully election and leader-lease timing (see `cloudd.election.config.Timing`)."""

    answer_timeout: Seconds = setting(0.1, gt=0)
    """Seconds to wait for a higher-priority agent to answer ELECTION before running."""
    coordinator_timeout: Seconds = setting(1.5, gt=0)
    """Seconds a leaderless member that is not the top live one waits for COORDINATOR."""
    lease: Seconds = setting(0.8, gt=0)
    """Seconds a host's lease to a leader lasts; renewed four times a lease. A successor
    waits at most this long, so it bounds failover from below. 0.8 s (the core's 0.4 s
    doubled, with `membership.probe_interval`): a renewal every 0.2 s halves the leader's
    messages, failover is set by the suspicion (about 0.8-0.9 s at a 0.2 s probe interval
    either way), and a leader rides out a stall of half a second without losing its lease."""
    no_quorum: Literal["stop", "freeze"] = "stop"
    """Without a host majority a leader resigns ('stop') or stays leader without acting
    ('freeze') until the majority returns."""


@dataclass(frozen=True, kw_only=True)
class Reconcile(Plain):
    """The level-triggered reconcile loop and its retry backoff."""

    resync_interval: Seconds = setting(30.0, gt=0)
    """Seconds between full passes with no event; events trigger passes at once."""
    backoff_base: Seconds = setting(1.0, gt=0)
    """First retry delay of a failed action, doubled per consecutive failure (with jitter)."""
    backoff_max: Seconds = setting(300.0, gt=0)
    """Largest retry delay; 5 minutes keeps a broken image from hammering libvirt."""
    stable_reset: Seconds = setting(600.0, gt=0)
    """Seconds a thing must stay healthy before its failure count resets to zero."""
    shutdown_timeout: Seconds = setting(60.0, gt=0)
    """Seconds a guest gets to power off after a shutdown request (ensure: stopped) before
    it is destroyed; a minute suits real operating systems."""
    manifest_poll: Seconds = setting(5.0, gt=0)
    """Seconds between two scans of manifest_dir for new, changed or removed manifests."""


@dataclass(frozen=True, kw_only=True)
class SupervisorSettings(Plain):
    """Per-node service supervision (supervisord's startsecs and friends)."""

    start_grace: Seconds = setting(1.0, ge=0)
    """Seconds a service must stay up for its start to count (supervisord's startsecs)."""
    stop_grace: Seconds = setting(10.0, ge=0)
    """Seconds between SIGTERM and SIGKILL; enough for MariaDB to flush."""
    fatal_cooldown: Seconds = setting(300.0, gt=0)
    """Seconds a service that failed every start retry stays FATAL before another try."""


@dataclass(frozen=True, kw_only=True)
class NodeSystem(Plain):
    """Where a node agent finds the system files it keeps: cloudd's block of `etc/hosts` and
    the manifest's users (`etc/passwd`, `etc/group`, made with `useradd --prefix`)."""

    system_root: Path = setting(Path("/"), check=_absolute)
    """The node's own root: `/` on a node. Several test nodes on one machine each get a
    folder of their own, so that none of them writes this machine's files."""


@dataclass(frozen=True, kw_only=True)
class TransportSettings(Plain):
    """How patient and how generous the agent's network is (`cloudd.daemon.network.transport`).
    These are bounds on a dead, stalled or hostile peer, not the pace of anything."""

    handshake_timeout: Seconds = setting(5.0, gt=0)
    """Seconds from TCP accept (or dial) to Hello exchanged, TLS included; longer is a dead or
    idle peer. A handshake takes milliseconds: 5 s rides out a loaded host."""
    frame_timeout: Seconds = setting(10.0, gt=0)
    """Seconds within which a frame once started must arrive whole; a stalled peer is dropped."""
    max_connections: int = setting(256, ge=1)
    """Inbound connections not yet authenticated (TLS and Hello under way) held at once; a new
    one beyond it drops the oldest. Authenticated members do not count: a flood of idle
    connections cannot lock a member out (each member holds one inbound connection)."""
    request_timeout: Seconds = setting(10.0, gt=0)
    """Seconds a request waits for its reply by default; a host command runs in far less."""
    backoff_initial: Seconds = setting(0.05, gt=0)
    """Seconds before the first redial after a failure; doubles per failure (with jitter that
    only shortens it) up to `backoff_max`."""
    backoff_max: Seconds = setting(5.0, gt=0)
    """Longest redial delay, seconds: a dead peer costs one dial per this many seconds. A peer
    that comes back dials us first and is redialled at once, whatever this says."""
    queue_limit: int = setting(1024, ge=1)
    """Messages held per peer while its connection is being dialled."""
    max_buffer: int = setting(4 << 20, ge=1)
    """Unsent bytes per connection beyond which further sends are dropped and reported (4 MiB)."""
    backlog: int = setting(1024, ge=1)
    """Listen backlog, so that a burst of dials is accepted and judged, not lost in SYNs."""
    max_requests_in_flight: int = setting(32, ge=1)
    """Requests from one connection being answered at once; more are answered "busy, try
    later" at once, so that one member's flood cannot queue unbounded work on this agent
    (a leader sends a host a few commands at a time; 32 leaves room for bursts)."""


@dataclass(frozen=True, kw_only=True)
class EventLogSettings(Plain):
    """The persisted event log behind `cloudd-cli events` and `inspect`
    (`cloudd.daemon.base.eventlog`): how long and how much of it is kept."""

    retention: Seconds = setting(14 * DAY, check=_a_week_at_least)
    """Seconds an event is kept (14 days); at least seven days, so that last week's failover
    is still there to read."""
    max_rows: int = setting(500_000, ge=1)
    """Most events kept (~100 MB); under an event storm this bound wins over `retention`."""
    prune_every: int = setting(1000, ge=1)
    """Appends between two prunes: pruning costs a scan of the time index."""


@dataclass(frozen=True, kw_only=True)
class AgentSettings(Plain):
    """Everything one agent needs to know about itself."""

    apiVersion: Literal["cloudd/v1"] = "cloudd/v1"
    kind: Literal["Agent"] = "Agent"
    profile: Literal["production", "local"] = "production"
    """Which defaults apply to the timing groups (see the module docstring)."""
    name: str = field(metadata={"limits": FieldLimits(pattern=NAME_PATTERN)})
    """This agent's member name: a pool host's or a node's name in the manifests."""
    listen: Listen = field(default_factory=Listen)
    pki: PkiSettings = field(default_factory=PkiSettings)
    libvirt: Libvirt = field(default_factory=Libvirt)
    images: Images = field(default_factory=Images)
    state_dir: Path = Path("/var/lib/cloudd")
    """Persisted state: highest term seen, service state, event history."""
    manifest_dir: Path = Path("/etc/cloudd")
    """Folder scanned for cloud manifests (*.yaml, except this settings file)."""
    api_socket: Path = DEFAULT_API_SOCKET
    """Unix socket of the local API used by cloudd-cli (root only)."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: Log = field(default_factory=Log)
    membership: MembershipSettings = field(default_factory=MembershipSettings)
    election: ElectionSettings = field(default_factory=ElectionSettings)
    reconcile: Reconcile = field(default_factory=Reconcile)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)
    events: EventLogSettings = field(default_factory=EventLogSettings)
    node: NodeSystem = field(default_factory=NodeSystem)


#: Defaults of the `local` profile: reconciling and supervision about ten times faster, for
#: agents on one machine over loopback or network namespaces. MembershipSettings and election keep
#: their production timing: it is already sub-second, and tighter probes turn a loaded test
#: machine's scheduling delays into false suspicions. The transport keeps its production
#: bounds too: they only ever apply to a peer that is gone or misbehaving, and a returning
#: peer is redialled at once. The event log keeps a tenth of the rows: many agents share one
#: machine's disk.
LOCAL: dict[str, dict[str, Any]] = {
    "reconcile": {"resync_interval": 2.0, "backoff_base": 0.1, "backoff_max": 5.0,
                  "stable_reset": 10.0, "manifest_poll": 0.5, "shutdown_timeout": 10.0},
    "supervisor": {"start_grace": 0.2, "stop_grace": 2.0, "fatal_cooldown": 5.0},
    "events": {"max_rows": 50_000},
}


def _with_profile(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("profile") != "local":
        return data
    merged = dict(data)
    for group, defaults in LOCAL.items():
        written = data.get(group)
        if written is None:
            merged[group] = dict(defaults)
        elif isinstance(written, dict):
            merged[group] = {**defaults, **written}
    return merged


Rule = tuple[tuple[str, str], tuple[str, str], str]


def check(s: AgentSettings) -> list[Rule]:
    """Combinations that cannot work: (field, the other field involved, one sentence)."""
    out: list[Rule] = []
    m, e, r = s.membership, s.election, s.reconcile
    if m.probe_timeout >= m.probe_interval:
        out.append((("membership", "probe_timeout"), ("membership", "probe_interval"), (
            f"{m.probe_timeout} s must be shorter than membership.probe_interval "
            f"({m.probe_interval} s): a probe must end before the next one starts")))
    elif m.node_probe_timeout < m.probe_timeout:  # one sentence per mistake, not two
        out.append((("membership", "node_probe_timeout"), ("membership", "probe_timeout"), (
            f"{m.node_probe_timeout} s must not be shorter than membership.probe_timeout "
            f"({m.probe_timeout} s): a node is never given less time to answer than a host")))
    if m.node_suspicion < m.suspicion_mult * m.probe_interval:
        out.append((("membership", "node_suspicion"), ("membership", "probe_interval"), (
            f"{m.node_suspicion} s must not be shorter than a host's shortest suspicion "
            f"(membership.suspicion_mult * membership.probe_interval = "
            f"{m.suspicion_mult * m.probe_interval:g} s)")))
    if e.answer_timeout >= e.coordinator_timeout:
        out.append((("election", "answer_timeout"), ("election", "coordinator_timeout"), (
            f"{e.answer_timeout} s must be shorter than election.coordinator_timeout "
            f"({e.coordinator_timeout} s)")))
    if e.lease <= m.probe_interval:
        out.append((("election", "lease"), ("membership", "probe_interval"), (
            f"{e.lease} s must be longer than membership.probe_interval "
            f"({m.probe_interval} s), or a leader loses its lease between two probes")))
    if r.backoff_base > r.backoff_max:
        out.append((("reconcile", "backoff_base"), ("reconcile", "backoff_max"), (
            f"{r.backoff_base} s must not exceed reconcile.backoff_max ({r.backoff_max} s)")))
    t = s.transport
    if t.backoff_initial > t.backoff_max:
        out.append((("transport", "backoff_initial"), ("transport", "backoff_max"), (
            f"{t.backoff_initial} s must not exceed transport.backoff_max ({t.backoff_max} s)")))
    return out


def build_agent(doc: Document) -> AgentSettings:
    """AgentSettings from a parsed Document; ConfigError with placed problems otherwise."""
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.place((), message="agent settings must be a YAML mapping")])
    problems: list[Problem] = inline_secrets(doc, secrets_keys=())
    if problems:
        raise ConfigError(problems)
    settings, refused = read(AgentSettings, _with_profile(doc.data))
    if settings is None:
        raise ConfigError([doc.place(r.loc, message=r.message, at_key=r.at_key)
                           for r in refused])
    bad = check(settings)
    if bad:
        # Place each at the field the operator wrote, when only the other one is a default.
        raise ConfigError([
            doc.place(loc if loc in doc.value_marks or other not in doc.value_marks else other,
                      field_name=".".join(loc), message=msg)
            for loc, other, msg in bad])
    return settings


def load_agent(path: str | os.PathLike[str] = DEFAULT_PATH) -> AgentSettings:
    """The agent settings at `path`; ConfigError listing placed problems otherwise."""
    return build_agent(yamlsrc.load(path))

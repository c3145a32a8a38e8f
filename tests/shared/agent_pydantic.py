"""The agent's settings as pydantic models, as they were before `cloudd.config.agent` read
them without pydantic: kept unchanged as the oracle of tests/config/test_agent_differential.py
(same accept or refuse, same values, same sentences). Do not edit but to follow a deliberate
change of the settings. The profile's defaults and the rules across fields (`check`) are
not what changed, so they are the settings' own.

The original docstring follows.

The agent's own settings (`kind: Agent`, by default `/etc/cloudd/agent.yaml`).

Grouped, documented values, one docstring per field with its unit and why its default.
`profile: production` (the default) suits real hosts; `profile: local` is fast, for tests and
for agents that all run on one machine. A profile only chooses defaults: any value written
in the file wins. `check()` then rejects combinations that cannot work, in one sentence each.

The listen port defaults to 7760: clear of memberlist/Serf/Docker Swarm's 7946, which the
same hosts may also run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from cloudd.config.agent import _with_profile, check
from cloudd.config.problems import inline_secrets
from cloudd.config.yamlsrc import Document
from cloudd.errors import ConfigError, Problem
from shared.manifest_pydantic import Address
from shared.pydantic_problems import validate_model

DEFAULT_PATH = Path("/etc/cloudd/agent.yaml")
DEFAULT_PORT = 7760
DAY = 86400.0

_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)
Seconds = float
#: Paths are written as strings; strict mode alone would demand Path objects.
FsPath = Annotated[Path, Strict(False)]


class Listen(BaseModel):
    model_config = _CONFIG
    address: Address = "0.0.0.0"
    """Address the agent's mTLS port binds to; 0.0.0.0: every interface."""
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """TCP port for every agent-to-agent message (election, gossip, commands)."""


class PkiSettings(BaseModel):
    model_config = _CONFIG
    ca: FsPath = Path("/etc/cloudd/pki/ca.pem")
    """The cluster CA certificate: peers must present a certificate it signed."""
    cert: FsPath = Path("/etc/cloudd/pki/agent.pem")
    """This agent's certificate; its name must match `name`."""
    key: FsPath = Path("/etc/cloudd/pki/agent.key")
    """This agent's private key (mode 0600)."""


class Libvirt(BaseModel):
    model_config = _CONFIG
    uri: str | None = "qemu:///system"
    """libvirt connection of a host agent; None on VMs (node agents have none)."""
    image_dirs: list[FsPath] = Field(default_factory=lambda: [Path("/var/lib/cloudd/images")])
    """Folders whose image files this host reports to the leader (placement only puts a
    node on a host that has its image, or its base image for an overlay). A domain's disks,
    shared folders, kernels and initrds must be inside them, or the host refuses it."""
    lab_allow_host_root_share: bool = False
    """LAB ONLY: let a domain share this host's whole `/` with its guest (the project's busybox
    test guest runs the host's own Python over virtiofs). Off by default, and never on a real
    host: a guest that sees `/` reads every secret on it."""


class Images(BaseModel):
    """Copying a node's missing image from its manifest `source_host`, over SFTP. The host
    that lacks the image connects to the source host's sshd, so these are the settings of
    the copying side; the source host only needs sshd and this key in its authorized_keys."""

    model_config = _CONFIG
    ssh_user: str = Field(default="root", min_length=1)
    """User to log in as on the source host; root by default, since images live in
    root-owned folders (/var/lib/cloudd/images)."""
    ssh_key: FsPath = Path("/etc/cloudd/ssh/id_ed25519")
    """This host's private key for the copy (mode 0600), kept apart from the operator's keys."""
    known_hosts: FsPath = Path("/etc/cloudd/ssh/known_hosts")
    """The operator's known_hosts file: a source host whose key is not in it is refused
    (never trust on first use: an image is what a VM boots)."""
    ssh_port: int = Field(default=22, ge=1, le=65535)
    """The source hosts' sshd port."""
    copy_limit: Seconds = Field(default=1800.0, gt=0)
    """Seconds one copy may take before it is abandoned (and retried with backoff); 30 min
    moves a 20 GiB image at ~12 MiB/s."""


class MetricsSettings(BaseModel):
    model_config = _CONFIG
    enabled: bool = False
    """Serve Prometheus metrics; off by default so that nothing listens unasked."""
    address: str = "127.0.0.1:9760"
    """host:port of the metrics endpoint; loopback by default (it is unauthenticated)."""


class Log(BaseModel):
    model_config = _CONFIG
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe event logged; info shows every state transition."""


class MembershipSettings(BaseModel):
    """SWIM liveness. The defaults are the election core's production timing
    (`cloudd.election.config.Timing`) but for `probe_interval`, which is twice the core's
    (with `election.lease`, see there): agents keep TLS connections open, so probing is
    cheap, and a dead leader is noticed in well under a second. Nodes (members that are
    not pool hosts: VMs) are probed with the patience of the `node_*` fields instead, so that
    a guest whose agent stalls for seconds is not declared dead while its domain runs."""

    model_config = _CONFIG
    probe_interval: Seconds = Field(default=0.2, gt=0)
    """Seconds between two probes of a random member (memberlist's LAN profile uses 1 s).
    Idle, an agent's CPU is its messages: at 0.2 s with `election.lease` 0.8 s a host agent
    idles at about 0.8 % of a core and a leader's death is acted on in about 0.9 s; at the
    core's 0.1 s and 0.4 s, about 1.3 % and 0.4 s (bench/idle_agent.py, bench/failover.py,
    docs/operations.md "An agent's footprint"). The suspicion timeout counts in these
    periods, so this sets the failover time."""
    probe_timeout: Seconds = Field(default=0.04, gt=0)
    """Seconds to wait for an ack before asking others: 200 times a LAN round trip."""
    indirect_probes: int = Field(default=3, ge=1, le=16)
    """Members asked to probe on our behalf when a direct probe fails; 3 rides out one path."""
    suspicion_mult: float = Field(default=2.0, ge=1, le=32)
    """Suspicion lasts suspicion_mult * max(1, log10(N)) * probe_interval before a member is
    declared dead (memberlist's formula)."""
    node_probe_timeout: Seconds = Field(default=1.0, gt=0)
    """Seconds to wait for a node's ack before asking others, and as long again for theirs,
    before a probe of a node fails. A guest under TCG on a busy machine answers hundreds of
    milliseconds late and stalls for a second now and then: 1 s rides that out, and the
    other members are probed meanwhile at the usual pace."""
    node_suspicion: Seconds = Field(default=10.0, gt=0)
    """Seconds a suspect node stays suspect before a failed probe of ours declares it dead: a
    guest stalled for a few seconds answers again in time and is never dead. Nothing waits
    on it (a dead VM reaches the leader as libvirt's event), and a node that is really gone
    is dead within about this plus 2 * node_probe_timeout plus two probe rounds."""


class ElectionSettings(BaseModel):
    """Bully election and leader-lease timing (see `cloudd.election.config.Timing`)."""

    model_config = _CONFIG
    answer_timeout: Seconds = Field(default=0.1, gt=0)
    """Seconds to wait for a higher-priority agent to answer ELECTION before running."""
    coordinator_timeout: Seconds = Field(default=1.5, gt=0)
    """Seconds a leaderless member that is not the top live one waits for COORDINATOR."""
    lease: Seconds = Field(default=0.8, gt=0)
    """Seconds a host's lease to a leader lasts; renewed four times a lease. A successor
    waits at most this long, so it bounds failover from below. 0.8 s (the core's 0.4 s
    doubled, with `membership.probe_interval`): a renewal every 0.2 s halves the leader's
    messages, failover is set by the suspicion (about 0.8-0.9 s at a 0.2 s probe interval
    either way), and a leader rides out a stall of half a second without losing its lease."""
    no_quorum: Literal["stop", "freeze"] = "stop"
    """Without a host majority a leader resigns ('stop') or stays leader without acting
    ('freeze') until the majority returns."""


class Reconcile(BaseModel):
    """The level-triggered reconcile loop and its retry backoff."""

    model_config = _CONFIG
    resync_interval: Seconds = Field(default=30.0, gt=0)
    """Seconds between full passes with no event; events trigger passes at once."""
    backoff_base: Seconds = Field(default=1.0, gt=0)
    """First retry delay of a failed action, doubled per consecutive failure (with jitter)."""
    backoff_max: Seconds = Field(default=300.0, gt=0)
    """Largest retry delay; 5 minutes keeps a broken image from hammering libvirt."""
    stable_reset: Seconds = Field(default=600.0, gt=0)
    """Seconds a thing must stay healthy before its failure count resets to zero."""
    shutdown_timeout: Seconds = Field(default=60.0, gt=0)
    """Seconds a guest gets to power off after a shutdown request (ensure: stopped) before
    it is destroyed; a minute suits real operating systems."""
    manifest_poll: Seconds = Field(default=5.0, gt=0)
    """Seconds between two scans of manifest_dir for new, changed or removed manifests."""


class SupervisorSettings(BaseModel):
    """Per-node service supervision (supervisord's startsecs and friends)."""

    model_config = _CONFIG
    start_grace: Seconds = Field(default=1.0, ge=0)
    """Seconds a service must stay up for its start to count (supervisord's startsecs)."""
    stop_grace: Seconds = Field(default=10.0, ge=0)
    """Seconds between SIGTERM and SIGKILL; enough for MariaDB to flush."""
    fatal_cooldown: Seconds = Field(default=300.0, gt=0)
    """Seconds a service that failed every start retry stays FATAL before another try."""


class NodeSystem(BaseModel):
    """Where a node agent finds the system files it keeps: cloudd's block of `etc/hosts` and
    the manifest's users (`etc/passwd`, `etc/group`, made with `useradd --prefix`)."""

    model_config = _CONFIG
    system_root: FsPath = Path("/")
    """The node's own root: `/` on a node. Several test nodes on one machine each get a
    folder of their own, so that none of them writes this machine's files."""

    @field_validator("system_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value


class TransportSettings(BaseModel):
    """How patient and how generous the agent's network is (`cloudd.daemon.network.transport`).
    These are bounds on a dead, stalled or hostile peer, not the pace of anything."""

    model_config = _CONFIG
    handshake_timeout: Seconds = Field(default=5.0, gt=0)
    """Seconds from TCP accept (or dial) to Hello exchanged, TLS included; longer is a dead or
    idle peer. A handshake takes milliseconds: 5 s rides out a loaded host."""
    frame_timeout: Seconds = Field(default=10.0, gt=0)
    """Seconds within which a frame once started must arrive whole; a stalled peer is dropped."""
    max_connections: int = Field(default=256, ge=1)
    """Inbound connections not yet authenticated (TLS and Hello under way) held at once; a new
    one beyond it drops the oldest. Authenticated members do not count: a flood of idle
    connections cannot lock a member out (each member holds one inbound connection)."""
    request_timeout: Seconds = Field(default=10.0, gt=0)
    """Seconds a request waits for its reply by default; a host command runs in far less."""
    backoff_initial: Seconds = Field(default=0.05, gt=0)
    """Seconds before the first redial after a failure; doubles per failure (with jitter that
    only shortens it) up to `backoff_max`."""
    backoff_max: Seconds = Field(default=5.0, gt=0)
    """Longest redial delay, seconds: a dead peer costs one dial per this many seconds. A peer
    that comes back dials us first and is redialled at once, whatever this says."""
    queue_limit: int = Field(default=1024, ge=1)
    """Messages held per peer while its connection is being dialled."""
    max_buffer: int = Field(default=4 << 20, ge=1)
    """Unsent bytes per connection beyond which further sends are dropped and reported (4 MiB)."""
    backlog: int = Field(default=1024, ge=1)
    """Listen backlog, so that a burst of dials is accepted and judged, not lost in SYNs."""
    max_requests_in_flight: int = Field(default=32, ge=1)
    """Requests from one connection being answered at once; more are answered "busy, try
    later" at once, so that one member's flood cannot queue unbounded work on this agent
    (a leader sends a host a few commands at a time; 32 leaves room for bursts)."""


class EventLogSettings(BaseModel):
    """The persisted event log behind `cloudd-cli events` and `inspect`
    (`cloudd.daemon.base.eventlog`): how long and how much of it is kept."""

    model_config = _CONFIG
    retention: Seconds = Field(default=14 * DAY)
    """Seconds an event is kept (14 days); at least seven days, so that last week's failover
    is still there to read."""
    max_rows: int = Field(default=500_000, ge=1)
    """Most events kept (~100 MB); under an event storm this bound wins over `retention`."""
    prune_every: int = Field(default=1000, ge=1)
    """Appends between two prunes: pruning costs a scan of the time index."""

    @field_validator("retention")
    @classmethod
    def _a_week_at_least(cls, value: float) -> float:
        if value < 7 * DAY:
            raise ValueError(f"must be at least 7 days ({7 * DAY:g} s), got {value:g} s")
        return value


class AgentSettings(BaseModel):
    """Everything one agent needs to know about itself."""

    model_config = _CONFIG
    apiVersion: Literal["cloudd/v1"] = "cloudd/v1"
    kind: Literal["Agent"] = "Agent"
    profile: Literal["production", "local"] = "production"
    """Which defaults apply to the timing groups (see the module docstring)."""
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    """This agent's member name: a pool host's or a node's name in the manifests."""
    listen: Listen = Listen()
    pki: PkiSettings = PkiSettings()
    libvirt: Libvirt = Libvirt()
    images: Images = Images()
    state_dir: FsPath = Path("/var/lib/cloudd")
    """Persisted state: highest term seen, service state, event history."""
    manifest_dir: FsPath = Path("/etc/cloudd")
    """Folder scanned for cloud manifests (*.yaml, except this settings file)."""
    api_socket: FsPath = Path("/run/cloudd/cloudd.sock")
    """Unix socket of the local API used by cloudd-cli (root only)."""
    metrics: MetricsSettings = MetricsSettings()
    log: Log = Log()
    membership: MembershipSettings = MembershipSettings()
    election: ElectionSettings = ElectionSettings()
    reconcile: Reconcile = Reconcile()
    supervisor: SupervisorSettings = SupervisorSettings()
    transport: TransportSettings = TransportSettings()
    events: EventLogSettings = EventLogSettings()
    node: NodeSystem = NodeSystem()


def build_agent(doc: Document) -> AgentSettings:
    """AgentSettings from a parsed Document; ConfigError with placed problems otherwise."""
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.place((), message="agent settings must be a YAML mapping")])
    problems: list[Problem] = inline_secrets(doc, secrets_keys=())
    if problems:
        raise ConfigError(problems)
    settings, problems = validate_model(doc, AgentSettings, _with_profile(doc.data))
    if settings is None:
        raise ConfigError(problems)
    bad = check(settings)
    if bad:
        # Place each at the field the operator wrote, when only the other one is a default.
        raise ConfigError([
            doc.place(loc if loc in doc.value_marks or other not in doc.value_marks else other,
                      field_name=".".join(loc), message=msg)
            for loc, other, msg in bad])
    return settings



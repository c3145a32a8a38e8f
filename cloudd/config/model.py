"""The manifest as written (input models) and as used (frozen, normalized Cloud).

The input models check each value in isolation (`cloudd.config.plain.read_model` reads them
strictly, with pydantic's refusals: a node agent, which reads every manifest it runs under,
does not load pydantic for it); `cloudd.config.manifest` does the rules that
span fields (counts per role, unique addresses, host pins) and builds the `Cloud` that the
planner and the providers consume: a flat, ordered list of nodes with every default applied.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from cloudd.config.catalog import GeneratedSecret

# Part of the manifest's vocabulary, defined apart so that the planner can share it.
from cloudd.config.intent import Ensure as Ensure
from cloudd.config.intent import RunStrategy as RunStrategy
from cloudd.config.plain import ValueLimits
from cloudd.config.plain import ip_address as _ip
from cloudd.config.sshkeys import check_public_key
from cloudd.config.users import MAX_USERS, User, UserIn
from cloudd.election.config import TwoHost

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} is not a DNS label (lowercase letters, digits and '-', "
                         "1 to 63 characters, not starting or ending with '-')")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


DnsLabel = Annotated[str, ValueLimits(check=_dns_label)]
SshPublicKey = Annotated[str, ValueLimits(check=check_public_key)]
Address = Annotated[str, ValueLimits(check=_ip)]
AbsPath = Annotated[str, ValueLimits(check=_absolute)]


#: The libvirt URIs another host's libvirtd may be reached at for a migration: the system
#: QEMU driver over an authenticated transport (not plain TCP), with no query parameter but
#: those naming where its socket or credentials are.
_MIGRATION_URI = re.compile(r"qemu(\+(tls|ssh|libssh|libssh2|unix))?://[^\s/?]*/system"
                            r"(\?(socket|pkipath|keyfile|known_hosts)=[^\s&]+"
                            r"(&(socket|pkipath|keyfile|known_hosts)=[^\s&]+)*)?")


def _migration_uri(value: str) -> str:
    if not _MIGRATION_URI.fullmatch(value):
        raise ValueError(f"{value!r} is not a libvirt URI of a system QEMU driver over TLS, "
                         "SSH or a local socket (qemu+tls://HOST/system, qemu+ssh://..., "
                         "qemu+unix:///system?socket=...)")
    return value


@dataclass(frozen=True, kw_only=True)
class MigrationIn:
    """How the other pool hosts move guests to this one live (libvirt's peer-to-peer
    migration): the hosts that name the same `storage` see the same image folders at the
    same paths, and their libvirtds trust each other."""

    uri: Annotated[str, ValueLimits(check=_migration_uri)]
    """This host's libvirtd as the other hosts' libvirtds reach it (qemu+tls://...)."""
    storage: DnsLabel
    """The name of the storage its image folders are on, shared with the hosts naming it."""
    address: Address | None = None
    """Where this host takes a guest's memory stream; None: the host's `address`."""
    unsafe: bool = False
    """Moves from this host skip libvirt's check that the guest's disks are on storage it
    knows to be shared (NFS, GlusterFS, Ceph...): true only where the operator knows the
    storage is shared though libvirt cannot tell (libvirt's `--unsafe`; the lab's two
    libvirtds on one file system)."""
    tls: bool = False
    """Moves to this host encrypt the guest's memory stream (libvirt's VIR_MIGRATE_TLS): both
    hosts' qemu.conf must name their certificates (`migrate_tls_x509_cert_dir`). Without it
    the memory (the node's key with it) crosses the network in clear: leave it false only on
    a network that carries nothing else."""


@dataclass(frozen=True, kw_only=True)
class PoolHostIn:
    name: DnsLabel
    address: Address
    libvirt_uri: str | None = None
    fence: Annotated[list[str] | None, ValueLimits(min_length=1)] = None
    migration: MigrationIn | None = None


@dataclass(frozen=True, kw_only=True)
class TwoHostIn:
    """A pool of exactly two hosts where the survivor acts after fencing the other
    (docs/operations.md, "Two-host pools"). Seconds."""

    fence_delay: Annotated[float, ValueLimits(ge=0, le=3600)] = TwoHost.fence_delay
    wait_for_all: Annotated[float | None, ValueLimits(gt=0, le=86400)] = None


@dataclass(frozen=True, kw_only=True)
class NetworkIn:
    """How nodes configure their address (the manifest gives addresses without prefix)."""

    prefix_length: Annotated[int, ValueLimits(ge=1, le=128)] = 24
    gateway: Address | None = None


@dataclass(frozen=True, kw_only=True)
class ResourcesIn:
    memory_mib: Annotated[int, ValueLimits(ge=64, le=1024 * 1024)] = 512
    vcpus: Annotated[int, ValueLimits(ge=1, le=512)] = 1


#: Seconds a node's agent may stay unreachable while its domain runs before the leader resets
#: the domain (`timing.unreachable_reset_after`): well past a first boot under TCG (four Debian
#: nodes booting at once on two cores were all up after about 7 minutes).
UNREACHABLE_RESET_AFTER = 900.0
#: Seconds between two runs of the provider's cluster checks (`timing.monitor_interval`).
MONITOR_INTERVAL = 30.0
#: Most candidate nodes one elastic role may list.
MAX_ELASTIC = 1024


@dataclass(frozen=True, kw_only=True)
class TimingIn:
    """The cloud's own bounds on its guests, in seconds."""

    unreachable_reset_after: Annotated[float, ValueLimits(ge=10)] = UNREACHABLE_RESET_AFTER
    """A node whose domain runs while its agent has been unreachable (dead by the leader's
    own SWIM probes) this long is hung: reset, then destroyed and started again if it stays
    unreachable as long again. Counted from the domain's start for an agent that never came
    up."""
    monitor_interval: Annotated[float, ValueLimits(ge=1, le=3600)] = MONITOR_INTERVAL
    """Seconds between two runs of the provider's cluster checks (`monitor`) by the leader;
    they also run after every configure."""


@dataclass(frozen=True, kw_only=True)
class NodeAccessIn:
    """How an operator gets into the cloud's nodes: root's SSH keys (public keys only)."""

    ssh_authorized_keys: Annotated[list[SshPublicKey], ValueLimits(max_length=64)] = field(
        default_factory=list)


@dataclass(frozen=True, kw_only=True)
class NodeTemplateIn:
    """What every candidate node of an elastic role shares: a node without address or name.
    `{name}` in `image` stands for each node's name (each managed node needs its own disk)."""

    image: AbsPath | None = None
    memory_mib: Annotated[int | None, ValueLimits(ge=64, le=1024 * 1024)] = None
    vcpus: Annotated[int | None, ValueLimits(ge=1, le=512)] = None
    host: str | None = None
    base_image: AbsPath | None = None
    overlay: bool = False
    source_host: str | None = None
    managed: bool = True
    run: Literal["always", "rerun-on-failure", "manual"] = "always"


@dataclass(frozen=True, kw_only=True)
class NodeIn(NodeTemplateIn):
    """One node as written: the fields a template shares, and its own address and name."""

    address: Address
    name: DnsLabel | None = None


@dataclass(frozen=True, kw_only=True)
class ElasticIn:
    min: Annotated[int, ValueLimits(ge=0, le=MAX_ELASTIC)]
    max: Annotated[int, ValueLimits(ge=1, le=MAX_ELASTIC)]
    idle_after: Annotated[float, ValueLimits(ge=10, le=7 * 86400)] = 300.0
    cooldown: Annotated[float, ValueLimits(ge=0, le=86400)] = 120.0


@dataclass(frozen=True, kw_only=True)
class ElasticRoleIn:
    """A role whose nodes follow its scheduler's queue, between `min` and `max` of the
    candidates its addresses make (a list, or a range `FIRST-LAST`)."""

    elastic: ElasticIn
    template: NodeTemplateIn
    addresses: Annotated[list[Address] | str, ValueLimits(min_length=1)]
    #: The candidates' names: `{index}` stands for each one's place in `addresses` (from
    #: 1); by default `CLOUD-ROLE-{index}`, as any node's.
    names: Annotated[str | None, ValueLimits(min_length=1, max_length=63)] = None


@dataclass(frozen=True, kw_only=True)
class RoleFilesIn:
    """A role written as two files, line i of one pairing with line i of the other."""

    addresses_file: str
    images_file: str


@dataclass(frozen=True, kw_only=True)
class CloudIn:
    apiVersion: Literal["cloudd/v1"]
    kind: Literal["Cloud"]
    name: DnsLabel
    type: str
    ensure: Literal["running", "stopped"] = "running"
    #: A file of this machine: required in a manifest read from disk, refused in a
    #: self-contained one (`cloudd.config.sources`).
    domain_template: str | None = None
    #: The template's text, in a self-contained manifest only (cloudd writes it).
    domain_template_text: str | None = None
    #: Set by cloudd on the manifests it sends: the text names no file (`sources.Origin`).
    self_contained: bool = False
    pool: Annotated[list[PoolHostIn], ValueLimits(min_length=1)]
    #: Present: the pool is a two-host pool (exactly two hosts, each with a fence command).
    two_host: TwoHostIn | None = None
    roles: Annotated[dict[str, Any], ValueLimits(min_length=1)]
    resources: ResourcesIn = field(default_factory=ResourcesIn)
    settings: dict[str, Any] = field(default_factory=dict)
    #: name -> {file: PATH} (read from disk) or {value_b64: ...} / {} (self-contained);
    #: checked by `cloudd.config.sources`, never here, so that no refusal quotes a value.
    secrets: dict[str, Any] = field(default_factory=dict)
    network: NetworkIn = field(default_factory=NetworkIn)
    template_values: dict[str, str] = field(default_factory=dict)
    #: Optional: without it no one can log into a node (root is locked, no user, no key).
    node_access: NodeAccessIn = field(default_factory=NodeAccessIn)
    timing: TimingIn = field(default_factory=TimingIn)
    #: The users every node has, with the same uid everywhere (`cloudd.config.users`).
    users: Annotated[list[UserIn], ValueLimits(max_length=MAX_USERS)] = field(default_factory=list)


@dataclass(frozen=True)
class ElasticSpec:
    """An elastic role's bounds: how many of its candidate nodes may be in use, and when."""

    min: int
    max: int
    #: Seconds a node runs no job before it is drained to leave.
    idle_after: float = 300.0
    #: Seconds after the role grew during which no node is drained.
    cooldown: float = 120.0


@dataclass(frozen=True)
class Secret:
    """A secret the manifest declares: its contents when this agent holds them.

    None: declared, but withheld from this agent (a node's view of its cloud; the leader
    sends a node the secrets its role needs in its assignment). Never shown by `repr`."""

    value: bytes | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class NodeAccess:
    """Operator access to the cloud's nodes, written into each node's seed by its host."""

    #: OpenSSH public key lines root accepts on every node; () (the default): no way in.
    ssh_authorized_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolHost:
    """A physical machine that may run this cloud's VMs."""

    name: str
    address: str
    #: None: the host agent's own libvirt connection (its settings' `libvirt.uri`).
    libvirt_uri: str | None = None
    #: The command that powers this host off for good (IPMI, a PDU...), run by the leader
    #: before re-placing the host's nodes elsewhere; () when none is configured.
    fence: tuple[str, ...] = ()
    #: How other pool hosts move guests here live (`MigrationIn`); None: they do not, and a
    #: drain moves nodes off and onto this host by stop-and-re-place only.
    migration: Migration | None = None


@dataclass(frozen=True)
class Migration:
    """A pool host's part in live migration, with every default applied."""

    uri: str
    storage: str
    #: Where the host takes a guest's memory stream.
    address: str
    #: Moves from this host skip libvirt's shared-storage check (`MigrationIn.unsafe`).
    unsafe: bool = False
    #: Moves to this host encrypt the memory stream (`MigrationIn.tls`).
    tls: bool = False


@dataclass(frozen=True)
class Node:
    """One node of the cloud with every default applied."""

    name: str
    role: str
    #: 1-based position within its role.
    index: int
    address: str
    #: The disk the VM boots from (the overlay itself when `overlay`); None when unmanaged.
    image: str | None
    memory_mib: int
    vcpus: int
    #: Pool host the VM must run on; None: the planner places it.
    host: str | None = None
    #: The backing image of a per-node copy-on-write overlay (`image`).
    base_image: str | None = None
    overlay: bool = False
    #: Pool host to copy a missing image (or base image) from.
    source_host: str | None = None
    #: False: an existing machine cloudd configures but never defines, starts or destroys.
    managed: bool = True
    run: RunStrategy = RunStrategy.ALWAYS
    #: Every role the node holds, in the type's order (`role`, the one its name and index come
    #: from, among them): one node may hold several (the same address under several roles).
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.roles:
            object.__setattr__(self, "roles", (self.role,))
        elif self.role not in self.roles:
            raise ValueError(f"node {self.name}: role {self.role!r} is not among {self.roles}")


@dataclass(frozen=True)
class Cloud:
    """A validated manifest: what one cloud must look like."""

    name: str
    type: str
    ensure: Ensure
    #: The manifest file (for a text received over the network, a name for it), and a
    #: sha256 over the manifest, its `inputs` and (keyed) its secrets: changes with any edit.
    source: Path
    digest: str
    #: The template file named by a manifest read from disk; None when the manifest is
    #: self-contained (its text is in `template_text`).
    domain_template: Path | None
    pool: tuple[PoolHost, ...]
    #: Roles in the type's dependency order (only those with nodes).
    roles: tuple[str, ...]
    #: All nodes, in role order then in the order written.
    nodes: tuple[Node, ...]
    #: The type's settings model instance.
    settings: Any
    #: secret name -> its contents, if this agent holds them.
    secrets: Mapping[str, Secret]
    #: Other files the cloud was built from: the domain template, role list files, secrets.
    inputs: tuple[Path, ...] = ()
    #: The manifest as written: the very text that was validated and that `digest` covers
    #: (a self-contained one holds secrets: never shown by `repr`).
    text: str = field(default="", repr=False)
    #: The domain template's text; None for an agent that renders no domain (a node).
    template_text: str | None = field(default=None, repr=False)
    #: role -> the names of the secrets its nodes need (the type's declaration): a node
    #: is sent those and no other.
    role_secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Prefix length and gateway of the nodes' network.
    prefix_length: int = 24
    gateway: str | None = None
    #: Extra `${placeholder}` values for the domain template (kernel, bridge...).
    template_values: Mapping[str, str] = field(default_factory=dict)
    #: Who may log into the nodes (the pool hosts' texts carry it; a node's view does not).
    node_access: NodeAccess = NodeAccess()
    #: A two-host pool (None: the pool's majority decides, as always).
    two_host: TwoHost | None = None
    #: Seconds a running node's agent may stay unreachable before its domain is reset.
    unreachable_reset_after: float = UNREACHABLE_RESET_AFTER
    #: The users every node makes or keeps, with these ids (the leader sends them).
    users: tuple[User, ...] = ()
    #: The secrets the leader makes for this cloud: those the type may generate that a role
    #: of the cloud needs and the manifest does not declare (`TypeSpec.generated_secrets`).
    generated: tuple[GeneratedSecret, ...] = ()
    #: Whether each node keeps cloudd's block of `/etc/hosts` (`TypeSpec.hosts_file`).
    hosts_file: bool = False
    #: Seconds between two runs of the provider's cluster checks by the leader.
    monitor_interval: float = MONITOR_INTERVAL
    #: role -> its bounds, for the roles whose nodes follow the queue: their nodes in
    #: `nodes` are the candidates, of which the leader uses some (`in_use`).
    elastic: Mapping[str, ElasticSpec] = field(default_factory=dict)

    def candidates(self, role: str) -> tuple[Node, ...]:
        """An elastic role's candidate nodes, in order ((): not an elastic role)."""
        return self.nodes_of(role) if role in self.elastic else ()

    def in_use(self, active: Collection[str]) -> Cloud:
        """This cloud with, of its elastic roles' candidates, only the nodes named in
        `active`: what the leader plans, assigns and configures."""
        if not self.elastic:
            return self
        keep = tuple(n for n in self.nodes
                     if n.role not in self.elastic or n.name in active)
        return replace(self, nodes=keep)

    def nodes_of(self, role: str) -> tuple[Node, ...]:
        """The nodes holding `role` (among others, for a node with several)."""
        return tuple(n for n in self.nodes if role in n.roles)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def host(self, name: str) -> PoolHost:
        for h in self.pool:
            if h.name == name:
                return h
        raise KeyError(name)

"""Every message agents exchange, registered with the one codec under stable names.

The election's own messages come from `cloudd.election.messages`; the host commands from
`cloudd.vmctl.hostagent`. The rest are defined here, because they exist only between agents:
manifests passed along, domain events forwarded to the leader, a node's role assignment and
its report, the leader's requests to a node's role (`NodeAction`), the questions
`cloudd-cli inspect` asks the leader, and the cloud's replicated record as the leader writes
it to the pool hosts (`Record`; its rules are `cloudd.daemon.member.record`'s).

Names are part of the protocol: renaming one is a wire change.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated

from cloudd.config import users
from cloudd.config.sources import SECRET_NAME
from cloudd.daemon.network.checks import AfterCheck, Parsed, Written
from cloudd.daemon.network.codec import Codec, default_codec
from cloudd.election.messages import MESSAGE_TYPES
from cloudd.vmctl.backend import DomainEvent
from cloudd.vmctl.hostagent import HostCommand, HostResult


class OfferOrigin(enum.StrEnum):
    """Who offers a manifest, and so what the receiver may do with it."""

    LEADER = "leader"
    """The acting leader's generation: adopt it."""
    OPERATOR = "operator"
    """A file dropped or applied on the sender: the leader validates and adopts it."""
    SEED = "seed"
    """An answer to a booting node's `ManifestWanted`, or to a member that has no cloud yet."""


class NodePhase(enum.StrEnum):
    """Where a node stands with its role (the node side's phase machine, `node.phase`)."""

    UNASSIGNED = "unassigned"
    """No role assignment yet."""
    CONVERGING = "converging"
    """Preparing the role, or its services are not all running and ready yet."""
    READY = "ready"
    """Every service running and ready."""
    DEGRADED = "degraded"
    """Was ready; some service is not running or not ready now."""
    FAILED = "failed"
    """The last converge failed; retried after backoff."""
    STOPPING = "stopping"
    """The cloud is stopping: services being stopped in reverse dependency order."""
    STOPPED = "stopped"
    """The cloud is stopped: every service of the role is stopped."""


class OperatorOp(enum.StrEnum):
    """An operator's command as it travels between agents (one handler each)."""

    APPLY = "apply"
    STOP = "stop"
    CLEANUP = "cleanup"
    MAINTENANCE = "maintenance"
    PLAN = "plan"
    CLEANUP_SERVICE = "cleanup-service"
    """From the leader to a node: restart one of its services now (FATAL included)."""
    HISTORY = "history"
    """The record's generations: number, when, who, digest, ensure (no texts)."""
    DIFF = "diff"
    """A unified diff of two generations' texts, as pool hosts hold them (secrets too)."""
    ROLLBACK = "rollback"
    """A new generation whose text is an earlier generation's."""
    DRAIN = "drain"
    """No new placement on a pool host, and its nodes moved elsewhere (the record keeps it)."""
    UNDRAIN = "undrain"
    """The host takes placements again; nothing is moved back."""


@dataclass(frozen=True)
class ManifestOffer:
    """The text of a cloud's manifest, as the sender holds it (the leader's is authoritative).

    `origin` says who offers it and so what the receiver may do with it. The text is
    self-contained and cut for its receiver (`cloudd.config.portable.text_for`): a pool
    host's holds the secrets' contents, so it is never shown by `repr`."""

    cloud: str
    digest: str
    text: str = field(repr=False)
    origin: OfferOrigin
    term: int = 0
    #: the generation's number in the cloud's record (0: a seed from a host that has none)
    generation: int = 0


@dataclass(frozen=True)
class ManifestWanted:
    """A member that knows its cloud's name but not its manifest asks for it (request)."""

    cloud: str


@dataclass(frozen=True)
class DomainEventNote:
    """A host forwards one domain lifecycle event to the leader at once."""

    host: str
    event: DomainEvent


def _ip(value: object) -> IPv4Address | IPv6Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    try:
        if isinstance(value, str):
            return ip_address(value)
    except ValueError:
        pass
    raise ValueError(f"{value!r} is not an IP address")


#: An address as it travels: an IP address, never a string that might hold anything else
#: (it ends up in SQL grants and configuration files); decoding refuses anything else with
#: one sentence.
IPAddress = Annotated[IPv4Address | IPv6Address, Parsed(_ip), Written(str)]


def _secret_pair(pair: tuple[str, str]) -> tuple[str, str]:
    name, value = pair
    if not SECRET_NAME.match(name):
        raise ValueError(f"secret name {name!r} is not a plain name")
    try:
        base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"secret {name!r} is not base64 text") from None
    return pair


#: One secret of a role: (its name under the manifest's `secrets`, base64 of its contents).
SecretPair = Annotated[tuple[str, str], AfterCheck(_secret_pair)]


def _users(value: tuple[users.User, ...]) -> tuple[users.User, ...]:
    why = users.refusal(value)
    if why is not None:
        raise ValueError(why)
    return value


#: The users a node makes (`cloudd.config.users`): checked by the manifest's rules on arrival.
Users = Annotated[tuple[users.User, ...], AfterCheck(_users)]


@dataclass(frozen=True)
class PeerInfo:
    """A node a role depends on, as the leader sees it."""

    node: str
    role: str
    address: IPAddress
    healthy: bool
    #: every role the node holds (`role`, its first, among them); () reads as (`role`,)
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoleAssignment:
    """The leader tells a node its role, the cloud's settings, and the peers it depends on.

    `secrets` are the ones the node's role needs and no other (the type declares them,
    `TypeSpec.role_secrets`): a node's only source of secrets. Over mTLS only, kept 0600 by
    the node, never shown by `repr`."""

    term: int
    cloud: str
    node: str
    role: str
    address: IPAddress
    #: the manifest generation (digest) the assignment comes from
    generation: str
    peers: tuple[PeerInfo, ...] = ()
    secrets: tuple[SecretPair, ...] = field(default=(), repr=False)
    #: the manifest's users, made on the node with these ids (`cloudd.daemon.node.users`)
    users: Users = ()
    #: every role the node holds, in the type's order, which the node runs in that order
    #: (`role`, the one it is named after, among them); () reads as (`role`,)
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceReport:
    name: str
    state: str
    pid: int | None
    ready: bool
    starts: int
    fatal_count: int
    last_error: str


@dataclass(frozen=True)
class NodeReport:
    """A node's answer to its assignment, and then its health whenever it changes."""

    node: str
    term: int
    generation: str
    phase: NodePhase
    message: str = ""
    services: tuple[ServiceReport, ...] = ()
    since: float = 0.0


#: One argument of an action, or one field of its answer: (name, value), both text.
Pair = tuple[str, str]


@dataclass(frozen=True)
class NodeAction:
    """The leader of `term` asks a node's role to do one of its named actions (request;
    answered by `NodeActed`, or refused with one sentence): the provider hooks that must
    run on a node, such as `scontrol` on a Slurm head (`ClusterView.ask`, `Role.act`)."""

    cloud: str
    term: int
    action: str
    args: tuple[Pair, ...] = ()


@dataclass(frozen=True)
class NodeActed:
    """A node's answer to a `NodeAction`: what its role's `act` returned (bounded)."""

    node: str
    action: str
    answer: tuple[Pair, ...] = ()


@dataclass(frozen=True)
class InspectWanted:
    """Any agent asks the leader for its view of the cloud (request; answered by InspectDoc)."""

    cloud: str


@dataclass(frozen=True)
class InspectAnswer:
    """The leader's view, as the JSON text of the inspect document."""

    cloud: str
    doc: str


@dataclass(frozen=True)
class OperatorRequest:
    """An operator's command, carried to the agent that can perform it (usually the leader).

    `args` is a JSON object."""

    op: OperatorOp
    cloud: str
    #: an apply's arguments hold a manifest for pool hosts, secrets included: not shown
    args: str = field(repr=False)


@dataclass(frozen=True)
class OperatorAnswer:
    ok: bool
    #: JSON text of the result, or "" when not ok
    result: str
    error: str = ""


@dataclass(frozen=True, order=True)
class Version:
    """Where a record stands in the order of the leaders' writes: the term of the leader
    that wrote it, then a sequence number that grows with every write, whatever the term."""

    term: int = 0
    seq: int = 0

    def __str__(self) -> str:
        return f"{self.term}.{self.seq}"


@dataclass(frozen=True)
class Generation:
    """One manifest generation as the record keeps it: the text a pool host receives
    (`cloudd.config.portable.portable_text`: self-contained, secrets included, so never shown
    by `repr`), numbered 1, 2, 3... in the order the leaders made them."""

    number: int
    text: str = field(repr=False)
    #: sha256 of `text`: the same on every agent (a `Cloud.digest` is not)
    digest: str
    #: wall time the leader made it, and who asked for it (the agent that took the command)
    at: float
    by: str
    #: what made it: "apply", "stop", "rollback to 3", "adopted from pm1's manifest file"
    what: str
    ensure: str


@dataclass(frozen=True)
class Drain:
    """A pool host the operator drained (`cloudd-cli drain HOST`), as the record keeps it."""

    host: str
    #: the operator's word that the host's stateful and batch compute nodes may move too
    move_stateful: bool = False
    #: wall time the leader recorded it, and the agent whose operator asked
    at: float = 0.0
    by: str = ""


@dataclass(frozen=True)
class Record:
    """What the leader decides for one cloud and every pool host keeps (fsynced) before the
    operator hears it is done. A new field here is a new part of the record, on the wire and
    in the hosts' files alike (give it a default, so that older records still read)."""

    cloud: str
    version: Version = Version()
    #: the latest generations, oldest first (the history keeps a bounded number)
    generations: tuple[Generation, ...] = field(default=(), repr=False)
    #: the operator's maintenance holds: node names, "" for the whole cloud, sorted
    holds: tuple[str, ...] = ()
    #: the secrets the leaders made (`TypeSpec.generated_secrets`), sorted by name: made
    #: once, handed to the nodes whose role needs them, never shown
    generated: tuple[SecretPair, ...] = field(default=(), repr=False)
    #: the candidate nodes of the cloud's elastic roles that are in use, sorted
    active: tuple[str, ...] = ()
    #: the drained pool hosts, sorted by host
    drains: tuple[Drain, ...] = ()


@dataclass(frozen=True)
class RecordPush:
    """The leader of `term` writes its record to a pool host (request; `RecordAck`)."""

    term: int
    record: Record


@dataclass(frozen=True)
class RecordAck:
    """A pool host has persisted the record up to `version`."""

    cloud: str
    version: Version


@dataclass(frozen=True)
class RecordWanted:
    """The leader of a new `term` gathers the record (request; `RecordHeld`): the host
    answers what it holds, and from then on refuses writes of terms below `term`."""

    cloud: str
    term: int


@dataclass(frozen=True)
class RecordHeld:
    """What a pool host holds of the record, and the term it has now promised."""

    cloud: str
    term: int
    record: Record


OWN = {
    "cloudd.manifest-offer": ManifestOffer,
    "cloudd.manifest-wanted": ManifestWanted,
    "cloudd.domain-event": DomainEventNote,
    "cloudd.role-assignment": RoleAssignment,
    "cloudd.node-report": NodeReport,
    "cloudd.inspect-wanted": InspectWanted,
    "cloudd.inspect-answer": InspectAnswer,
    "cloudd.operator-request": OperatorRequest,
    "cloudd.operator-answer": OperatorAnswer,
    "cloudd.host-command": HostCommand,
    "cloudd.host-result": HostResult,
    "cloudd.record-push": RecordPush,
    "cloudd.record-ack": RecordAck,
    "cloudd.record-wanted": RecordWanted,
    "cloudd.record-held": RecordHeld,
    "cloudd.node-action": NodeAction,
    "cloudd.node-acted": NodeActed,
}


def register_all(codec: Codec = default_codec) -> Codec:
    """Register every agent message with `codec` (idempotent)."""
    for name, cls in MESSAGE_TYPES.items():
        codec.register(cls, f"election.{name}")
    for name, cls in OWN.items():
        codec.register(cls, name)
    return codec

"""What the wire fuzzing starts from: one valid message of every registered type, and the
check that a decoded message's fields hold the types its dataclass declares.

The codec the fuzz tests use is a fresh one with every agent message (`register_all`) plus
the transport's own (`Hello`, `RemoteFailure`), so that test-only types registered with the
default codec elsewhere in the session change nothing here. `EXAMPLES` must name every type
that codec knows: a new message type fails `test_every_registered_type_has_an_example`
until it has one.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from ipaddress import IPv4Address, IPv6Address, ip_address

from cloudd.config.users import User
from cloudd.daemon.network import catalogue as cat
from cloudd.daemon.network.codec import Codec
from cloudd.daemon.network.tls import Hello
from cloudd.daemon.network.transport import RemoteFailure
from cloudd.election import messages as el
from cloudd.vmctl.backend import DomainEvent, DomainEventKind, DomainInfo, Inventory, PowerState
from cloudd.vmctl.hostagent import CommandOutcome, HostCommand, HostResult, Op
from cloudd.vmctl.metadata import CloudMeta


def fuzz_codec() -> Codec:
    codec = cat.register_all(Codec())
    codec.register(Hello, "cloudd.hello")
    codec.register(RemoteFailure, "cloudd.remote-failure")
    return codec


CODEC = fuzz_codec()

_GOSSIP = el.Gossip("suspect", "pm2", 3, "pm1")
_META = CloudMeta(cloud="shop", node="shop-server-1", role="server", term=4, host="pm1")
_COMMAND = HostCommand(Op.DEFINE, 4, domain="shop-server-1", xml="<domain/>",
                       generation="ab12")
_RECORD = cat.Record(
    cloud="shop", version=cat.Version(4, 9),
    generations=(cat.Generation(1, "kind: Cloud\n", "d1", 1.7e9, "pm1", "apply", "running"),),
    holds=("", "shop-server-1"), generated=(("db", "aHVudGVyMg=="),))

#: registered name -> one valid message of that type
EXAMPLES: dict[str, object] = {
    "election.gossip": _GOSSIP,
    "election.ping": el.Ping(7, "pm2", "pm1", 4, (_GOSSIP,)),
    "election.ack": el.Ack(7, "pm2", "pm1", 4, (_GOSSIP,)),
    "election.ping-req": el.PingReq(8, "pm3", (_GOSSIP,)),
    "election.who-leads": el.WhoLeads(4),
    "election.leader-is": el.LeaderIs("pm1", 4, 5),
    "election.election": el.Election(5),
    "election.answer": el.Answer(5),
    "election.coordinator": el.Coordinator(5),
    "election.resign": el.Resign(5),
    "election.lease-request": el.LeaseRequest(5, 2),
    "election.lease-release": el.LeaseRelease(5),
    "election.lease-grant": el.LeaseGrant(5, 2, 3.5),
    "election.lease-reject": el.LeaseReject(2, 5, "pm1", "pm1", 2.5, "bound to pm1"),
    "cloudd.manifest-offer": cat.ManifestOffer("shop", "d1", "kind: Cloud\n",
                                               cat.OfferOrigin.LEADER, 4, 2),
    "cloudd.manifest-wanted": cat.ManifestWanted("shop"),
    "cloudd.domain-event": cat.DomainEventNote("pm1", DomainEvent(
        DomainEventKind.CRASHED, "shop-server-1", _META, "crashed", 12.5,
        (DomainInfo("shop-server-1", "0e6c", _META, PowerState.CRASHED),))),
    "cloudd.role-assignment": cat.RoleAssignment(
        term=4, cloud="shop", node="shop-server-1", role="server",
        address=ip_address("192.0.2.176"), generation="d1",
        peers=(cat.PeerInfo("shop-database-1", "database", ip_address("2001:db8::7"), True),),
        secrets=(("db", "aHVudGVyMg=="),), users=(User("alice", 1001, 1001, ("staff",)),)),
    "cloudd.node-report": cat.NodeReport(
        "shop-server-1", 4, "d1", cat.NodePhase.READY, "all ready",
        (cat.ServiceReport("webrick", "running", 812, True, 1, 0, ""),), 1.7e9),
    "cloudd.inspect-wanted": cat.InspectWanted("shop"),
    "cloudd.inspect-answer": cat.InspectAnswer("shop", '{"cloud": "shop"}'),
    "cloudd.operator-request": cat.OperatorRequest(cat.OperatorOp.APPLY, "shop", "{}"),
    "cloudd.operator-answer": cat.OperatorAnswer(True, '{"done": true}'),
    "cloudd.host-command": _COMMAND,
    "cloudd.host-result": HostResult(
        _COMMAND, CommandOutcome.FAILED, 4, "disk busy", 2.0,
        (DomainInfo("shop-server-1", "0e6c", _META, PowerState.RUNNING),),
        Inventory(1 << 20, 1 << 22, 8, frozenset({"/var/lib/cloudd/images/a.qcow2"}),
                  (("/i/o.qcow2", "shop-server-1"),))),
    "cloudd.record-push": cat.RecordPush(4, _RECORD),
    "cloudd.record-ack": cat.RecordAck("shop", cat.Version(4, 9)),
    "cloudd.record-wanted": cat.RecordWanted("shop", 5),
    "cloudd.record-held": cat.RecordHeld("shop", 5, _RECORD),
    "cloudd.node-action": cat.NodeAction("shop", 4, "drain", (("node", "c1"),)),
    "cloudd.node-acted": cat.NodeActed("shop-head-1", "drain", (("state", "drained"),)),
    "cloudd.hello": Hello("pm1", 3),
    "cloudd.remote-failure": RemoteFailure(True, "disk busy", 2.0),
}

#: The integers a decoded message may hold (the codec's 64-bit bound).
INT_RANGE = (-(1 << 63), (1 << 63) - 1)


def registered_names(codec: Codec = CODEC) -> frozenset[str]:
    return frozenset(codec._by_name)  # the registry itself: what a peer may name


def _strip(hint: object) -> object:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def mismatch(value: object, hint: object, where: str = "") -> str | None:
    """Where `value` does not hold the type `hint` declares (None: it does), checked the
    whole way down: dataclasses field by field, tuples item by item, unions by member."""
    hint = _strip(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if any(mismatch(value, _strip(m), where) is None for m in members):
            return None
        return f"{where}: {value!r} is none of {members}"
    if origin is tuple or origin is frozenset:
        if not isinstance(value, origin):
            return f"{where}: {type(value).__name__}, not {origin.__name__}"
        args = typing.get_args(hint)
        if origin is frozenset or (len(args) == 2 and args[1] is Ellipsis):
            items = [(v, args[0]) for v in value]
        elif len(args) != len(value):
            return f"{where}: {len(value)} items, not {len(args)}"
        else:
            items = list(zip(value, args, strict=True))
        for i, (v, h) in enumerate(items):
            found = mismatch(v, h, f"{where}[{i}]")
            if found:
                return found
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if type(value) is not hint:
            return f"{where}: {type(value).__name__}, not {hint.__name__}"
        hints = typing.get_type_hints(hint, include_extras=True)
        for f in dataclasses.fields(hint):
            found = mismatch(getattr(value, f.name), hints[f.name], f"{where}.{f.name}")
            if found:
                return found
        return None
    if hint is type(None):
        return None if value is None else f"{where}: {value!r} is not None"
    if hint is bool:
        return None if type(value) is bool else f"{where}: {value!r} is not a bool"
    if hint is int:
        if type(value) is not int:
            return f"{where}: {value!r} is not an int"
        ok = INT_RANGE[0] <= value <= INT_RANGE[1]
        return None if ok else f"{where}: {value} is beyond 64 bits"
    if hint is float:
        if type(value) is not float:
            return f"{where}: {value!r} is not a float"
        return None if math.isfinite(value) else f"{where}: {value} is not finite"
    if hint is str:
        return None if type(value) is str else f"{where}: {value!r} is not a str"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return None if type(value) is hint else f"{where}: {value!r} is not a {hint.__name__}"
    if hint in (IPv4Address, IPv6Address):
        return None if type(value) is hint else f"{where}: {value!r} is not {hint}"
    raise AssertionError(f"{where}: no check for the declared type {hint!r}")


def conforms(msg: object) -> str | None:
    """Where a decoded message strays from its dataclass's declared types (None: nowhere)."""
    return mismatch(msg, type(msg), type(msg).__name__)

"""The operator's commands: apply, stop, cleanup, maintenance, drain, undrain, plan, history,
diff, rollback (and cleanup-service, which the leader sends on to a node).

Any agent takes a command from `cloudd-cli`, but the cloud changes in one place only: the
leader. So an agent that is not the acting leader hands the command to the leader it follows
(`OperatorRequest`), and an agent that is not even a member of the cloud (the 2012 thesis's
"start from outside the cloud") hands an `apply` to the first pool host that answers, which
carries on the same way. The answer says which agent performed it. A command that came over
the wire is performed here or handed to this cloud's leader, never relayed to another
cloud's hosts: who may send which command is the dispatch table's (pool hosts relay their
operator's verbs; an operator certificate may only `apply`), and it must not be laundered
through a second agent.

`RULES` says, per command, where it is performed and whether it carries a manifest; each
command has one handler. The local API's op names become `OperatorOp`s where they are
registered (`LOCAL_OPS`), once. What changes the cloud (apply, stop, rollback, maintenance,
drain, undrain) is a write to the cloud's replicated record (`cloudd.daemon.member.record`),
acknowledged only once a majority of the pool hosts has persisted it; the leader then installs
the new generation in its manifest folder and distributes it to the other members. An invalid
manifest, an unknown generation, node or host is refused with one sentence and changes
nothing.
`history` and `diff` read the leader's record.

A node's agent performs none of them and hands none on: its certificate may send no operator
command, so its local API refuses them at once.

The operator reaches the member through what it is given at construction: the member serving
a cloud (a `Seat`: its snapshot and three actions), `request` for agents of the cloud and
`ask_outside` for agents of a cloud this one does not serve.

Nothing here parses or writes YAML on the event loop: a manifest is checked, and the text in
force is made self-contained or stopped, by the manifest folder's checker
(`cloudd.daemon.member.manifests`), in a worker process with a bound on the work admitted at
once: beyond it a command is answered busy (try again), so that a flood of applies costs the
loop that renews the leader's leases only the frames' decoding and the answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import yaml

from cloudd import log
from cloudd.config.model import Cloud
from cloudd.config.portable import portable_text
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader import maintenance
from cloudd.daemon.member import record
from cloudd.daemon.member.manifests import ManifestFolder, plain
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.network.catalogue import (
    Generation,
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    Record,
)
from cloudd.errors import ClouddError, ConfigError, PermanentError, TemporaryError

_log = log.get("operator")

#: Problems quoted in one refusal: a manifest with a mistake on every line is told about the
#: first ones, and the answer stays a sentence, not a frame's worth.
PROBLEMS_QUOTED = 20


@dataclass(frozen=True)
class OpRule:
    at_leader: bool
    """Performed by the acting leader (handed to it), else where the command arrives."""
    manifest: bool = False
    """Carries a manifest's text, validated where the operator gave it."""
    local: bool = True
    """Offered on the local API (else only sent between agents)."""


RULES: Mapping[OperatorOp, OpRule] = MappingProxyType({
    OperatorOp.APPLY: OpRule(at_leader=True, manifest=True),
    OperatorOp.STOP: OpRule(at_leader=True),
    OperatorOp.CLEANUP: OpRule(at_leader=True),
    OperatorOp.MAINTENANCE: OpRule(at_leader=True),
    OperatorOp.PLAN: OpRule(at_leader=True),
    OperatorOp.CLEANUP_SERVICE: OpRule(at_leader=False, local=False),
    OperatorOp.HISTORY: OpRule(at_leader=True),
    OperatorOp.DIFF: OpRule(at_leader=True),
    OperatorOp.ROLLBACK: OpRule(at_leader=True),
    OperatorOp.DRAIN: OpRule(at_leader=True),
    OperatorOp.UNDRAIN: OpRule(at_leader=True),
})

LOCAL_OPS: tuple[OperatorOp, ...] = tuple(op for op, rule in RULES.items() if rule.local)
"""The commands the local API offers, registered under their names."""


class Seat(Protocol):
    """The member that serves a cloud, as the operator's commands use it."""

    def snapshot(self) -> MemberSnapshot: ...
    def reset_failures(self, node: str) -> None: ...
    async def set_maintenance(self, subject: str | None, *, on: bool) -> None: ...
    async def set_drain(self, host: str, *, on: bool, move_stateful: bool = False,
                        by: str = "") -> None: ...
    async def cleanup_service(self, service: str) -> None: ...
    async def new_generation(self, text: str, cloud: Cloud, *, by: str,
                             what: str) -> tuple[Generation, Path | None]: ...
    def record_in_force(self) -> Record: ...


@dataclass(frozen=True)
class Call:
    """One command being performed: its arguments and what it is performed on."""

    args: dict[str, Any]
    seat: Seat | None
    snap: MemberSnapshot | None
    incoming: Cloud | None = None

    def serving(self) -> tuple[Seat, MemberSnapshot]:
        if self.seat is None or self.snap is None:
            raise PermanentError("this agent serves no cloud")
        return self.seat, self.snap


def stopped_text(text: str) -> str:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PermanentError("the manifest in force is not a mapping")
    data["ensure"] = "stopped"
    return yaml.safe_dump(data, sort_keys=False)


def stopped_job(cloud: Cloud) -> str:
    """In the checker's worker: the text in force, self-contained, with `ensure: stopped`
    (portable first: the text is checked in another folder than the one it came from)."""
    return stopped_text(portable_text(cloud, cloud.text))


class Operator:
    """Routes operator commands to the agent that performs them, and performs them there."""

    def __init__(self, *, me: str, member: Callable[[], Seat | None],
                 request: Callable[[str, Any], Awaitable[Any]],
                 ask_outside: Callable[[str, str, Any], Awaitable[Any]],
                 manifests: ManifestFolder, events: EventLog, clock: Clock = SYSTEM) -> None:
        self.me, self._member, self._request, self._ask_outside = me, member, request, ask_outside
        self.manifests, self.events, self.clock = manifests, events, clock
        self._handlers: Mapping[OperatorOp, Callable[[Call], Awaitable[Any]]] = {
            OperatorOp.APPLY: self._apply,
            OperatorOp.STOP: self._stop,
            OperatorOp.CLEANUP: self._cleanup,
            OperatorOp.MAINTENANCE: self._maintenance,
            OperatorOp.PLAN: self._plan,
            OperatorOp.CLEANUP_SERVICE: self._cleanup_service,
            OperatorOp.HISTORY: self._history,
            OperatorOp.DIFF: self._diff,
            OperatorOp.ROLLBACK: self._rollback,
            OperatorOp.DRAIN: self._drain,
            OperatorOp.UNDRAIN: self._undrain,
        }

    # -- routing ------------------------------------------------------------------------------
    async def command(self, op: OperatorOp, args: dict[str, Any], *,
                      relayed: bool = False) -> Any:
        """What the local API calls: perform here, or hand to whoever must perform it
        (`relayed`: the command came from another agent, see `answer`)."""
        rule = RULES[op]
        if not rule.local:
            raise PermanentError(f"unknown command {op.value!r}")
        if not relayed:
            # Who asked, as the record keeps it: the agent whose operator typed the command
            # (a relayed command names the agent that relayed it, see `answer`).
            args = {**args, "by": self.me}
        seat = self._member()
        snap = seat.snapshot() if seat is not None else None
        if snap is not None and self.me not in snap.hosts:
            # Refused here, before any check or message: no agent takes an operator's
            # command from a node's certificate (the dispatch table), whatever it carries.
            why = (f"this agent ({self.me}) is a node of cloud {snap.cloud.name}, and a node "
                   "has no operator verbs: run the command on a pool host")
            _log.warning("command_refused", op=op.value, cloud=snap.cloud.name, node=self.me,
                         reason=why)
            raise PermanentError(why)
        cloud = str(args.get("cloud") or (snap.cloud.name if snap else ""))
        incoming: Cloud | None = None
        if rule.manifest:
            # Validated once, here, in the checker's worker (busy beyond its bound).
            incoming = await self.manifests.check(_text(args, op))
            cloud = incoming.name
        if snap is None or snap.cloud.name != cloud:
            if incoming is None:
                raise PermanentError(f"this agent ({self.me}) does not serve cloud {cloud!r}")
            return await self._not_serving(op, incoming, args, snap, relayed=relayed)
        if snap.acting:
            return await self._handlers[op](Call(args, seat, snap, incoming))
        if not snap.leader:
            raise TemporaryError("no leader right now (an election is under way): try again")
        return await self._ask(snap.leader, OperatorRequest(op, cloud, json.dumps(args)))

    async def _not_serving(self, op: OperatorOp, incoming: Cloud, args: dict[str, Any],
                           snap: MemberSnapshot | None, *, relayed: bool) -> Any:
        if self.me not in {h.name for h in incoming.pool}:
            if relayed:
                raise PermanentError(f"this agent ({self.me}) is not a pool host of cloud "
                                     f"{incoming.name}: hand the manifest to one of its hosts")
            return await self._from_outside(incoming, args)
        # A pool host of a cloud it does not run yet: it starts it, and hands the manifest
        # to the other members once it is a member itself.
        if snap is not None:
            raise PermanentError(f"this agent ({self.me}) already serves cloud "
                                 f"{snap.cloud.name}")
        return await self._install(_text(args, op), incoming, op=op, term=0)

    async def _ask(self, peer: str, request: OperatorRequest) -> Any:
        answer = await self._request(peer, request)
        if not isinstance(answer, OperatorAnswer):
            raise PermanentError(f"{peer} answered {type(answer).__name__}")
        if not answer.ok:
            raise PermanentError(answer.error)
        return json.loads(answer.result)

    async def _from_outside(self, incoming: Cloud, args: dict[str, Any]) -> Any:
        """Not a member: hand the manifest to the first pool host that takes it."""
        cloud = incoming.name
        errors = []
        for host in incoming.pool:
            try:
                result = await self._ask_outside(
                    host.name, host.address,
                    OperatorRequest(OperatorOp.APPLY, cloud, json.dumps(args)))
            except ClouddError as e:
                errors.append(f"{host.name}: {e}")
                continue
            if not isinstance(result, OperatorAnswer):
                errors.append(f"{host.name}: answered {type(result).__name__}")
                continue
            if not result.ok:
                raise PermanentError(f"{host.name} refused the manifest: {result.error}")
            out = json.loads(result.result)
            out["handed_to"] = host.name
            return out
        raise TemporaryError("no pool host of cloud " + cloud + " took the manifest: "
                             + "; ".join(errors))

    async def answer(self, peer: str, request: OperatorRequest) -> OperatorAnswer:
        """Another agent handed us a command (the dispatch table's operator duty: it has
        checked that `peer` may send this verb)."""
        try:
            args = json.loads(request.args)
            if not isinstance(args, dict):
                raise PermanentError("operator arguments must be a JSON object")
            op = OperatorOp(request.op)
            args["by"] = peer  # the authenticated sender, whatever the arguments say
            if RULES[op].at_leader:
                args.setdefault("cloud", request.cloud)
                result = await self.command(op, args, relayed=True)
            else:
                seat = self._member()
                snap = seat.snapshot() if seat is not None else None
                result = await self._handlers[op](Call(args, seat, snap))
        except (ClouddError, ValueError) as e:
            return OperatorAnswer(False, "", _one_line(e))
        return OperatorAnswer(True, json.dumps(result))

    async def hand_over(self, cloud: Cloud, text: str) -> None:
        """A generation dropped on this agent while another leads: `apply` it there."""
        portable = await self.manifests.run(portable_text, plain(cloud), text)
        result = await self.command(OperatorOp.APPLY, {"text": portable, "cloud": cloud.name})
        _log.info("manifest_forwarded", cloud=cloud.name, peer=result.get("accepted_by"))

    # -- performing (on the leader, but cleanup-service) --------------------------------------
    async def _apply(self, call: Call) -> Any:
        if call.incoming is None:
            raise PermanentError("apply: no manifest")
        return await self._generation(call, _text(call.args, OperatorOp.APPLY), call.incoming,
                                      what="apply")

    async def _stop(self, call: Call) -> Any:
        _, snap = call.serving()
        text = await self.manifests.run(stopped_job, plain(snap.cloud))
        return await self._generation(call, text, await self.manifests.check(text),
                                      what="stop")

    async def _rollback(self, call: Call) -> Any:
        seat, _ = call.serving()
        number = _number(call.args, "number", OperatorOp.ROLLBACK)
        earlier = record.generation(seat.record_in_force(), number)
        return await self._generation(call, earlier.text,
                                      await self.manifests.check(earlier.text),
                                      what=f"rollback to {number}")

    async def _generation(self, call: Call, text: str, cloud: Cloud, *,
                          what: str) -> dict[str, Any]:
        """`text` as the cloud's next generation: in the record on a majority of the pool
        hosts when this returns."""
        seat, snap = call.serving()
        by = str(call.args.get("by") or self.me)
        gen, path = await seat.new_generation(text, cloud, by=by, what=what)
        self._record(cloud.name, f"{what}: generation {gen.number} ({gen.digest[:12]}) "
                                 f"recorded, asked by {by}", snap.term)
        return {"accepted_by": self.me, "cloud": cloud.name, "generation": gen.number,
                "path": str(path) if path is not None else None, "ensure": gen.ensure}

    async def _history(self, call: Call) -> Any:
        seat, snap = call.serving()
        r = seat.record_in_force()
        return {"cloud": r.cloud, "leader": self.me, "term": snap.term,
                "version": str(r.version), "generations": record.history(r),
                "in_force": snap.generation,
                "maintenance": maintenance.Maintenance.of(r.holds).view()}

    async def _diff(self, call: Call) -> Any:
        seat, _ = call.serving()
        a = _number(call.args, "a", OperatorOp.DIFF)
        b = _number(call.args, "b", OperatorOp.DIFF)
        r = seat.record_in_force()
        return {"cloud": r.cloud, "a": a, "b": b, "diff": record.diff(r, a, b)}

    async def _cleanup(self, call: Call) -> Any:
        seat, snap = call.serving()
        node, service = call.args.get("node"), call.args.get("service")
        if not isinstance(node, str) or not node:
            raise PermanentError("cleanup needs a node (and optionally a service)")
        if node not in {n.name for n in snap.cloud.nodes} | {h.name for h in snap.cloud.pool}:
            raise PermanentError(f"unknown node {node!r} in cloud {snap.cloud.name}")
        if service:
            result = await self._ask(node, OperatorRequest(
                OperatorOp.CLEANUP_SERVICE, snap.cloud.name, json.dumps({"service": service})))
        else:
            seat.reset_failures(node)
            result = {"reset": node}
        self._record(snap.cloud.name, f"cleanup {node}{'/' + service if service else ''}",
                     snap.term)
        return result

    async def _maintenance(self, call: Call) -> Any:
        seat, snap = call.serving()
        on, subject = bool(call.args.get("on")), call.args.get("subject")
        if subject == snap.cloud.name:
            subject = None
        await seat.set_maintenance(subject if isinstance(subject, str) and subject else None,
                                   on=on)
        self._record(snap.cloud.name, f"maintenance {'on' if on else 'off'} for "
                                      f"{subject or 'the whole cloud'}", snap.term)
        return {"maintenance": maintenance.view(seat.snapshot().maintenance)}

    async def _undrain(self, call: Call) -> Any:
        return await self._drain(call, on=False)

    async def _drain(self, call: Call, *, on: bool = True) -> Any:
        """drain HOST [--move-stateful] / undrain HOST: a write to the record."""
        seat, snap = call.serving()
        host = call.args.get("host")
        if not isinstance(host, str) or not host:
            raise PermanentError("drain and undrain need a pool host's name")
        stateful = call.args.get("move_stateful") is True
        by = str(call.args.get("by") or self.me)
        await seat.set_drain(host, on=on, move_stateful=stateful, by=by)
        self._record(snap.cloud.name, f"{'drain' if on else 'undrain'} {host}"
                                      f"{' --move-stateful' if on and stateful else ''}, "
                                      f"asked by {by}", snap.term)
        return {"cloud": snap.cloud.name, "leader": self.me,
                "drained": seat.snapshot().drains.view()}

    async def _plan(self, call: Call) -> Any:
        _, snap = call.serving()
        plan = snap.controller.last_plan
        return {"leader": self.me, "term": snap.term,
                "actions": [f"{type(a).__name__.lower()} {getattr(a, 'node', '')} on "
                            f"{a.host}: {a.reason}".replace("  ", " ") for a in plan.actions],
                "waiting": [f"{w.node}: {w.reason}" for w in plan.waiting],
                "elastic": [f"{f.check}: {f.message}; {f.state}" for f in snap.elastic.roles],
                "decided": [{"at": d.at, "term": d.term, "node": d.change.node,
                             "what": d.change.what, "reason": d.change.reason}
                            for d in snap.elastic.decisions]}

    async def _cleanup_service(self, call: Call) -> Any:
        if call.seat is None:
            raise PermanentError(f"{self.me} runs no services")
        service = call.args.get("service")
        if not isinstance(service, str):
            raise PermanentError("cleanup-service needs a service name")
        await call.seat.cleanup_service(service)
        return {"restarted": service, "node": self.me}

    async def _install(self, text: str, cloud: Cloud, *, op: OperatorOp,
                       term: int) -> dict[str, Any]:
        path = await self.manifests.install(text, cloud.name)
        self._record(cloud.name, f"{op.value}: generation {cloud.digest[:12]} installed as "
                                 f"{path}", term)
        return {"accepted_by": self.me, "cloud": cloud.name, "path": str(path),
                "ensure": cloud.ensure.value}

    def _record(self, cloud: str, reason: str, term: int) -> None:
        self.events.append(LogEvent(self.clock.wall(), cloud, LogKind.COMMAND, self.me,
                                 reason, term))
        _log.info("operator_command", cloud=cloud, term=term, reason=reason)


def _text(args: dict[str, Any], op: OperatorOp) -> str:
    text = args.get("text")
    if not isinstance(text, str):
        raise PermanentError(f"{op.value}: 'text' must be the manifest's text")
    return text


def _number(args: dict[str, Any], key: str, op: OperatorOp) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PermanentError(f"{op.value}: {key!r} must be a generation number (1, 2, 3...), "
                             f"not {value!r}")
    return value


def _one_line(e: BaseException) -> str:
    if isinstance(e, ConfigError):
        told = "; ".join(str(p) for p in e.problems[:PROBLEMS_QUOTED])
        more = len(e.problems) - PROBLEMS_QUOTED
        return told + (f"; and {more} more problem{'s' if more > 1 else ''}" if more > 0 else "")
    return str(e)

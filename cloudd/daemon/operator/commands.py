"""The operator's commands: apply, stop, cleanup, maintenance, plan.

Any agent takes a command from `cloudd-cli`, but the cloud changes in one place only: the
leader. So an agent that is not the acting leader hands the command to the leader it follows
(`OperatorRequest`), and an agent that is not even a member of the cloud (the 2012 thesis's
"start from outside the cloud") hands an `apply` to the first pool host that answers, which
carries on the same way. The answer says which agent performed it.

The leader installs a new manifest generation atomically in its manifest folder (replacing
the file that declared that cloud, if any) and distributes it to the other members; an invalid
manifest is refused with its problems and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cloudd import log
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.daemon.base.eventlog import Event, EventKind
from cloudd.daemon.network.catalogue import OperatorAnswer, OperatorOp, OperatorRequest
from cloudd.errors import ClouddError, ConfigError, PermanentError, TemporaryError
from cloudd.providers.catalog import catalog

if TYPE_CHECKING:
    from cloudd.daemon.member.clouds import Clouds

OPS = ("apply", "stop", "cleanup", "maintenance", "plan")

_log = log.get("operator")


def check_manifest(text: str, *, where: Path, with_template: bool = True) -> Cloud:
    """Validate a manifest's text as if it were a file in `where` (ConfigError if not)."""
    where.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".incoming-", suffix=".yaml", dir=where)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return load_cloud(name, catalog(), with_template=with_template)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def install_manifest(text: str, cloud: str, *, folder: Path,
                     current: Callable[[str], Path | None]) -> Path:
    """Write a validated manifest into `folder`, atomically, over the file that declares
    `cloud` now (so that one cloud never has two files)."""
    path = current(cloud) or folder / f"{cloud}.yaml"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def stopped_text(text: str) -> str:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PermanentError("the manifest in force is not a mapping")
    data["ensure"] = "stopped"
    return yaml.safe_dump(data, sort_keys=False)


class Operator:
    """Routes operator commands to the agent that performs them, and performs them there."""

    def __init__(self, clouds: Clouds, *, locate: Callable[[str], Path | None],
                 rescan: Callable[[], None]) -> None:
        self.clouds = clouds
        self.locate, self.rescan = locate, rescan
        self.me = clouds.me

    # -- routing ----------------------------------------------------------------------------
    async def command(self, op: str, args: dict[str, Any]) -> Any:
        """What the local API calls: perform here, or hand to whoever must perform it."""
        if op not in OPS:
            raise PermanentError(f"unknown command {op!r}")
        member = self.clouds.member
        cloud = str(args.get("cloud") or (member.cloud.name if member else ""))
        incoming: Cloud | None = None
        if op == "apply":
            text = args.get("text")
            if not isinstance(text, str):
                raise PermanentError("apply: 'text' must be the manifest's text")
            # Validated once, here, off the event loop (a manifest may be up to 1 MiB).
            incoming = await self._check(text)
            cloud = incoming.name
        if member is None or member.cloud.name != cloud:
            if incoming is None:
                raise PermanentError(f"this agent ({self.me}) does not serve cloud {cloud!r}")
            if self.me in {h.name for h in incoming.pool}:
                # A pool host of a cloud it does not run yet: it starts it, and hands the
                # manifest to the other members once it is a member itself.
                if member is not None:
                    raise PermanentError(f"this agent ({self.me}) already serves cloud "
                                         f"{member.cloud.name}")
                return await self._install(args["text"], incoming, op="apply", term=0)
            return await self._from_outside(incoming, args)
        if member.election.acting():
            return await self.perform(op, args, incoming=incoming)
        leader = member.election.leader
        if not leader:
            raise TemporaryError("no leader right now (an election is under way): try again")
        return await self._ask(leader, OperatorRequest(OperatorOp(op), cloud, json.dumps(args)))

    async def _ask(self, peer: str, request: OperatorRequest) -> Any:
        answer = await self.clouds.request_any(peer, request)
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
                result = await self.clouds.ask_outside(
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
        """Another agent handed us a command."""
        try:
            args = json.loads(request.args)
            if not isinstance(args, dict):
                raise PermanentError("operator arguments must be a JSON object")
            if request.op == "cleanup-service":
                result = await self._cleanup_service(args)
            else:
                args.setdefault("cloud", request.cloud)
                result = await self.command(request.op, args)
        except (ClouddError, ValueError) as e:
            return OperatorAnswer(False, "", _one_line(e))
        return OperatorAnswer(True, json.dumps(result))

    # -- performing (on the leader) ---------------------------------------------------------
    async def perform(self, op: str, args: dict[str, Any], *,
                      incoming: Cloud | None = None) -> Any:
        member = self.clouds.member
        assert member is not None
        term = member.election.term
        if op == "apply" and incoming is not None:
            return await self._install(args["text"], incoming, op=op, term=term)
        if op == "stop":
            text = stopped_text(member.manifest_text)
            return await self._install(text, await self._check(text), op=op, term=term)
        if op == "cleanup":
            node, service = args.get("node"), args.get("service")
            if not isinstance(node, str) or not node:
                raise PermanentError("cleanup needs a node (and optionally a service)")
            known = {n.name for n in member.cloud.nodes} | {h.name for h in member.cloud.pool}
            if node not in known:
                raise PermanentError(f"unknown node {node!r} in cloud {member.cloud.name}")
            if service:
                result = await self._ask(node, OperatorRequest(
                    OperatorOp.CLEANUP_SERVICE, member.cloud.name,
                    json.dumps({"service": service})))
            else:
                member.controller.node_fails.forget(node)
                member.controller.host_fails.forget(node)
                member.controller.poke()
                result = {"reset": node}
            self._record(member.cloud.name, f"cleanup {node}{'/' + service if service else ''}",
                         term)
            return result
        if op == "maintenance":
            on, subject = bool(args.get("on")), args.get("subject")
            if subject == member.cloud.name:
                subject = None
            member.set_maintenance(subject if isinstance(subject, str) and subject else None,
                                   on=on)
            self._record(member.cloud.name, f"maintenance {'on' if on else 'off'} for "
                                            f"{subject or 'the whole cloud'}", term)
            return {"maintenance": member.maintenance_view()}
        if op == "plan":
            plan = member.controller.last_plan
            return {"leader": self.me, "term": term,
                    "actions": [f"{type(a).__name__.lower()} {getattr(a, 'node', '')} on "
                                f"{a.host}: {a.reason}".replace("  ", " ") for a in plan.actions],
                    "waiting": [f"{w.node}: {w.reason}" for w in plan.waiting]}
        raise PermanentError(f"unknown command {op!r}")

    async def _check(self, text: str) -> Cloud:
        return await asyncio.to_thread(check_manifest, text,
                                       where=self.clouds.settings.state_dir / "incoming")

    async def _install(self, text: str, cloud: Cloud, *, op: str, term: int) -> dict[str, Any]:
        path = await asyncio.to_thread(install_manifest, text, cloud.name,
                                       folder=self.clouds.settings.manifest_dir,
                                       current=self.locate)
        self._record(cloud.name, f"{op}: generation {cloud.digest[:12]} installed as {path}",
                     term)
        self.rescan()
        return {"accepted_by": self.me, "cloud": cloud.name, "path": str(path),
                "ensure": cloud.ensure.value}

    async def _cleanup_service(self, args: dict[str, Any]) -> Any:
        member = self.clouds.member
        if member is None or member.node_side is None:
            raise PermanentError(f"{self.me} runs no services")
        service = args.get("service")
        if not isinstance(service, str):
            raise PermanentError("cleanup-service needs a service name")
        await member.node_side.cleanup(service)
        return {"restarted": service, "node": self.me}

    def _record(self, cloud: str, reason: str, term: int) -> None:
        self.clouds.events.append(Event(time.time(), cloud, EventKind.COMMAND, self.me,
                                        reason, term))
        _log.info("operator_command", cloud=cloud, term=term, reason=reason)


def _one_line(e: BaseException) -> str:
    if isinstance(e, ConfigError):
        return "; ".join(str(p) for p in e.problems)
    return str(e)

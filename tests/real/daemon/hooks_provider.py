"""A tiny provider for the provider hooks' real test, registered only in that test's agents
(`hooks_agent.py`), under the `appscale` type's name, with roles of its own (`SPEC`, which
those agents' catalog holds in place of the appscale type's).

The controller keeps a registry of server nodes in a file of its node root, as a batch head
keeps its scheduler's nodes: `register` replaces it, `list` answers each registered node's
"scheduler state" (`idle`) and running jobs, `drain` marks every node drained (with the time,
for the test's ordering check). The leader's hooks drive it: `configure("servers")` registers
the healthy servers, `monitor` reports the controller's view of each server (a scheduler view)
and asks a server for an action its role does not have, to show the node's refusal, and
`stop` drains.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path

from cloudd.config.catalog import RoleSpec, TypeSpec
from cloudd.config.plain import Plain
from cloudd.errors import TemporaryError
from cloudd.providers.base import Assignment, ClusterView, Finding, Provider, Role


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoSettings(Plain):
    """No settings."""


#: The test's type: one controller, any number of servers.
SPEC = TypeSpec("appscale", NoSettings, roles=(
    RoleSpec("controller", max_nodes=1), RoleSpec("servers", min_nodes=0, required=False)))

REGISTRY = "registered.json"
DRAINED = "drained.json"


def _read(path: Path) -> list[str]:
    return list(json.loads(path.read_text())) if path.exists() else []


class Controller(Role):
    name = "controller"
    actions = {"register": ("nodes",), "list": (), "drain": ()}

    async def act(self, assignment: Assignment, action: str,
                  args: Mapping[str, str]) -> Mapping[str, str]:
        registry = assignment.root / REGISTRY
        if action == "register":
            nodes = sorted(n for n in args["nodes"].split(",") if n)
            assignment.root.mkdir(parents=True, exist_ok=True)
            registry.write_text(json.dumps(nodes))
            return {"registered": ",".join(nodes)}
        if action == "list":
            return {node: "idle" for node in _read(registry)}
        drained = _read(registry)
        (assignment.root / DRAINED).write_text(json.dumps({"nodes": drained,
                                                           "at": time.time()}))
        return {"drained": ",".join(drained)}


class Servers(Role):
    name = "servers"
    depends_on = ("controller",)


class HooksProvider(Provider):
    cloud_type = "appscale"
    roles: Mapping[str, Role] = {"controller": Controller(), "servers": Servers()}

    def _controller(self, cluster: ClusterView) -> str:
        heads = [p.node for p in cluster.of("controller") if p.healthy]
        if not heads:
            raise TemporaryError("no healthy controller", delay=1.0)
        return heads[0]

    async def configure(self, cluster: ClusterView, role: str) -> None:
        if role == "servers":
            healthy = ",".join(p.node for p in cluster.of("servers") if p.healthy)
            await cluster.ask(self._controller(cluster), "register", {"nodes": healthy})

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        listed = await cluster.ask(self._controller(cluster), "list", {})
        found = [Finding("scheduler", p.node in listed,
                         f"registered, {listed[p.node]}" if p.node in listed
                         else "not registered on the controller", p.node,
                         state=listed.get(p.node, "down"))
                 for p in cluster.of("servers")]
        first = next((p.node for p in cluster.of("servers") if p.healthy), None)
        if first is not None:
            try:
                await cluster.ask(first, "list", {})
            except Exception as exc:  # the node's refusal, as the leader hears it
                found.append(Finding("refusal", True, str(exc), first))
        return tuple(found)

    async def stop(self, cluster: ClusterView) -> None:
        await cluster.ask(self._controller(cluster), "drain", {})


PROVIDER = HooksProvider()

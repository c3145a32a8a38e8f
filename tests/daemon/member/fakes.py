"""What the member's wiring tests run on: a cloud from a real manifest, agent settings in a
temporary folder, a wire that records what is sent, and a node side that records what it is
told. No transport, no libvirt, no real time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudd.config.agent import LOCAL, AgentSettings, PkiSettings, Reconcile
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, RoleAssignment
from cloudd.errors import TemporaryError
from cloudd.pki import Identity, MemberKind
from cloudd.providers.catalog import CATALOG

MANIFEST = """\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
domain_template: web.xml
pool:
  - {name: pm1, address: 192.0.2.70}
  - {name: pm2, address: 192.0.2.71, fence: ["true"]}
roles:
  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]
  server:
    - {address: 192.0.2.176, image: /img/web1.qcow2}
    - {address: 192.0.2.178, image: /img/web2.qcow2}
  database: [{address: 192.0.2.177, image: /img/db.qcow2}]
settings: {app_port: 8080}
"""

TEMPLATE = ("<domain type='qemu'><name>${name}</name><uuid>${uuid}</uuid>"
            "<memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>"
            "<os><type>hvm</type></os>${metadata}</domain>")

DB, WEB1, WEB2, LB = "shop-database-1", "shop-server-1", "shop-server-2", "shop-balancer-1"


def host(name: str) -> Identity:
    """A pool host's certificate, as the transport reads it."""
    return Identity(name, MemberKind.HOST)


def node(name: str, cloud: str = "shop") -> Identity:
    """A node's certificate (for the shop cloud unless said otherwise)."""
    return Identity(name, MemberKind.NODE, cloud)


def operator(name: str = "laptop") -> Identity:
    """An operator's certificate: in no roster."""
    return Identity(name, MemberKind.OPERATOR)


def shop(folder: Path, text: str = MANIFEST) -> Cloud:
    """The shop cloud, loaded from a manifest file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "web.xml").write_text(TEMPLATE)
    (folder / "shop.yaml").write_text(text)
    return load_cloud(folder / "shop.yaml", CATALOG)


def settings(tmp_path: Path, name: str, **changes: Any) -> AgentSettings:
    pki = tmp_path / "pki"
    return AgentSettings(name=name, state_dir=tmp_path / name / "state",
                         manifest_dir=tmp_path / name / "manifests",
                         pki=PkiSettings(ca=pki / "ca.pem", cert=pki / "agent.pem",
                                         key=pki / "agent.key"),
                         reconcile=Reconcile(**LOCAL["reconcile"]), **changes)


@dataclass
class Wire:
    """The transport as the member sees it: `send` records, `request` answers from `answer`."""

    sent: list[tuple[str, Any]] = field(default_factory=list)
    asked: list[tuple[str, Any]] = field(default_factory=list)
    answer: Callable[[str, Any], Awaitable[Any]] | None = None

    def send(self, peer: str, msg: Any) -> None:
        self.sent.append((peer, msg))

    async def request(self, peer: str, msg: Any) -> Any:
        self.asked.append((peer, msg))
        if self.answer is None:
            raise TemporaryError(f"{peer} cannot be reached")
        return await self.answer(peer, msg)

    def of(self, kind: type) -> list[tuple[str, Any]]:
        return [(p, m) for p, m in self.sent if type(m) is kind]


class FakeNodeSide:
    """Records the member's calls; reports through the callback it was built with."""

    def __init__(self, *, me: str, cloud: Cloud, settings: AgentSettings,
                 report: Callable[[NodeReport], None]) -> None:
        self.me, self.cloud, self.report = me, cloud, report
        self.assigned: list[RoleAssignment] = []
        self.stopped = 0
        self.cleaned: list[str] = []
        self.acted: list[tuple[str, tuple[tuple[str, str], ...], str, int]] = []
        self.running = False

    def assign(self, a: RoleAssignment) -> None:
        self.assigned.append(a)

    def update_cloud(self, cloud: Cloud) -> None:
        self.cloud = cloud

    async def stop_services(self) -> None:
        self.stopped += 1

    async def run(self) -> None:
        import asyncio

        self.running = True
        try:
            await asyncio.Event().wait()
        finally:
            self.running = False

    def detach(self) -> None:
        pass

    async def cleanup(self, service: str) -> None:
        self.cleaned.append(service)

    async def act(self, action: str, args: tuple[tuple[str, str], ...], *, peer: str = "",
                  term: int = 0) -> tuple[tuple[str, str], ...]:
        self.acted.append((action, args, peer, term))
        return (("done", action),)

    def view(self) -> NodeReport:
        return NodeReport(node=self.me, term=0, generation="", phase=NodePhase.UNASSIGNED)


def member(tmp_path: Path, name: str, *, wire: Wire, clock: Any, events: Any,
           cloud: Cloud | None = None) -> Any:
    """A CloudMember of the shop cloud (not running) on a fake wire and clock."""
    from cloudd.daemon.member.cloudmember import CloudMember
    from cloudd.daemon.member.clouds import timing_for

    agent = settings(tmp_path, name)
    return CloudMember(settings=agent, cloud=cloud or shop(tmp_path / "manifests"),
                       timing=timing_for(agent), send=wire.send, request=wire.request,
                       events=events, clock=clock, node_side=FakeNodeSide)

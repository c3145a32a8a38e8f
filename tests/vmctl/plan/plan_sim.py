"""A simulated pool for planner tests: applies actions the way host agents would.

The world is the truth, not the leader's view: a host declared dead may still be running its
domains (it is only cut off) until a fence powers it off. `observe()` gives the planner what a
leader would see: the last report of an unreachable host, the current one of the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cloudd.vmctl.plan import (
    Action,
    CopyImage,
    CreateOverlay,
    Define,
    Destroy,
    DomainObs,
    DomainState,
    Fence,
    HostObs,
    Liveness,
    Migrate,
    NodeSpec,
    Observed,
    Shutdown,
    Start,
    Undefine,
)


@dataclass
class SimHost:
    name: str
    memory: int
    images: set[str] = field(default_factory=set)
    liveness: Liveness = Liveness.ALIVE
    reachable: bool = True
    fenced: bool = False
    #: the shared storage it takes live migrations on ("": none)
    storage: str = ""


class World:
    def __init__(self, hosts: list[SimHost], specs: dict[str, NodeSpec], *, cloud: str = "c1",
                 term: int = 1, obedient: bool = True) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.specs = specs
        self.cloud = cloud
        self.term = term
        self.obedient = obedient
        self.domains: dict[tuple[str, str], DomainObs] = {}
        self.stale: dict[str, list[DomainObs]] = {}
        self.shutdowns: dict[tuple[str, str], float] = {}
        self.log: list[Action] = []

    def add(self, d: DomainObs) -> None:
        self.domains[(d.node, d.host)] = d

    def _mem(self, d: DomainObs) -> int:
        spec = self.specs.get(d.node)
        return spec.memory_mib if spec is not None else 256

    def free(self, host: str) -> int:
        used = sum(self._mem(d) for d in self.domains.values()
                   if d.host == host and d.state is DomainState.RUNNING)
        return self.hosts[host].memory - used

    def cut(self, host: str, *, verdict: Liveness = Liveness.DEAD) -> None:
        """Cut `host` off: the leader keeps its last report; its domains go on running."""
        self.stale[host] = [d for d in self.domains.values() if d.host == host]
        self.hosts[host].reachable = False
        self.hosts[host].liveness = verdict

    def observe(self) -> Observed:
        hosts = tuple(HostObs(h.name, h.liveness, h.reachable, self.free(h.name),
                              frozenset(h.images), fenced=h.fenced)
                      for h in self.hosts.values())
        seen: list[DomainObs] = []
        for h in self.hosts.values():
            if h.reachable:
                seen += [d for d in self.domains.values() if d.host == h.name]
            else:
                seen += self.stale.get(h.name, [])
        return Observed(hosts=hosts, domains=tuple(seen), shutdowns=dict(self.shutdowns))

    def running_copies(self, node: str) -> list[str]:
        """Hosts where `node` really runs (a fenced host runs nothing)."""
        return sorted(d.host for d in self.domains.values()
                      if d.node == node and d.state is DomainState.RUNNING
                      and not self.hosts[d.host].fenced)

    def apply(self, action: Action, now: float) -> None:
        self.log.append(action)
        if isinstance(action, Fence):
            host = self.hosts[action.host]
            host.fenced = True
            for key, d in list(self.domains.items()):
                if d.host == action.host:
                    self.domains[key] = replace(d, state=DomainState.SHUTOFF, reason="destroyed")
            return
        host = self.hosts[action.host]
        assert host.reachable, f"{action} sent to unreachable host"
        key = (action.node, action.host)
        d = self.domains.get(key)
        if isinstance(action, CopyImage):
            source = self.hosts[action.source]
            assert source.reachable and action.image in source.images, f"{action}: no source"
            host.images.add(action.image)
        elif isinstance(action, CreateOverlay):
            spec = self.specs[action.node]
            assert spec.base_image in host.images, f"{action}: no base"
            host.images.add(spec.image)
        elif isinstance(action, Define):
            assert d is None, f"{action}: already defined"
            assert self.specs[action.node].image in host.images, f"{action}: no image"
            self.add(DomainObs(action.host, action.node, self.cloud, DomainState.SHUTOFF,
                               "unknown", term=self.term, since=now))
        elif isinstance(action, Start):
            assert d is not None and d.state is DomainState.SHUTOFF, f"{action}: {d}"
            self.domains[key] = replace(d, state=DomainState.RUNNING, reason="booted",
                                        since=now)
        elif isinstance(action, Shutdown):
            assert d is not None
            self.shutdowns[key] = now
            if self.obedient:
                self.domains[key] = replace(d, state=DomainState.SHUTOFF, reason="shutdown",
                                            since=now)
        elif isinstance(action, Destroy):
            assert d is not None
            self.domains[key] = replace(d, state=DomainState.SHUTOFF, reason="destroyed",
                                        since=now)
        elif isinstance(action, Migrate):
            # the hosts' libvirtds hand the running guest over: defined there, gone here
            target = self.hosts[action.target]
            assert d is not None and d.state is DomainState.RUNNING, f"{action}: {d}"
            assert host.storage and target.storage == host.storage, f"{action}: not shared"
            assert target.reachable and (action.node, action.target) not in self.domains
            del self.domains[key]
            self.add(replace(d, host=action.target, since=now))
        elif isinstance(action, Undefine):
            assert d is not None and d.state is DomainState.SHUTOFF, f"{action}: {d}"
            del self.domains[key]
            self.shutdowns.pop(key, None)

"""Feeds the Prometheus metrics from the agent's state, once a second.

Gauges (leadership, term, quorum, domains by state) are read as they are; counters (elections,
respawns, service restarts) grow by what changed since the last reading, so that the feed
never has to be called from inside the election, the controller or the supervisor.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from cloudd.daemon.base.eventlog import EventKind
from cloudd.daemon.member.clouds import Clouds
from cloudd.daemon.operator.metrics import Metrics
from cloudd.election.swim import Status


class MetricsFeed:
    def __init__(self, clouds: Clouds, metrics: Metrics, *, period: float = 1.0) -> None:
        self.clouds, self.metrics, self.period = clouds, metrics, period
        self._elections = 0
        self._last_event = clouds.events.last_id()
        self._starts: dict[tuple[str, str], int] = {}

    def sample(self) -> None:
        member = self.clouds.member
        if member is None:
            return
        name, election = member.cloud.name, member.election
        self.metrics.set_leadership(name, leading=election.acting(), term=election.term)
        reached = sum(1 for h in member.roster.hosts if election.status(h) is Status.ALIVE)
        self.metrics.set_quorum(name, reached=reached, needed=member.roster.quorum)
        for _ in range(election.elections - self._elections):
            self.metrics.election(name)
        self._elections = election.elections
        states: Counter[str] = Counter()
        for seen, _stock in member.controller.host_reports().values():
            states.update(d.state.value for d in seen if d.cloud == name)
        self.metrics.set_domains(name, states)
        for _event in member.events.query(cloud=name, kind=EventKind.RESTART,
                                         after_id=self._last_event, limit=1000):
            self.metrics.respawn(name)
        self._last_event = member.events.last_id()
        while member.latencies:
            op, seconds = member.latencies.popleft()
            self.metrics.observe_action(name, op, seconds)
        for node, report in member.reports.items():
            for service in report.services:
                key = (node, service.name)
                before = self._starts.get(key, service.starts)
                for _ in range(max(0, service.starts - before)):
                    self.metrics.service_restart(name, service.name)
                self._starts[key] = service.starts

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period)

"""Feeds the Prometheus metrics from the member's snapshot, once a second.

Gauges (leadership, term, quorum, domains by state, terms unproven, the provider's failing
checks and hooks) are read as they are;
counters (elections, respawns, host call timings, service restarts, events the log could not
store) grow by what changed since the last reading,
so that the feed never has to be called from inside the election, the controller or the
supervisor, and never changes what it reads.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.member.snapshot import MemberSnapshot

if TYPE_CHECKING:
    from cloudd.daemon.operator.metrics import Metrics

#: Seconds between two readings: a scrape every 15 s or so sees fresh values.
PERIOD = 1.0

#: Restart events read per reading at most (a respawn storm is counted over several).
EVENTS_PER_READING = 1000


class MetricsFeed:
    def __init__(self, snapshot: Callable[[], MemberSnapshot | None], metrics: Metrics, *,
                 events: EventLog, period: float = PERIOD) -> None:
        self._snapshot, self.metrics, self.events, self.period = snapshot, metrics, events, period
        self._elections = 0
        self._last_event = events.last_id()
        self._last_call = 0
        self._starts: dict[tuple[str, str], int] = {}
        self._dropped = events.dropped

    def sample(self) -> None:
        dropped = self.events.dropped
        if dropped > self._dropped:
            self.metrics.dropped_events(dropped - self._dropped)
        self._dropped = dropped
        snap = self._snapshot()
        if snap is None:
            return
        name = snap.cloud.name
        self.metrics.set_leadership(name, leading=snap.acting, term=snap.term)
        self.metrics.set_unproven(name, unproven=bool(snap.unproven))
        self.metrics.set_quorum(name, reached=snap.quorum_reached, needed=snap.quorum)
        for _ in range(snap.elections - self._elections):
            self.metrics.election(name)
        self._elections = snap.elections
        states: Counter[str] = Counter()
        for seen, _stock in snap.controller.hosts.values():
            states.update(d.state.value for d in seen if d.cloud == name)
        self.metrics.set_domains(name, states)
        for _event in self.events.query(cloud=name, kind=LogKind.RESTART,
                                        after_id=self._last_event, limit=EVENTS_PER_READING):
            self.metrics.respawn(name)
        self._last_event = self.events.last_id()
        failing: Counter[str] = Counter(f.check for f in snap.hooks.findings if not f.ok)
        hooks: Counter[str] = Counter(f.hook for f in snap.hooks.failures)
        self.metrics.set_provider(name, failing=failing, hooks=hooks)
        for call in snap.timings:
            if call.seq > self._last_call:
                self.metrics.observe_action(name, call.op, call.seconds)
                self._last_call = call.seq
        for node, report in snap.reports.items():
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

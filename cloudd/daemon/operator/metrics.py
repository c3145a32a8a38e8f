"""Prometheus metrics: what an operator graphs and alerts on, next to `cloudd-cli inspect`.

One `Metrics` object per agent, on its own registry (never the process-global one, so that
tests and several agents in one process do not mix their series). The daemon calls its
methods where things happen: a leadership change, an election, a pass's domain census, a
respawn, a service restart, an action's duration, the provider's failing checks and hooks.
Labels are few and bounded: the cloud, the domain state, the action, the service name, the
provider's check and hook names; never a node, pid or error text.

The HTTP endpoint is off by default (settings `metrics.enabled`); it serves the text
exposition format on `metrics.address` from a daemon thread of prometheus-client's own, so a
scrape never waits on the event loop.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cloudd import log
from cloudd.config.agent import MetricsSettings
from cloudd.errors import ConfigError, PermanentError, Problem

_log = log.get("metrics")

#: Seconds buckets for action latency: define/undefine take milliseconds, start about 0.6 s,
#: destroy 1-2 s, a configure may take a minute.
ACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0)

#: The provider hooks, always exported (0 when none fails).
HOOKS = ("configure", "monitor", "stop")

#: Domain states always exported (0 when none), so that a graph shows a state going to zero.
DOMAIN_STATES = ("running", "paused", "shutdown", "shutoff", "crashed", "other")


class Metrics:
    """The agent's series. Every method is cheap and safe to call from the loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.leader = Gauge("cloudd_leader", "1 when this agent leads the cloud, else 0",
                            ["cloud"], registry=r)
        self.term = Gauge("cloudd_term", "The cloud's current election term", ["cloud"],
                          registry=r)
        self.quorum_hosts = Gauge("cloudd_quorum_hosts",
                                  "Pool hosts the leader reaches (itself included)", ["cloud"],
                                  registry=r)
        self.quorum_needed = Gauge("cloudd_quorum_needed_hosts",
                                   "Pool hosts needed for a quorum (a majority)", ["cloud"],
                                   registry=r)
        self.elections = Counter("cloudd_elections", "Elections this agent took part in",
                                 ["cloud"], registry=r)
        self.domains = Gauge("cloudd_domains", "The cloud's domains by libvirt state",
                             ["cloud", "state"], registry=r)
        self.respawns = Counter("cloudd_respawns", "Domains respawned after dying",
                                ["cloud"], registry=r)
        self.service_restarts = Counter("cloudd_service_restarts",
                                        "Service restarts by this agent's supervisor",
                                        ["cloud", "service"], registry=r)
        self.events_dropped = Counter("cloudd_events_dropped",
                                      "Events this agent's log could not store (a full or "
                                      "failing disk)", registry=r)
        self.unproven = Gauge("cloudd_terms_unproven",
                              "1 while this pool host relearns its terms after a term file "
                              "was set aside (it grants no lease and runs no host command)",
                              ["cloud"], registry=r)
        self.findings_failing = Gauge("cloudd_provider_findings_failing",
                                      "The provider's cluster checks failing now, by check "
                                      "(the leader's last monitor)", ["cloud", "check"],
                                      registry=r)
        self.hooks_failing = Gauge("cloudd_provider_hooks_failing",
                                   "Provider hooks backing off after failures, by hook",
                                   ["cloud", "hook"], registry=r)
        self._checks: dict[str, set[str]] = {}
        self.action_seconds = Histogram("cloudd_action_seconds",
                                        "Duration of one reconcile action, by action",
                                        ["cloud", "action"], buckets=ACTION_BUCKETS,
                                        registry=r)

    def set_leadership(self, cloud: str, *, leading: bool, term: int) -> None:
        self.leader.labels(cloud).set(1 if leading else 0)
        self.term.labels(cloud).set(term)

    def set_quorum(self, cloud: str, *, reached: int, needed: int) -> None:
        self.quorum_hosts.labels(cloud).set(reached)
        self.quorum_needed.labels(cloud).set(needed)

    def election(self, cloud: str) -> None:
        self.elections.labels(cloud).inc()

    def set_domains(self, cloud: str, counts: Mapping[str, int]) -> None:
        """The census of one pass: states not in `counts` are set to 0; unknown states are
        counted as `other` so that the label set stays bounded."""
        totals = dict.fromkeys(DOMAIN_STATES, 0)
        for state, n in counts.items():
            totals[state if state in totals else "other"] += n
        for state, n in totals.items():
            self.domains.labels(cloud, state).set(n)

    def set_provider(self, cloud: str, *, failing: Mapping[str, int],
                     hooks: Mapping[str, int]) -> None:
        """Failing findings by check and failing hooks by hook, as of the last reading: a
        check seen before and not failing now reads 0 (its labels are the provider's own few
        check names)."""
        checks = self._checks.setdefault(cloud, set())
        checks.update(failing)
        for check in checks:
            self.findings_failing.labels(cloud, check).set(failing.get(check, 0))
        for hook in HOOKS:
            self.hooks_failing.labels(cloud, hook).set(hooks.get(hook, 0))

    def dropped_events(self, count: int) -> None:
        self.events_dropped.inc(count)

    def set_unproven(self, cloud: str, *, unproven: bool) -> None:
        self.unproven.labels(cloud).set(1 if unproven else 0)

    def respawn(self, cloud: str) -> None:
        self.respawns.labels(cloud).inc()

    def service_restart(self, cloud: str, service: str) -> None:
        self.service_restarts.labels(cloud, service).inc()

    def observe_action(self, cloud: str, action: str, seconds: float) -> None:
        self.action_seconds.labels(cloud, action).observe(seconds)

    def forget(self, cloud: str) -> None:
        """Drop every series of a cloud that was removed, so that it stops being scraped."""
        for metric in (self.leader, self.term, self.quorum_hosts, self.quorum_needed,
                       self.elections, self.respawns, self.domains, self.service_restarts,
                       self.action_seconds, self.unproven, self.findings_failing,
                       self.hooks_failing):
            for labels in list(metric._metrics):  # prometheus-client has no "remove by prefix"
                if labels[0] == cloud:
                    metric.remove(*labels)
        self._checks.pop(cloud, None)


def parse_address(text: str, *, source: str = "<settings>") -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); `ConfigError` naming `metrics.address`."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    problem = None
    if not sep or not host:
        problem = f"{text!r} is not host:port (e.g. 127.0.0.1:9760)"
    elif not port.isdigit() or not 0 <= int(port) <= 65535:
        problem = f"port {port!r} in {text!r} is not a TCP port (0-65535)"
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                problem = f"{host!r} in {text!r} is not an IP address"
    if problem:
        raise ConfigError([Problem(source, None, None, "metrics.address", problem)])
    return host, int(port)


@dataclass
class Endpoint:
    """A running metrics HTTP server; `close()` is safe to call twice."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)


def serve(metrics: Metrics, address: str) -> Endpoint:
    """Serve `metrics` on `address` (`host:port`; port 0 picks a free one)."""
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:
        raise PermanentError(f"cannot serve metrics on {address}: {e.strerror or e}") from e
    endpoint = Endpoint(server, thread)
    _log.info("metrics_serving", address=f"{host}:{endpoint.port}")
    return endpoint


def serve_from_settings(metrics: Metrics, settings: MetricsSettings) -> Endpoint | None:
    """The endpoint the agent settings ask for, or None when `metrics.enabled` is false."""
    return serve(metrics, settings.address) if settings.enabled else None

"""Metrics over real HTTP on 127.0.0.1, parsed as the Prometheus text exposition format."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudd.config.agent import MetricsSettings
from cloudd.daemon.operator.metrics import (
    Endpoint,
    Metrics,
    parse_address,
    serve,
    serve_from_settings,
)
from cloudd.errors import ConfigError, PermanentError


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def endpoint(metrics: Metrics) -> Iterator[Endpoint]:
    ep = serve(metrics, "127.0.0.1:0")
    yield ep
    ep.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_scrape_shows_what_was_recorded(metrics: Metrics, endpoint: Endpoint) -> None:
    metrics.set_leadership("shop", leading=True, term=7)
    metrics.set_quorum("shop", reached=2, needed=2)
    metrics.election("shop")
    metrics.election("shop")
    metrics.set_domains("shop", {"running": 3, "crashed": 1, "pmsuspended": 2})
    metrics.respawn("shop")
    metrics.service_restart("shop", "webrick")
    metrics.observe_action("shop", "start", 0.6)
    metrics.observe_action("shop", "start", 1.7)
    metrics.set_leadership("lab", leading=False, term=2)

    got = scrape(endpoint.port)
    shop = (("cloud", "shop"),)
    assert got[("cloudd_leader", shop)] == 1
    assert got[("cloudd_leader", (("cloud", "lab"),))] == 0
    assert got[("cloudd_term", shop)] == 7
    assert got[("cloudd_quorum_hosts", shop)] == 2
    assert got[("cloudd_quorum_needed_hosts", shop)] == 2
    assert got[("cloudd_elections_total", shop)] == 2
    assert got[("cloudd_respawns_total", shop)] == 1
    assert got[("cloudd_service_restarts_total", (("cloud", "shop"), ("service", "webrick")))] \
        == 1
    domains = {dict(labels)["state"]: v for (name, labels), v in got.items()
               if name == "cloudd_domains"}
    assert domains == {"running": 3, "paused": 0, "shutdown": 0, "shutoff": 0, "crashed": 1,
                       "other": 2}
    start = (("action", "start"), ("cloud", "shop"))
    assert got[("cloudd_action_seconds_count", start)] == 2
    assert got[("cloudd_action_seconds_sum", start)] == pytest.approx(2.3)
    assert got[("cloudd_action_seconds_bucket", (*start, ("le", "1.0")))] == 1
    assert got[("cloudd_action_seconds_bucket", (*start, ("le", "+Inf")))] == 2


def test_census_replaces_the_previous_one(metrics: Metrics, endpoint: Endpoint) -> None:
    metrics.set_domains("shop", {"running": 3})
    metrics.set_domains("shop", {"crashed": 1})
    got = scrape(endpoint.port)
    assert got[("cloudd_domains", (("cloud", "shop"), ("state", "running")))] == 0
    assert got[("cloudd_domains", (("cloud", "shop"), ("state", "crashed")))] == 1


def test_forget_drops_a_removed_cloud(metrics: Metrics, endpoint: Endpoint) -> None:
    for cloud in ("shop", "lab"):
        metrics.set_leadership(cloud, leading=True, term=1)
        metrics.set_domains(cloud, {"running": 1})
        metrics.service_restart(cloud, "nginx")
        metrics.observe_action(cloud, "define", 0.01)
        metrics.set_unproven(cloud, unproven=False)
    metrics.forget("shop")
    clouds = {dict(labels).get("cloud") for (_, labels) in scrape(endpoint.port)}
    assert clouds == {"lab", None}  # None: the agent's own series (events dropped)


def test_agents_in_one_process_do_not_share_series(metrics: Metrics,
                                                   endpoint: Endpoint) -> None:
    other = Metrics()
    other.respawn("shop")
    assert ("cloudd_respawns_total", (("cloud", "shop"),)) not in scrape(endpoint.port)


def test_close_stops_listening_and_is_safe_twice(metrics: Metrics) -> None:
    ep = serve(metrics, "127.0.0.1:0")
    port = ep.port
    scrape(port)
    ep.close()
    ep.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_off_by_default() -> None:
    assert serve_from_settings(Metrics(), MetricsSettings()) is None


def test_on_when_enabled() -> None:
    m = Metrics()
    ep = serve_from_settings(m, MetricsSettings(enabled=True, address="127.0.0.1:0"))
    assert ep is not None
    try:
        m.election("shop")
        assert scrape(ep.port)[("cloudd_elections_total", (("cloud", "shop"),))] == 1
    finally:
        ep.close()


def test_port_in_use_is_one_sentence(metrics: Metrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PermanentError, match=rf"^cannot serve metrics on 127.0.0.1:{port}: "
                                                 r"Address already in use$"):
            serve(metrics, f"127.0.0.1:{port}")


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:9760", "127.0.0.1", 9760), ("[::1]:9760", "::1", 9760),
    ("0.0.0.0:0", "0.0.0.0", 0), ("localhost:80", "localhost", 80)])
def test_parse_address(text: str, host: str, port: int) -> None:
    assert parse_address(text) == (host, port)


@pytest.mark.parametrize(("text", "message"), [
    ("9760", "'9760' is not host:port (e.g. 127.0.0.1:9760)"),
    (":9760", "':9760' is not host:port"),
    ("127.0.0.1:http", "port 'http' in '127.0.0.1:http' is not a TCP port (0-65535)"),
    ("127.0.0.1:70000", "port '70000' in '127.0.0.1:70000' is not a TCP port"),
    ("example.org:9760", "'example.org' in 'example.org:9760' is not an IP address"),
])
def test_bad_address(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_address(text, source="/etc/cloudd/agent.yaml")
    assert str(err.value).startswith("/etc/cloudd/agent.yaml: metrics.address: " + message)


def test_every_series_is_documented(metrics: Metrics, endpoint: Endpoint) -> None:
    metrics.set_leadership("shop", leading=True, term=1)
    metrics.set_quorum("shop", reached=1, needed=1)
    metrics.election("shop")
    metrics.set_domains("shop", {})
    metrics.respawn("shop")
    metrics.service_restart("shop", "nginx")
    metrics.observe_action("shop", "start", 0.1)
    metrics.set_unproven("shop", unproven=True)
    metrics.dropped_events(2)
    metrics.set_provider("shop", failing={"scheduler": 1}, hooks={})
    names = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
             for name, _ in scrape(endpoint.port)}
    names = {n for n in names if not n.endswith("_created")}
    docs = (Path(__file__).resolve().parents[2] / "docs" / "inspect.md").read_text()
    documented = set(re.findall(r"^\| `(cloudd_\w+)` \|", docs, re.MULTILINE))
    assert names == documented

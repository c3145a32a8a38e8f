"""`cloudd-cli inspect` and `events` against a real running cluster of agents, including while
the leader is being replaced."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest
from cloudd_lab.agentlab import AgentLab

pytestmark = pytest.mark.netns

@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab("op3", hosts=3, subnet="10.234.8.0/24",
                  extra_settings="metrics: {enabled: true, address: '0.0.0.0:9760'}\n") as lab:
        lab.start_all()
        yield lab


def test_inspect_and_events_through_a_failover(lab: AgentLab) -> None:
    leader, term = lab.wait_for("a leader", lab.one_leader)
    follower = next(n for n in lab.agents if n != leader)

    done = lab.cli(follower, "inspect", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["answered_by"] == follower
    (cloud,) = doc["clouds"]
    assert cloud["name"] == "lab" and cloud["source"] == "leader"
    assert cloud["leadership"]["leader"] == leader
    assert cloud["leadership"]["term"] == term
    assert {h["name"] for h in cloud["hosts"]} == {"pm1", "pm2", "pm3"}
    assert {n["role"] for n in cloud["nodes"]} == {"database", "server", "balancer"}

    text = lab.cli(follower, "inspect", "lab")
    assert text.returncode == 0, text.stderr
    assert f"leader {leader}" in text.stdout and "election stable" in text.stdout
    assert "\x1b[" not in text.stdout  # no colour off a terminal

    # the leader's metrics, scraped over HTTP
    # (the feed reads the agent every few seconds: a scrape right after the election may
    # still see the reading taken before this agent acted, so it waits for a fresh one)
    address = lab.agents[leader].ns.ip
    def scrape() -> list[str] | None:
        try:
            with urllib.request.urlopen(f"http://{address}:9760/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        leading = [line for line in text.splitlines()
                   if line.startswith("cloudd_leader{") and 'cloud="lab"' in line]
        return leading if leading and leading[0].endswith(" 1.0") else None
    assert lab.wait_for("the leader's metrics saying it leads", scrape, timeout=30)

    unknown = lab.cli(follower, "inspect", "nosuch")
    assert unknown.returncode != 0
    assert "unknown cloud 'nosuch'" in unknown.stderr

    # the leader goes away: inspect keeps answering, and says an election is under way or
    # that it shows a stale view, until a new leader is in place
    lab.kill(leader)
    states = set()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        done = lab.cli(follower, "inspect", "--json")
        assert done.returncode == 0, done.stderr
        view = json.loads(done.stdout)["clouds"][0]
        states.add((view["source"], view["leadership"]["state"], view["leadership"]["leader"]))
        if view["leadership"]["leader"] not in (None, leader) and view["source"] == "leader":
            break
    print(f"\nviews seen during the failover: {sorted(states, key=str)}")
    assert view["leadership"]["leader"] not in (None, leader)
    assert view["leadership"]["term"] > term

    events = lab.cli(follower, "events", "--since", "10m")
    assert events.returncode == 0, events.stderr
    assert "election" in events.stdout

    # an agent cut off from the others still answers, and says it has no working leader
    new_leader = view["leadership"]["leader"]
    lab.cut(new_leader)
    try:
        def isolated_view() -> dict | None:
            done = lab.cli(new_leader, "inspect", "--json")
            assert done.returncode == 0, done.stderr
            v = json.loads(done.stdout)["clouds"][0]
            # The leader's view it last had counts as the leader's for STALE_LEASES leases
            # (`queries.view_source`), so the source turns after the state: wait for both.
            lost = v["leadership"]["state"] in ("electing", "no-quorum")
            return v if lost and v["source"] in ("local", "stale") else None
        v = lab.wait_for("the cut-off agent reports the lost quorum and no leader's view",
                         isolated_view)
        assert v["source"] in ("local", "stale")
        text = lab.cli(new_leader, "inspect").stdout
        assert "election electing" in text or "election no-quorum" in text
    finally:
        lab.restore(new_leader)

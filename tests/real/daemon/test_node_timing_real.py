"""Node agents do not flap: three pool hosts and two node agents, real processes in network
namespaces, with the default membership settings (nodes probed with `node_probe_timeout` and
`node_suspicion`).

- A node agent SIGSTOPped for 3 s (a TCG guest's stall, made on purpose) and SIGCONTed is at
  most suspect in the hosts' views, never dead (their status, polled through the stall, and
  their logs: no `election_member` line declares it dead), and alive everywhere again soon
  after; a host's `status` says why it was suspect.
- A node agent SIGKILLed is dead in every host's view within the node bound
  (`Timing.node_dead_bound`, plus room for a shared machine), each host saying (in its
  status and its `election_member` log line) it stayed suspect for the whole
  `node_suspicion` first; `cloudd-cli inspect` on the leader lists it
  under AGENTS NOT ALIVE with the reason and since when, and so does its JSON document.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab

from cloudd.config.agent import AgentSettings
from cloudd.daemon.member.clouds import timing_for
from cloudd.election.config import Timing

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "h12t", "10.242.13.0/24"
#: Generous bound on every wait for the real processes (the machine is shared).
BOUND = 60.0
#: Room on top of the core's bound for a shared, loaded machine.
SLACK = 15.0
STALLED, KILLED = "lab-server-1", "lab-server-2"
HOSTS = ("pm1", "pm2", "pm3")


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    # The balancer and the database are manifest entries only (no agent): the servers then
    # wait for a database that never comes, and run no services.
    with AgentLab(PREFIX, hosts=3, subnet=SUBNET, agent_nodes=(STALLED, KILLED),
                  nodes={"balancer": 1, "server": 2, "database": 1}) as lab:
        lab.start_all()
        yield lab


def timing() -> Timing:
    """The lab's agents' timing: the default membership settings (both profiles share them)."""
    return timing_for(AgentSettings(name="pm1"))


def settled(lab: AgentLab) -> tuple[str, int]:
    """One leader, followed by every agent, and every agent sees every other one alive."""
    names = lab.running()

    def check() -> tuple[str, int] | None:
        found = lab.one_leader(names)
        for name, view in lab.statuses(names).items():
            members = (view or {}).get("members") or {}
            if any(members.get(other) != "alive" for other in names if other != name):
                return None
        return found
    found: tuple[str, int] = lab.wait_for("one leader and everyone alive", check,
                                          timeout=BOUND)
    return found


def signal_agent(lab: AgentLab, name: str, sig: int) -> None:
    proc = lab.agents[name].proc
    assert proc is not None and proc.poll() is None
    os.killpg(proc.pid, sig)


def views_of(lab: AgentLab, node: str) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """host -> (its status of `node`, its doubt about it) for every host that answers."""
    out = {}
    for host, view in lab.statuses(list(HOSTS)).items():
        if view is not None:
            out[host] = (view["members"][node], view.get("doubts", {}).get(node))
    return out


def declared(lab: AgentLab, node: str, status: str) -> list[dict[str, Any]]:
    """The hosts' log lines that changed `node` to `status` (their reason: "STATUS: why")."""
    return [e for e in lab.log_events()
            if e["agent"] in HOSTS and e.get("event") == "election_member"
            and e.get("peer") == node and str(e.get("reason")).startswith(f"{status}: ")]


def test_a_stalled_node_is_never_dead_and_a_killed_one_is(lab: AgentLab) -> None:
    t = timing()
    assert (t.node_probe_timeout, t.node_suspicion) == (1.0, 10.0)
    leader, _ = settled(lab)

    # -- SIGSTOP for 3 s: at most suspect, never dead -----------------------------------------
    seen: dict[str, set[str]] = {h: set() for h in HOSTS}
    reasons: set[str] = set()
    signal_agent(lab, STALLED, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < 3.0:
            for host, (status, doubt) in views_of(lab, STALLED).items():
                seen[host].add(status)
                if doubt is not None:
                    reasons.add(doubt["reason"])
            time.sleep(0.1)
    finally:
        signal_agent(lab, STALLED, signal.SIGCONT)
    lab.wait_for(f"every host sees {STALLED} alive again", lambda: all(
        status == "alive" for status, _ in views_of(lab, STALLED).values()), timeout=BOUND)
    print(f"\nduring the 3 s stall the hosts saw {seen}; reasons given: {reasons}")
    assert all("dead" not in statuses for statuses in seen.values()), seen
    assert declared(lab, STALLED, "dead") == []
    for reason in reasons:  # our own probe (or our transport's failure), or another's word
        assert reason.startswith(("no ack to a direct probe within 1 s", "could not reach it",
                                  "gossip: ")), reason

    # -- SIGKILL: dead within the node bound --------------------------------------------------
    killed_at = time.time()
    lab.kill(KILLED)
    bound = t.node_dead_bound(len(lab.members))
    lab.wait_for(f"every host sees {KILLED} dead", lambda: all(
        status == "dead" for status, _ in views_of(lab, KILLED).values()),
        timeout=bound + SLACK)
    deaths = {e["agent"]: e["at"] - killed_at for e in declared(lab, KILLED, "dead")}
    print(f"{KILLED} declared dead by the hosts {deaths} s after its kill (bound {bound:.1f} s)")
    assert set(deaths) == set(HOSTS)
    for e in declared(lab, KILLED, "dead"):  # the log line says why, as inspect does
        assert e["reason"].endswith(f"no answer in {t.node_suspicion:.2g} s of suspicion"), e
    # each host's own suspicion ran its whole course first, and says so
    for host, (_, doubt) in views_of(lab, KILLED).items():
        assert doubt is not None and doubt["status"] == "dead", host
        assert doubt["reason"].endswith(f"no answer in {t.node_suspicion:.2g} s of suspicion")
    assert declared(lab, STALLED, "dead") == []

    # -- inspect on the leader: why, and since when ------------------------------------------
    assert lab.one_leader(list(HOSTS)) is not None
    text = lab.cli(leader, "inspect")
    assert text.returncode == 0, text.stderr
    print(text.stdout)
    lines = text.stdout.splitlines()
    at = lines.index("  AGENTS NOT ALIVE")
    row = next(ln for ln in lines[at + 1:] if ln.split()[:1] == [KILLED])
    assert row.split()[1:4] == ["node", "dead", "since"]
    assert row.endswith(f"no answer in {t.node_suspicion:.2g} s of suspicion")
    assert not any(ln.split()[:1] == [STALLED] for ln in lines[at + 1:] if ln.strip())
    doc = json.loads(lab.cli(leader, "inspect", "--json").stdout)
    node = next(n for n in doc["clouds"][0]["nodes"] if n["name"] == KILLED)
    assert node["agent_liveness"] == "dead"
    assert killed_at < node["agent_liveness_since"] <= doc["generated_at"]
    assert node["agent_liveness_reason"].startswith(("could not reach it",
                                                     "no ack to a direct probe", "gossip: "))

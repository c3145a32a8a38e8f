"""A new manifest generation changes the pool of a running cloud: real agents in network
namespaces (libvirt's in-process test driver, unmanaged nodes, no VMs), every change an
operator's `cloudd-cli apply` to the leader, and no agent restarted for it.

1. A host added. pm4's agent runs before the apply, with the cloud's manifest that does not
   list it yet (as an operator who copied /etc/cloudd from another host and started it): it
   serves no cloud. The generation that lists pm4 makes it a member (seeded by the pool), the
   leader's inspect shows it alive, its record holds the generation, and the lease quorum is
   three hosts of four at once: with pm2 and pm3 gone the leader stops acting (pm1 and pm4:
   two of four), with pm3 back it acts again (pm4's lease counts), and with pm4 gone too it
   stops (three are needed).
2. A host removed. ...
3. A fence command edited. ...
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab
from cloudd_lab.netlab import Netns

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "h22r", "10.239.36.0/24"
#: generous bound on every wait (the machine is shared)
BOUND = 60.0
DB = "lab-database-1"


@dataclass
class PoolLab(AgentLab):
    """An AgentLab whose manifest leaves out the hosts in `unlisted` (their agents exist)."""

    unlisted: frozenset[str] = frozenset()

    def manifest(self, members: Sequence[tuple[str, Netns | None, str]]) -> str:
        return super().manifest([m for m in members if m[0] not in self.unlisted])


def events_of(lab: AgentLab, agent: str, event: str, *, since: float = 0.0,
              ) -> list[dict[str, Any]]:
    """`agent`'s JSON log lines of `event` (logged at or after `since`, unix time)."""
    return [e for e in lab.log_events() if e["agent"] == agent and e.get("event") == event
            and e["at"] >= since]


def inspect(lab: AgentLab, agent: str) -> dict[str, Any]:
    done = lab.cli(agent, "inspect", "--json")
    assert done.returncode == 0, done.stderr
    (cloud,) = json.loads(done.stdout)["clouds"]
    return dict(cloud)


def apply(lab: PoolLab, leader: str, *, unlisted: Sequence[str] = ()) -> int:
    """The lab's manifest without `unlisted`, applied on `leader` as an operator would (a
    file of their own, its template beside it); the generation's number."""
    lab.unlisted = frozenset(unlisted)
    folder = lab.root / "operator"
    if not folder.exists():
        shutil.copytree(lab.agents[leader].folder / "manifests" / "templates",
                        folder / "templates")
    path = folder / "lab.yaml"
    path.write_text(lab.manifest(lab.members))
    done = lab.cli(leader, "apply", str(path))
    assert done.returncode == 0, done.stderr
    assert "recorded by a majority of the pool hosts" in done.stdout, done.stdout
    return int(done.stdout.split("generation ")[1].split(",")[0])


def record_generations(lab: AgentLab, host: str) -> list[int]:
    """The generation numbers `host`'s own record.json holds."""
    path = lab.agents[host].folder / "state" / "clouds" / lab.cloud_name / "record.json"
    with contextlib.suppress(OSError, ValueError):
        held = json.loads(path.read_text())
        return [g["number"] for g in held["record"]["generations"]]
    return []


def manifest_of(lab: AgentLab, agent: str) -> str:
    return (lab.agents[agent].folder / "manifests" / "lab.yaml").read_text()


def running_pids(lab: AgentLab) -> dict[str, int]:
    """The pid of every agent process the lab runs (an agent restarted has a new one)."""
    return {n: a.proc.pid for n, a in lab.agents.items()
            if a.proc is not None and a.proc.poll() is None}


@pytest.fixture
def pool() -> Iterator[PoolLab]:
    with PoolLab(PREFIX, hosts=4, subnet=SUBNET, unlisted=frozenset({"pm4"})) as lab:
        yield lab


def test_a_host_added(pool: PoolLab) -> None:
    lab = pool
    hosts = ["pm1", "pm2", "pm3"]
    for h in [*hosts, "pm4"]:
        lab.start(h)
    leader, term = lab.wait_for("a leader", lambda: lab.one_leader(hosts), timeout=BOUND)
    lab.wait_for("pm4 answers", lambda: lab.status("pm4"), timeout=BOUND)
    assert lab.status("pm4")["cloud"] is None
    assert events_of(lab, "pm4", "cloud_not_mine")
    lab.wait_for("the leader's record", lambda: events_of(lab, leader, "record_recovered"),
                 timeout=BOUND)
    pids = {h: lab.agents[h].proc.pid for h in lab.agents if lab.agents[h].proc}

    t0 = time.monotonic()
    number = apply(lab, leader)
    print(f"\napplied generation {number} on {leader} (term {term})")
    everyone = [*hosts, "pm4"]
    lab.wait_for("pm4 serves the cloud", lambda: (s := lab.status("pm4")) is not None
                 and s["cloud"] == lab.cloud_name, timeout=BOUND)
    print(f"pm4 a member after {time.monotonic() - t0:.1f} s")
    now, new_term = lab.wait_for("one leader of four", lambda: lab.one_leader(everyone),
                                 timeout=BOUND)
    print(f"{now} leads all four in term {new_term} after {time.monotonic() - t0:.1f} s")
    view = lab.wait_for("pm4 alive in the leader's inspect", lambda: (
        (v := inspect(lab, now))["leadership"]["quorum_needed"] == 3 and any(
            h["name"] == "pm4" and h["liveness"] == "alive" for h in v["hosts"]) and v),
        timeout=BOUND)
    print(json.dumps(view["leadership"]))
    lab.wait_for("pm4's record holds the generation",
                 lambda: number in record_generations(lab, "pm4"), timeout=BOUND)
    assert {h: lab.agents[h].proc.pid for h in lab.agents if lab.agents[h].proc} == pids
    digests = {h: lab.status(h)["generation"] for h in everyone}
    assert len(set(digests.values())) == 1, digests

    # the lease quorum is three of four now
    assert now == "pm1"
    t0 = time.monotonic()
    lab.kill("pm2")
    lab.kill("pm3")
    lab.wait_for("nobody acts with pm1 and pm4", lambda: not lab.acting(["pm1", "pm4"]),
                 timeout=BOUND)
    print(f"pm2, pm3 killed: pm1 stopped acting after {time.monotonic() - t0:.1f} s")
    refused = lab.cli("pm1", "maintenance", "on", "lab-database-1")
    assert refused.returncode != 0, refused.stdout
    print(refused.stderr.strip())
    t0 = time.monotonic()
    lab.start("pm3")
    back = lab.wait_for("pm1 acts with pm3 and pm4", lambda: lab.one_leader(
        ["pm1", "pm3", "pm4"]), timeout=BOUND)
    print(f"pm3 back: {back} after {time.monotonic() - t0:.1f} s")
    lab.wait_for("the leader's record", lambda: events_of(lab, "pm1", "record_recovered"),
                 timeout=BOUND)
    done = lab.wait_for("a hold acknowledged", lambda: (
        d := lab.cli("pm1", "maintenance", "on", "lab-database-1")).returncode == 0 and d,
        timeout=BOUND)
    print(done.stdout.strip())
    t0 = time.monotonic()
    lab.kill("pm4")
    lab.wait_for("nobody acts with pm1 and pm3", lambda: not lab.acting(["pm1", "pm3"]),
                 timeout=BOUND)
    print(f"pm4 killed: pm1 stopped acting after {time.monotonic() - t0:.1f} s")


def test_a_host_removed_the_leader_itself() -> None:
    # The manifest lists the hosts last first: pm4 ranks highest, and leads.
    with PoolLab(PREFIX, hosts=4, subnet=SUBNET, hosts_last_first=True) as lab:
        everyone = ["pm1", "pm2", "pm3", "pm4"]
        lab.start_all()
        leader, _ = lab.wait_for("a leader", lambda: lab.one_leader(everyone), timeout=BOUND)
        assert leader == "pm4"
        lab.wait_for("the leader's record", lambda: events_of(lab, leader, "record_recovered"),
                     timeout=BOUND)
        old = manifest_of(lab, "pm4")
        pids = running_pids(lab)

        # 1. the generation without pm4, applied on pm4: it writes it, then leaves the cloud
        t0 = time.monotonic()
        number = apply(lab, "pm4", unlisted=["pm4"])
        lab.wait_for("pm4 serves no cloud", lambda: (s := lab.status("pm4")) is not None
                     and s["cloud"] is None, timeout=BOUND)
        assert [e["generation"] for e in events_of(lab, "pm4", "cloud_left")] == [number]
        rest = ["pm1", "pm2", "pm3"]
        now, term = lab.wait_for("one leader of the three", lambda: lab.one_leader(rest),
                                 timeout=BOUND)
        lab.wait_for("the generation in force on the three", lambda: all(
            (s := lab.status(h)) is not None and set(rest) <= set(s["members"])
            and "pm4" not in s["members"] for h in rest), timeout=BOUND)
        print(f"\ngeneration {number} without pm4: pm4 left, {now} leads the three in term "
              f"{term} after {time.monotonic() - t0:.1f} s")
        assert now == "pm3" and running_pids(lab) == pids
        lab.kill("pm4")  # the operator retires the host

        # 2. the quorum is two of three: pm1 gone, pm3 acts and writes the record
        lab.kill("pm1")
        lab.wait_for("pm3 acts with pm2", lambda: lab.one_leader(["pm2", "pm3"]),
                     timeout=BOUND)
        done = lab.wait_for("a hold acknowledged by two of three", lambda: (
            d := lab.cli("pm3", "maintenance", "on", DB)).returncode == 0 and d, timeout=BOUND)
        assert done.stdout.strip() == f"in maintenance: {DB}"
        assert inspect(lab, "pm3")["leadership"]["quorum_needed"] == 2
        lab.start("pm1")
        now, term = lab.wait_for("one leader of the three again", lambda: lab.one_leader(rest),
                                 timeout=BOUND)

        # 3. the removed host started again with the old manifest (an operator's backup): the
        # others refuse it, it never acts, and the leader keeps its term
        path = lab.agents["pm4"].folder / "manifests" / "lab.yaml"
        path.write_text(old)
        since = time.time()
        lab.start("pm4")
        lab.wait_for("every host refuses pm4", lambda: all(
            [e for e in events_of(lab, h, "message_refused", since=since)
             if e.get("peer") == "pm4" and "not in the roster" in str(e.get("reason"))]
            for h in rest), timeout=BOUND)
        time.sleep(3.0)  # a negative needs a window: many of pm4's election rounds
        assert lab.acting(["pm4"]) == [] and lab.one_leader(rest) == (now, term)
        s = lab.status("pm4")
        assert s is not None and s["cloud"] == lab.cloud_name and not s["acting"]
        print(f"pm4 with the old manifest: refused by {rest}, never acting; {now} still leads "
              f"term {term}")


def record_fence(record: Path) -> Callable[[str], list[str]]:
    """A fence command that only appends `<time> fenced <host>` to `record`."""
    line = ("import sys, time; "
            "open(sys.argv[1], 'a').write(f'{time.time()} fenced {sys.argv[2]}\\n')")
    return lambda host: [sys.executable, "-c", line, str(record), host]


def fenced(record: Path, host: str) -> int:
    return record.read_text().split().count(host) if record.exists() else 0


def test_a_fence_command_edited(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    with PoolLab(PREFIX, hosts=3, subnet=SUBNET, fence=record_fence(first)) as lab:
        hosts = ["pm1", "pm2", "pm3"]
        lab.start_all()
        leader, term = lab.wait_for("a leader", lambda: lab.one_leader(hosts), timeout=BOUND)
        lab.wait_for("the leader's record", lambda: events_of(lab, leader, "record_recovered"),
                     timeout=BOUND)
        old = lab.fence
        lab.fence = lambda host: record_fence(second)(host) if host == leader else old(host)
        t0 = time.monotonic()
        number = apply(lab, leader)
        digest = lab.status(leader)["generation"]
        lab.wait_for("every host has the generation", lambda: all(
            (s := lab.status(h)) is not None and s["generation"] == digest for h in hosts),
            timeout=BOUND)
        print(f"\ngeneration {number} in force everywhere after {time.monotonic() - t0:.1f} s")
        lab.kill(leader)
        rest = [h for h in hosts if h != leader]
        lab.wait_for(f"{leader} fenced", lambda: fenced(second, leader) or fenced(first, leader),
                     timeout=BOUND)
        print(f"first: {first.read_text() if first.exists() else ''!r}, second: {second.read_text()!r}")
        assert fenced(second, leader) == 1 and fenced(first, leader) == 0

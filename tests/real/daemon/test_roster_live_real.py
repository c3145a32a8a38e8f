"""A new manifest generation changes the pool of a running cloud: real agents in network
namespaces (libvirt's in-process test driver, unmanaged nodes, no VMs). Every change is an
operator's `cloudd-cli apply` on the leader, and no agent is restarted for it (their pids are
the same after the generation is in force); each effect is shown by what the agents do.

1. A host added. pm4's agent runs before the apply (an operator starts the new host's agent
   first, with the cloud's manifest that does not list it yet, copied from another host): it
   serves no cloud. The generation that lists pm4 makes it a member (a pool host seeds it),
   the leader's inspect shows it alive, its record.json holds the generation, and the lease
   quorum is three of four at once: with pm2 and pm3 gone the leader stops acting (pm1 and
   pm4, two of four) and a record write is refused; with pm3 back it acts and writes again
   (pm4's lease and acknowledgement count); with pm4 gone too it stops (three are needed).
   While it joined, pm4 looked dead to the leader, which had never listed its domains: its
   fence command never ran (it waits out the host's join grace).
2. A host removed, the leader itself. pm4 ranks highest and leads; the generation without it,
   applied on pm4, is written by pm4, which then leaves the cloud (`cloud_left`: it serves no
   cloud); pm3 leads the three, and the quorum is two of three (pm1 killed: pm3 still acts
   and a record write is acknowledged). The removed host started again with its old manifest
   (an operator's backup) is refused by every host (`message_refused`), never acts, and the
   leader keeps its term.
3. A fence command edited. Each host's fence command appends a line to a file; the
   generation gives the leader's host a command that writes to another file; the leader's
   agent killed, the next leader fences it (its domains are unknown to it: it never led
   before) with the new command only. The same in a two-host pool, where the survivor fences
   its peer before it may lead.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
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
    """An AgentLab whose manifest leaves out the hosts in `unlisted` (their agents exist, with
    that manifest in their folders) and ends with `extra`."""

    unlisted: frozenset[str] = frozenset()
    extra: str = ""

    def manifest(self, members: Sequence[tuple[str, Netns | None, str]]) -> str:
        return super().manifest([m for m in members if m[0] not in self.unlisted])

    def manifest_extra(self) -> str:
        return self.extra


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


def apply(lab: PoolLab, agent: str, *, unlisted: Sequence[str] = ()) -> int:
    """The lab's manifest without `unlisted`, applied on `agent` as an operator would (a
    file of their own, its template beside it, again while the answer says to try again in
    a moment); the generation's number."""
    lab.unlisted = frozenset(unlisted)
    folder = lab.root / "operator"
    if not folder.exists():
        shutil.copytree(lab.agents[agent].folder / "manifests" / "templates",
                        folder / "templates")
    path = folder / "lab.yaml"
    path.write_text(lab.manifest(lab.members))

    def answered() -> Any:
        done = lab.cli(agent, "apply", str(path))
        return None if done.returncode != 0 and "try again" in done.stderr else done

    done = lab.wait_for("the apply taken", answered, timeout=BOUND)
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


def in_force(lab: AgentLab, hosts: Sequence[str], digest: str) -> bool:
    """Every one of `hosts` serves the generation whose digest is `digest`."""
    return all((s := lab.status(h)) is not None and s["generation"] == digest for h in hosts)


def maintenance(lab: AgentLab, agent: str) -> Any:
    """`maintenance on DB` through `agent`; the finished command."""
    return lab.cli(agent, "maintenance", "on", DB)


def record_fence(record: Path) -> Callable[[str], list[str]]:
    """A fence command that only appends `<time> fenced <host>` to `record`."""
    line = ("import sys, time; "
            "open(sys.argv[1], 'a').write(f'{time.time()} fenced {sys.argv[2]}\\n')")
    return lambda host: [sys.executable, "-c", line, str(record), host]


def fenced(record: Path, host: str) -> int:
    """How many times `record` says `host` was fenced."""
    if not record.exists():
        return 0
    return sum(1 for line in record.read_text().splitlines() if line.split()[2:] == [host])


@pytest.fixture
def without_pm4(tmp_path: Path) -> Iterator[PoolLab]:
    with PoolLab(PREFIX, hosts=4, subnet=SUBNET, unlisted=frozenset({"pm4"}),
                 fence=record_fence(tmp_path / "fences")) as lab:
        yield lab


def test_a_host_added(without_pm4: PoolLab, tmp_path: Path) -> None:
    lab = without_pm4
    hosts, everyone = ["pm1", "pm2", "pm3"], ["pm1", "pm2", "pm3", "pm4"]
    lab.start_all()
    leader, _ = lab.wait_for("a leader", lambda: lab.one_leader(hosts), timeout=BOUND)
    assert leader == "pm1"
    lab.wait_for("pm4 answers, in no cloud", lambda: (s := lab.status("pm4")) is not None
                 and s["cloud"] is None and events_of(lab, "pm4", "cloud_not_mine"),
                 timeout=BOUND)
    lab.wait_for("the leader's record", lambda: events_of(lab, leader, "record_recovered"),
                 timeout=BOUND)
    pids = running_pids(lab)

    t0 = time.monotonic()
    number = apply(lab, leader)
    lab.wait_for("pm4 serves the cloud", lambda: (s := lab.status("pm4")) is not None
                 and s["cloud"] == lab.cloud_name, timeout=BOUND)
    now, term = lab.wait_for("one leader of the four", lambda: lab.one_leader(everyone),
                             timeout=BOUND)
    print(f"\ngeneration {number} with pm4: {now} leads the four in term {term} after "
          f"{time.monotonic() - t0:.1f} s")
    view = lab.wait_for("pm4 alive in the leader's inspect", lambda: (
        (v := inspect(lab, now))["leadership"]["quorum_needed"] == 3 and any(
            h["name"] == "pm4" and h["liveness"] == "alive" for h in v["hosts"]) and v),
        timeout=BOUND)
    assert view["manifest"]["generation"] == number
    assert in_force(lab, everyone, lab.status(now)["generation"])
    lab.wait_for("pm4's record holds the generation",
                 lambda: number in record_generations(lab, "pm4"), timeout=BOUND)
    assert now == "pm1" and running_pids(lab) == pids
    # dead to the leader while it joined, its domains never listed: not fenced for it
    assert fenced(tmp_path / "fences", "pm4") == 0

    # three leases of four: pm1 and pm4 are not enough...
    t0 = time.monotonic()
    lab.kill("pm2")
    lab.kill("pm3")
    lab.wait_for("nobody acts with pm1 and pm4", lambda: not lab.acting(["pm1", "pm4"]),
                 timeout=BOUND)
    print(f"pm2, pm3 killed: pm1 stopped acting after {time.monotonic() - t0:.1f} s")
    refused = maintenance(lab, "pm1")
    assert refused.returncode != 0 and "in maintenance" not in refused.stdout
    # ...pm1, pm3 and pm4 are: pm4's lease counts, and so does its copy of the record
    t0 = time.monotonic()
    lab.start("pm3")
    back = lab.wait_for("pm1 acts with pm3 and pm4", lambda: lab.one_leader(
        ["pm1", "pm3", "pm4"]), timeout=BOUND)
    print(f"pm3 back: {back} after {time.monotonic() - t0:.1f} s")
    done = lab.wait_for("a hold acknowledged by three of four", lambda: (
        (d := maintenance(lab, "pm1")).returncode == 0 and d), timeout=BOUND)
    assert done.stdout.strip() == f"in maintenance: {DB}"
    # ...and pm1 and pm3 alone are not
    lab.kill("pm4")
    lab.wait_for("nobody acts with pm1 and pm3", lambda: not lab.acting(["pm1", "pm3"]),
                 timeout=BOUND)


def test_a_host_removed_the_leader_itself() -> None:
    # The manifest lists the hosts last first: pm4 ranks highest, and leads.
    with PoolLab(PREFIX, hosts=4, subnet=SUBNET, hosts_last_first=True) as lab:
        everyone, rest = ["pm1", "pm2", "pm3", "pm4"], ["pm1", "pm2", "pm3"]
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
        now, term = lab.wait_for("one leader of the three", lambda: lab.one_leader(rest),
                                 timeout=BOUND)
        lab.wait_for("the generation in force on the three", lambda: all(
            (s := lab.status(h)) is not None and set(rest) <= set(s["members"])
            and "pm4" not in s["members"] for h in rest), timeout=BOUND)
        print(f"\ngeneration {number} without pm4: pm4 left, {now} leads the three in term "
              f"{term} after {time.monotonic() - t0:.1f} s")
        assert now == "pm3" and running_pids(lab) == pids
        lab.kill("pm4")  # the operator retires the host

        # 2. two leases of three: pm1 gone, pm3 acts and writes the record
        lab.kill("pm1")
        lab.wait_for("pm3 acts with pm2", lambda: lab.one_leader(["pm2", "pm3"]),
                     timeout=BOUND)
        done = lab.wait_for("a hold acknowledged by two of three", lambda: (
            (d := maintenance(lab, "pm3")).returncode == 0 and d), timeout=BOUND)
        assert done.stdout.strip() == f"in maintenance: {DB}"
        assert inspect(lab, "pm3")["leadership"]["quorum_needed"] == 2
        lab.start("pm1")
        now, term = lab.wait_for("one leader of the three again", lambda: lab.one_leader(rest),
                                 timeout=BOUND)

        # 3. the removed host started again with its old manifest (an operator's backup):
        # every host refuses it, it never acts, and the leader keeps its term
        (lab.agents["pm4"].folder / "manifests" / "lab.yaml").write_text(old)
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


def edit_fence(lab: PoolLab, host: str, record: Path) -> tuple[int, str]:
    """Apply on the leader a generation whose fence command for `host` appends to `record`;
    wait until every running agent serves it: its number and digest."""
    leader, _ = lab.wait_for("a leader", lambda: lab.one_leader(), timeout=BOUND)
    lab.wait_for("the leader's record", lambda: events_of(lab, leader, "record_recovered"),
                 timeout=BOUND)
    old = lab.fence
    assert old is not None
    lab.fence = lambda h: record_fence(record)(h) if h == host else old(h)
    pids = running_pids(lab)
    number = apply(lab, leader)
    digest = lab.wait_for("the generation in force on the leader", lambda: (
        (s := lab.status(leader)) is not None and s["generation"] != "" and
        inspect(lab, leader)["manifest"]["generation"] == number and s["generation"]),
        timeout=BOUND)
    lab.wait_for("the generation in force everywhere", lambda: in_force(
        lab, lab.running(), digest), timeout=BOUND)
    assert running_pids(lab) == pids
    return number, digest


def test_a_fence_command_edited(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    with PoolLab(PREFIX, hosts=3, subnet=SUBNET, fence=record_fence(first)) as lab:
        hosts = ["pm1", "pm2", "pm3"]
        lab.start_all()
        leader, _ = lab.wait_for("a leader", lambda: lab.one_leader(hosts), timeout=BOUND)
        number, _ = edit_fence(lab, leader, second)
        # (a host whose agent started late may have been fenced once at the start already)
        before = fenced(first, leader)
        since = time.time()
        lab.kill(leader)
        rest = [h for h in hosts if h != leader]
        new, _ = lab.wait_for("a new leader", lambda: lab.one_leader(rest), timeout=BOUND)
        lab.wait_for(f"{new} fenced {leader}", lambda: [
            e for e in events_of(lab, new, "host_fenced", since=since)
            if e.get("host") == leader], timeout=BOUND)
        assert fenced(second, leader) == 1 and fenced(first, leader) == before
        print(f"\ngeneration {number} in force, {leader} killed: {new} fenced it with the new "
              f"command ({second.read_text().strip()})")


def test_a_fence_command_edited_in_a_two_host_pool(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    with PoolLab(PREFIX, hosts=2, subnet=SUBNET, fence=record_fence(first),
                 extra="two_host: {fence_delay: 4}\n") as lab:
        lab.start_all()
        leader, _ = lab.wait_for("a leader", lambda: lab.one_leader(["pm1", "pm2"]),
                                 timeout=BOUND)
        assert leader == "pm1" and not first.exists()
        edit_fence(lab, "pm2", second)
        # the survivor ranks higher: it fences pm2 at once, with the new command, then leads
        lab.kill("pm2")
        lab.wait_for("pm1 acts alone", lambda: lab.one_leader(["pm1"]) if fenced(
            second, "pm2") else None, timeout=BOUND)
        assert fenced(second, "pm2") == 1 and not first.exists()

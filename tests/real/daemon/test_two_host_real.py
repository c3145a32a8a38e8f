"""A two-host pool of real agents: power loss of either host, the survivor acts after fencing.

`test_two_host_election` (netns only, no VM): two host agents whose fence command only writes
a line to a record; kill either, and the other fences it (at once if ranked higher, after its
delay if lower) before it acts; the one killed comes back and follows. The record goes
along: a maintenance hold written while one host was fenced (acknowledged by the survivor
alone) and one written with both back are both in force on the host that survives next.
`test_two_host_pool_survives_the_power_loss_of_either_host` (libvirt, one VM test at a time):

two pool host agents in their own network namespaces share qemu:///system (each stamps its
name into what it defines), with the manifest's `two_host` setting; three managed nodes boot
the project's minimal test guest under TCG (no agent inside: the nodes stay "dead" as
members, which is fine here). Each host's fence command is the lab fence, which removes that
host's domains from the shared libvirtd and appends a line to a record, so the test can put
the fence in order with what the survivor did next.

1. The cloud comes up: every node's domain running, pm1 (listed first, ranked higher) leads.
2. Power loss of pm2, the follower (its agent kill -9'd, its domains destroyed): pm1 fences
   it at once, then leads alone and re-places pm2's nodes on itself, none before the fence.
3. pm2 comes back: it follows pm1, in the term pm1 leads, without a new fence.
4. Power loss of pm1, the leader: pm2 waits its fence delay, fences pm1, then leads in a
   higher term and re-places every node on itself, none before the fence.
Throughout, and from both agents' logs at the end: never two hosts acting at once, and no
term acted in by two hosts. Bounded waits, timings printed, no timed asserts.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudd_lab import agentlab, testguest
from cloudd_lab.agentlab import AgentLab, LabDomain, lab_domains

pytestmark = [pytest.mark.netns]

SYSTEM = "qemu:///system"
PREFIX = "h13t"  # netlab prefix, cloud name and domain name prefix
CLOUD = PREFIX
NODES = {"database": 1, "server": 1, "balancer": 1}
NODE_NAMES = [f"lab-{role}-{i}" for role, count in NODES.items() for i in range(1, count + 1)]
GUEST_CACHE = Path("/var/tmp/cloudd-h12-guest")
IMAGE = Path("/var/lib/cloudd/images") / f"{PREFIX}-node.img"
FENCE_DELAY = 4.0
SERVER, DATABASE = "lab-server-1", "lab-database-1"
#: generous: the machine is shared and the guests run under TCG
BOUND = 120.0


class TwoHostLab(AgentLab):
    def manifest_extra(self) -> str:
        return f"two_host: {{fence_delay: {FENCE_DELAY}}}\n"  # a start waits for its peer


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return agentlab.virsh(SYSTEM, *args)


def snapshot() -> dict[str, LabDomain]:
    return lab_domains(SYSTEM, f"{PREFIX}-")


def domain(node: str) -> str:
    return f"{CLOUD}-{node}"


def wait(what: str, check: Callable[[], Any], *, every: Callable[[], None] | None = None,
         bound: float = BOUND) -> tuple[Any, float]:
    t0 = time.monotonic()
    while True:
        if every is not None:
            every()
        value = check()
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > bound:
            raise AssertionError(f"not within {bound} s: {what}; domains: {snapshot()}")
        time.sleep(0.2)


def all_running(*, hosts: set[str]) -> dict[str, LabDomain] | None:
    snap = snapshot()
    doms = [snap.get(domain(n)) for n in NODE_NAMES]
    return snap if all(d is not None and d.running and d.host in hosts for d in doms) else None


@contextlib.contextmanager
def running_lab(tmp_path: Path, record: Path) -> Iterator[AgentLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    GUEST_CACHE.mkdir(parents=True, exist_ok=True)
    image = testguest.build_minimal_guest(GUEST_CACHE)
    lab = TwoHostLab(
        PREFIX, hosts=2, nodes=NODES, subnet="10.239.35.0/24", cloud_name=CLOUD,
        libvirt_uri=SYSTEM, template=testguest.TEMPLATE,
        template_values={"kernel": str(image.kernel), "initrd": str(image.initrd),
                         "bridge": f"{PREFIX}br"},
        node_image=str(IMAGE), node_memory_mib=128,
        fence=lambda host: [sys.executable, "-m", "cloudd_lab.labfence", "--uri", SYSTEM,
                            "--host", host, "--cloud", CLOUD, "--record", str(record)])
    with lab:
        try:
            agentlab.remove_domains(SYSTEM, f"{PREFIX}-")  # a crashed earlier run's
            IMAGE.parent.mkdir(parents=True, exist_ok=True)
            IMAGE.write_bytes(b"")
            lab.start_all()
            yield lab
        finally:
            for name in list(lab.agents):
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    lab.kill(name)
            agentlab.remove_domains(SYSTEM, f"{PREFIX}-")  # before the lab's bridge goes
            IMAGE.unlink(missing_ok=True)
            for log in Path("/var/log/libvirt/qemu").glob(f"{PREFIX}-*.log"):
                log.unlink(missing_ok=True)


def acting_now(lab: AgentLab) -> None:
    """The invariant, asked of the agents themselves: at most one acts."""
    acting = lab.acting()
    assert len(acting) <= 1, f"two hosts acting at once: {acting}"


def fenced_at(record: Path, host: str) -> float | None:
    if not record.exists():
        return None
    times = [float(f[0]) for f in (line.split() for line in record.read_text().splitlines())
             if f[2] == host]
    return max(times) if times else None


def power_loss(lab: AgentLab, host: str, kills: dict[str, float]) -> list[str]:
    """Kill `host`'s agent (when: `kills[host]`) and destroy its domains, as a power cut
    would; the nodes it ran."""
    snap = snapshot()
    ran = [n for n in NODE_NAMES if (d := snap.get(domain(n))) and d.host == host]
    lab.kill(host)
    kills[host] = time.time()
    for n in ran:
        virsh("destroy", domain(n))
    return ran


def replaced_after_fence(lab: AgentLab, record: Path, *, lost: str, survivor: str,
                         since: float) -> float:
    """Wait until every node runs on `survivor` (at most one host acting all along); then
    check that the survivor defined and started nothing before `lost` was fenced. The seconds
    it took."""
    _, took = wait(f"every node on {survivor}", lambda: all_running(hosts={survivor}),
                   every=lambda: acting_now(lab))
    fence = fenced_at(record, lost)
    assert fence is not None and fence > since, f"{lost} was never fenced"
    for e in lab.actions("define", since=since) + lab.actions("start", since=since):
        assert e["host"] == survivor and e["at"] > fence, f"acted before the fence: {e}"
    return took


def acting_intervals(lab: AgentLab, ends: dict[str, float]) -> list[tuple[str, int, float,
                                                                            float]]:
    """(agent, term, from, to) of every stretch an agent acted, from its own log; an agent
    killed while acting acted until it was killed (`ends`)."""
    out: list[tuple[str, int, float, float]] = []
    opened: dict[str, tuple[int, float]] = {}
    for e in sorted(lab.log_events(), key=lambda e: e["at"]):
        if e.get("event") != "election_acting":
            continue
        who, yes = e["agent"], str(e.get("reason", "")).startswith("yes")
        if yes and who not in opened:
            opened[who] = (int(e["term"]), e["at"])
        elif not yes and who in opened:
            term, start = opened.pop(who)
            out.append((who, term, start, e["at"]))
    out += [(who, term, start, ends.get(who, time.time())) for who, (term, start)
            in opened.items()]
    return out


def record_fence(record: Path) -> Callable[[str], list[str]]:
    """A fence command that only says when it ran (the test kills the agent itself)."""
    line = ("import sys, time; "
            "open(sys.argv[1], 'a').write(f'{time.time()} fenced {sys.argv[2]}\\n')")
    return lambda host: [sys.executable, "-c", line, str(record), host]


def acting_since(lab: AgentLab, who: str, since: float) -> float:
    """When `who` logged that it acts, the first time after `since`."""
    return min(e["at"] for e in lab.log_events() if e["agent"] == who and e["at"] > since
               and e.get("event") == "election_acting"
               and str(e.get("reason", "")).startswith("yes"))


def recovered(lab: AgentLab, who: str, term: int) -> bool:
    """`who` has the cloud's record in `term` (the term it acts in)."""
    return any(e["agent"] == who and e.get("term") == term
               and e.get("event") == "record_recovered" for e in lab.log_events())


def no_overlap(lab: AgentLab, kills: dict[str, float]) -> None:
    spans = acting_intervals(lab, kills)
    for i, (a, ta, sa, ea) in enumerate(spans):
        for b, tb, sb, eb in spans[i + 1:]:
            if a != b:
                assert ta != tb, f"term {ta} acted in by {a} and {b}"
                assert ea <= sb or eb <= sa, f"{a} and {b} acted at once: {spans}"


def test_two_host_election(tmp_path: Path) -> None:
    record = tmp_path / "fences"
    kills: dict[str, float] = {}
    with TwoHostLab(PREFIX, hosts=2, subnet="10.239.35.0/24", cloud_name=CLOUD,
                    fence=record_fence(record)) as lab:
        lab.start_all()
        leader = lab.wait_for("one leader", lambda: lab.one_leader())
        assert leader[0] == "pm1" and not record.exists()

        since = time.time()
        lab.kill("pm2")
        kills["pm2"] = time.time()
        after = lab.wait_for("pm1 acting alone", lambda: lab.one_leader(["pm1"]) if
                             fenced_at(record, "pm2") else None)
        fence = fenced_at(record, "pm2")
        assert fence is not None and acting_since(lab, "pm1", since) > fence
        print(f"\npm2 killed: fenced after {fence - since:.2f} s; pm1 acts in term {after[1]}")
        # a record write, acknowledged by pm1 alone: the fenced host counts
        lab.wait_for("pm1's record", lambda: recovered(lab, "pm1", after[1]), timeout=60)
        done = lab.cli("pm1", "maintenance", "on", SERVER)
        assert done.returncode == 0 and done.stdout.strip() == f"in maintenance: {SERVER}", \
            done.stderr

        lab.start("pm2")
        kills.pop("pm2")
        back = lab.wait_for("pm2 follows pm1", lambda: lab.one_leader(["pm1", "pm2"]))
        assert back == after and record.read_text().count("fenced") == 1
        # both count again: a write needs pm2 too, which has the record by then
        done = lab.cli("pm2", "maintenance", "on", DATABASE)
        assert done.returncode == 0, done.stderr

        since = time.time()
        lab.kill("pm1")
        kills["pm1"] = time.time()
        now = lab.wait_for("pm2 acting alone", lambda: lab.one_leader(["pm2"]), timeout=60)
        fence = fenced_at(record, "pm1")
        assert fence is not None and fence - kills["pm1"] >= FENCE_DELAY
        assert acting_since(lab, "pm2", since) > fence and now[1] > back[1]
        print(f"pm1 killed: fenced after {fence - since:.2f} s (delay {FENCE_DELAY:g} s); "
              f"pm2 acts in term {now[1]}")
        # pm2 leads on its own copy of the record: both holds, the one made while it was off
        lab.wait_for("pm2's record", lambda: recovered(lab, "pm2", now[1]), timeout=60)
        shown = lab.cli("pm2", "inspect", "--json")
        assert shown.returncode == 0, shown.stderr
        (cloud,) = json.loads(shown.stdout)["clouds"]
        assert sorted(cloud["maintenance"]) == sorted([SERVER, DATABASE])
        no_overlap(lab, kills)

        # pm2 goes down too; alone again, it waits for pm1 (no bound): acts on nothing
        lab.kill("pm2")
        lines = record.read_text().count("fenced")
        lab.start("pm2")
        lab.wait_for("pm2 answers", lambda: lab.status("pm2"))
        time.sleep(3.0)  # a negative needs a window: a few elections' worth
        assert lab.acting(["pm2"]) == [] and record.read_text().count("fenced") == lines

        # the operator gives the host left a bound in its own file: it fences pm1, then
        # leads on its own record, and keeps leading once the record's generation (no bound)
        # is its file again
        lab.kill("pm2")
        path = lab.agents["pm2"].folder / "manifests" / "lab.yaml"
        text = yaml.safe_load(path.read_text())  # the record's generation, as pm2 wrote it
        text["two_host"]["wait_for_all"] = 1
        path.write_text(yaml.safe_dump(text, sort_keys=False))
        since = time.time()
        lab.start("pm2")
        lab.wait_for("pm2 acting alone", lambda: lab.one_leader(["pm2"]), timeout=60)
        assert record.read_text().count("fenced") == lines + 1
        lab.wait_for("the record's generation in pm2's file", lambda: [
            e for e in lab.log_events() if e["agent"] == "pm2" and e["at"] > since
            and e.get("event") == "manifest_restored_from_record"], timeout=60)
        lab.wait_for("no bound in force", lambda: "wait_for_all" not in path.read_text())
        time.sleep(2.0)
        assert lab.one_leader(["pm2"]) is not None


@pytest.mark.libvirt
def test_two_host_pool_survives_the_power_loss_of_either_host(tmp_path: Path) -> None:
    record = tmp_path / "fences"
    kills: dict[str, float] = {}
    with running_lab(tmp_path, record) as lab:
        # 1. up, spread, pm1 leads
        snap, took = wait("every node's domain running", lambda: all_running(
            hosts={"pm1", "pm2"}), every=lambda: acting_now(lab))
        leader = lab.wait_for("one leader", lambda: lab.one_leader())
        print(f"\n1. {len(NODE_NAMES)} domains running after {took:.1f} s on "
              f"{sorted({snap[domain(n)].host for n in NODE_NAMES})}; leader {leader}")
        assert leader[0] == "pm1"

        # 2. power loss of the follower: the leader fences at once
        since = time.time()
        ran = power_loss(lab, "pm2", kills)
        took = replaced_after_fence(lab, record, lost="pm2", survivor="pm1", since=since)
        after = lab.wait_for("pm1 acting", lambda: lab.one_leader(["pm1"]))
        fence = fenced_at(record, "pm2")
        assert fence is not None
        print(f"2. power loss of pm2 (ran {ran}): fenced after {fence - since:.1f} s, "
              f"every node on pm1 after {took:.1f} s; pm1 acts in term {after[1]}")

        # 3. pm2 back: it follows pm1, no new fence
        lines = record.read_text().count("\n")
        lab.start("pm2")
        kills.pop("pm2")
        back, took = wait("pm2 follows pm1", lambda: lab.one_leader(["pm1", "pm2"]),
                          every=lambda: acting_now(lab))
        assert back == after, (back, after)
        assert record.read_text().count("\n") == lines
        print(f"3. pm2 back: follows pm1 in term {back[1]} after {took:.1f} s")

        # 4. power loss of the leader: pm2 waits its delay, fences pm1, then leads
        since = time.time()
        ran = power_loss(lab, "pm1", kills)
        took = replaced_after_fence(lab, record, lost="pm1", survivor="pm2", since=since)
        fence = fenced_at(record, "pm1")
        assert fence is not None and fence - kills["pm1"] >= FENCE_DELAY
        now_leader = lab.wait_for("pm2 acting", lambda: lab.one_leader(["pm2"]))
        assert now_leader[1] > back[1]
        print(f"4. power loss of pm1 (ran {ran}): fenced after {fence - since:.1f} s "
              f"(delay {FENCE_DELAY:g} s), every node on pm2 after {took:.1f} s; pm2 acts in "
              f"term {now_leader[1]}")

        # never two hosts acting, from both agents' logs
        spans = acting_intervals(lab, kills)
        print("acting: " + ", ".join(f"{w} term {t} {b - since:+.1f}..{e - since:+.1f} s"
                                     for w, t, b, e in spans))
        no_overlap(lab, kills)

"""A cold start of the whole pool, end to end: every pool host loses power at once, then the
hosts come back one at a time, and the cloud comes back by itself from its replicated record.

Three pool host agents in namespaces on this machine's libvirtd run a web cloud whose
database and two servers are test guests (TCG) running the node agent; the balancer is a
manifest entry only. Once every node's agent has joined, the operator puts one server in
maintenance and applies a second generation (a setting changed); both are acknowledged.

The power cut: every host agent is killed with SIGKILL, then every domain is destroyed (its
qemu killed, the guest's agent with it), and the agents' sockets go as a reboot clears /run.
State folders stay, as disks do. The hosts come back one at a time, in a seeded random order
with pauses between (`CLOUDD_COLD_SEED` replays an order), and nobody runs a command that
changes anything. Then, within generous bounds:
- one leader, in a term above the one before the cut, that recovered the record
  (`record_recovered`), with the second generation in force and the hold still held;
- the held server is not started again, nor defined anywhere else: maintenance leaves a node
  where and as it is, and the cut left it off (a fence of its host, which the lab's fence
  command does by undefining the host's domains, leaves it without a domain);
- every other node's domain runs again and its agent joined;
- no node ever ran on two hosts: each node's domain runs on one host only, and a node started
  on another host than the one it ran on before the cut only once that host was fenced;
- every pool host's manifest file holds the second generation.
Timings are printed, never asserted.
"""

from __future__ import annotations

import base64
import os
import random
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudd_lab.vmlab import VmLab, agent_command, leftovers, poll, qemu_pid, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.netns, pytest.mark.timeout(900)]

PREFIX, SUBNET = "h22c", "10.239.37.0/24"
HOSTS = ["pm1", "pm2", "pm3"]
DATABASE, SERVER, HELD, BALANCER = ("lab-database-1", "lab-server-1", "lab-server-2",
                                    "lab-balancer-1")
RUNNING = [DATABASE, SERVER]
#: generous bounds on each wait: a shared machine, guests under TCG
BOOT = 420.0
BACK = 300.0
#: seconds between two hosts coming back (drawn from the seeded random order's generator)
PAUSE = (3.0, 12.0)


class ColdLab(VmLab):
    """VmLab whose guests run the agent of the checkout under test, and whose manifest says
    `settings` once the test has given them (the second generation)."""

    settings: dict[str, Any] | None = None

    def manifest_extra(self) -> str:
        if self.settings is None:
            return ""
        return yaml.safe_dump({"settings": self.settings}, default_flow_style=False)

    def boot_values(self) -> dict[str, str]:
        values = super().boot_values()
        path = os.environ.get("PYTHONPATH")
        if path:
            command = f"export PYTHONPATH={shlex.quote(path)}; {agent_command()}"
            values["agent_cmd64"] = base64.b64encode(command.encode()).decode()
        return values


@pytest.fixture(scope="module")
def lab() -> Iterator[ColdLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    try:
        cold = ColdLab(PREFIX, hosts=3, subnet=SUBNET, cloud_name=PREFIX,
                       nodes={"database": 1, "server": 2, "balancer": 1})
        cold.own_fields[BALANCER] = "managed: false"
        with cold:
            yield cold
    finally:
        left = leftovers(PREFIX)
        assert left == [], f"the cold-start test left these behind: {left}"


def events(lab: ColdLab, event: str, *, since: float) -> list[dict[str, Any]]:
    return [e for e in lab.log_events() if e.get("event") == event and e["at"] >= since]


def came_alive(lab: ColdLab, node: str, *, since: float) -> float | None:
    """When a pool host first saw `node`'s agent come alive after `since` (its own answer to
    a probe: a member never heard from reads alive before its first probe, which proves
    nothing), if it did."""
    times = [e["at"] for e in lab.log_events() if e.get("event") == "election_member"
             and e.get("peer") == node and str(e.get("reason", "")).startswith("alive")
             and e["agent"].startswith("pm") and e["at"] >= since]
    return min(times) if times else None


def join(lab: ColdLab, nodes: list[str], *, since: float, bound: float,
         progress: Callable[[float, dict[str, Any] | None], None] | None = None,
         every: Callable[[], None] | None = None) -> dict[str, tuple[float, str]]:
    """Wait until each node's domain, started after `since`, runs and its agent has answered
    a pool host's probe since: node -> (seconds from `since` to that answer, host)."""
    t0 = time.monotonic()
    ran = lab.wait_joined(nodes, since=since, bound=bound, progress=progress)
    answered, _ = poll("every node's agent answers", lambda: (
        None if None in (t := [came_alive(lab, n, since=since) for n in nodes]) else t),
        bound=max(1.0, bound - (time.monotonic() - t0)), every=every)
    return {n: (max(ran[n][0], at - since), ran[n][1]) for n, at in zip(nodes, answered,
                                                                         strict=True)}


def apply_second_generation(lab: ColdLab, host: str) -> int:
    """`cloudd-cli apply` on `host` of the manifest with a setting changed: its number."""
    lab.settings = {"app_port": 8181}
    folder = lab.root / "apply"
    (folder / "templates").mkdir(parents=True)
    shutil.copy(lab.template or "", folder / "templates" / "domain.xml")
    path = folder / f"{lab.cloud_name}.yaml"
    path.write_text(lab.manifest(lab.members))
    done = lab.cli(host, "apply", str(path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "recorded by a majority of the pool hosts" in done.stdout, done.stdout
    return int(done.stdout.split("generation ")[1].split(",")[0])


def power_cut(lab: ColdLab) -> None:
    """Every host at once: agents killed, domains destroyed, /run's sockets gone."""
    for host in HOSTS:
        lab.kill(host)
    for dom in lab.domains().values():
        if dom.running:
            virsh("destroy", dom.name)
    for host in HOSTS:
        Path(lab.agents[host].socket).unlink(missing_ok=True)


class Watch:
    """What must hold at every look while the pool comes back: the held node never runs nor
    moves, and a node that runs on another host than before the cut does so only once that host
    was fenced."""

    def __init__(self, lab: ColdLab, before: dict[str, str]) -> None:
        self.lab, self.before = lab, before
        self.looks = 0

    def __call__(self) -> None:
        self.looks += 1
        for node, d in self.lab.domains().items():
            if node == HELD:
                assert d.host == self.before[HELD], f"{HELD} is in maintenance, yet defined " \
                                                    f"on {d.host}"
            if not d.running:
                continue
            assert node != HELD, f"{HELD} is in maintenance, yet runs again on {d.host}"
            old = self.before.get(node)
            if old is not None and d.host != old:
                assert self.lab.fenced_at(old) is not None, (
                    f"{node} runs on {d.host} while {old}, where it ran before the cut, "
                    "was never fenced")


def progress(watch: Watch, seconds: float) -> Callable[[float, dict[str, Any] | None], None]:
    """A `wait_joined` progress: the invariants at each round, the leader's word now and then."""
    said = [0.0]

    def show(elapsed: float, view: dict[str, Any] | None) -> None:
        watch()
        if elapsed - said[0] >= seconds:
            said[0] = elapsed
            nodes = ", ".join(f"{n['name']}={n['domain_state']}/{n['agent_liveness']}"
                              f"{' (' + n['waiting'] + ')' if n.get('waiting') else ''}"
                              for n in (view or {}).get("nodes", ())) or "no leader view yet"
            print(f"  {elapsed:4.0f} s: {nodes}")
    return show


def test_the_pool_comes_back_by_itself_after_a_cold_start(lab: ColdLab) -> None:
    seed = int(os.environ.get("CLOUDD_COLD_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    order = rng.sample(HOSTS, len(HOSTS))
    pauses = [round(rng.uniform(*PAUSE), 1) for _ in order[1:]]
    print(f"\nseed {seed} (CLOUDD_COLD_SEED={seed} replays it): hosts come back in the order "
          f"{order}, pauses {pauses} s")

    # -- the cloud up, then the operator's state that must survive ---------------------------
    started = time.time()
    lab.start_all()
    joined = join(lab, [DATABASE, SERVER, HELD], since=started, bound=BOOT)
    print(f"every node's agent joined {max(t for t, _ in joined.values()):.0f} s after the "
          f"agents started; nodes on {sorted({h for _, h in joined.values()})}")
    view = lab.leader_view()
    assert view is not None
    old_leader, old_term = view["leadership"]["leader"], view["leadership"]["term"]
    follower = next(h for h in HOSTS if h != old_leader)
    done = lab.cli(follower, "maintenance", "on", HELD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"in maintenance: {HELD}"
    number = apply_second_generation(lab, follower)
    print(f"leader {old_leader} (term {old_term}); {HELD} in maintenance; generation {number} "
          "applied")

    # -- the power cut ---------------------------------------------------------------------
    before = {node: d.host for node, d in lab.domains().items() if d.running}
    assert set(before) == {DATABASE, SERVER, HELD}, before
    cut = time.time()
    power_cut(lab)
    poll("every qemu gone", lambda: all(qemu_pid(lab.domain(n)) is None for n in before),
         bound=60)
    print(f"power cut: every host agent killed, every domain destroyed (they ran {before})")

    # -- the hosts come back one at a time; nobody runs a command ---------------------------
    back: dict[str, float] = {}
    watch = Watch(lab, before)
    for i, host in enumerate(order):
        if i:
            end = time.monotonic() + pauses[i - 1]
            while time.monotonic() < end:
                watch()
                time.sleep(0.5)
        lab.start(host)
        back[host] = time.time()
        print(f"  {host} powered on {back[host] - cut:.1f} s after the cut")
    last = max(back.values())

    def recovered() -> list[dict[str, Any]]:
        """The acting leader's own `record_recovered` lines since the cut."""
        v = lab.leader_view()
        return [] if v is None else [e for e in events(lab, "record_recovered", since=cut)
                                     if e["agent"] == v["leadership"]["leader"]]

    lines, _ = poll("one leader with the record", recovered, bound=BACK, every=watch)
    leader, term, led_at = lines[0]["agent"], lines[0]["term"], lines[0]["at"]
    print(f"leader {leader} (term {term}) recovered the record {led_at - back[order[1]]:.1f} s "
          "after a majority of the hosts was back")
    assert term > old_term

    rejoined = join(lab, RUNNING, since=cut, bound=BACK, progress=progress(watch, 30.0),
                    every=watch)
    for node, (t, host) in sorted(rejoined.items()):
        print(f"{node} runs again on {host} (before: {before[node]}), its agent joined "
              f"{t - (last - cut):.0f} s after the last host came back")
    watch()

    # -- what the new leader holds ---------------------------------------------------------
    assert lab.one_leader(HOSTS) == (leader, term)
    view = lab.leader_view()
    assert view is not None
    assert view["manifest"]["generation"] == number, view["manifest"]
    assert view["maintenance"] == [HELD]
    history = lab.cli(leader, "history", lab.cloud_name)
    assert history.returncode == 0, history.stderr
    assert f"   * {number:>4}  " in history.stdout, history.stdout
    assert f"in maintenance: {HELD}" in history.stdout
    for host in HOSTS:
        text = (lab.agents[host].folder / "manifests" / "lab.yaml").read_text()
        assert "app_port: 8181" in text, f"{host}'s manifest file is not generation {number}"

    # -- the held node stays off; every node's domain is on one host -----------------------
    doms = lab.domains()
    held = doms.get(HELD)
    assert held is None or (not held.running and held.host == before[HELD]), held
    for verb in ("define", "start"):
        assert [e for e in lab.actions(verb, since=cut) if e.get("node") == HELD] == [], verb
    why = next(n for n in view["nodes"] if n["name"] == HELD)["waiting"]
    for node in RUNNING:
        assert doms[node].running, doms[node]
        fenced_at = lab.fenced_at(before[node])
        for e in lab.actions("start", since=cut):
            if e.get("node") == node and e["host"] != before[node]:
                assert fenced_at is not None and fenced_at < e["at"], (
                    f"{node} started on {e['host']} before {before[node]}, where it ran "
                    "before the cut, was fenced")
    fenced = {h: round(at - cut, 1) for h in HOSTS if (at := lab.fenced_at(h)) is not None}
    print(f"watched {watch.looks} times; fenced after the cut (s): {fenced or 'none'}; "
          f"{HELD} {'off on ' + held.host if held else 'undefined'} ({why or 'not waiting'})")

"""The leader on real libvirt, end to end: real agents in namespaces, real QEMU guests.

Three pool host agents, each in its own network namespace, all on qemu:///system (one
libvirtd shared by the three "hosts": each host agent stamps its name into the metadata of
what it defines and sees only those domains). Three hosts, because a leader acts only while it
holds leases from a majority of the pool's hosts: with two hosts, losing one would stop every
leader and nothing would be re-placed. The cloud is a web cloud of four managed nodes booting
the project's minimal test guest (128 MiB, TCG); no agent runs inside the guests, so the nodes
stay "dead" as members, which is fine here. Each host's fence command is the lab fence
(`python -m cloudd_lab.labfence`), which removes that host's domains from the shared libvirtd.

Scenarios, in order, each printing its timing (bounded waits, no timed asserts):
1. the cloud comes up: every node's domain running, spread across the three hosts;
2. kill -9 a node's qemu -> the leader restarts it;
3. `virsh destroy` a node's domain -> restarted;
4. a domain defined by hand (no cloudd metadata) is never touched (checked at the end);
5. power loss of the host that runs two nodes (its agent kill -9'd, its domains destroyed) ->
   its nodes are re-placed on the surviving hosts, only after the fence ran;
6. libvirtd drops the host agents' connections -> they reconnect; nothing is respawned
   (a real libvirtd restart is `test_libvirtd_restart`, opt-in: it disturbs every user);
7. `ensure: stopped` -> every domain of the cloud is gone; the hand-made one remains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab import agentlab, testguest
from cloudd_lab.agentlab import AgentLab, LabDomain, LabLock, lab_domains

pytestmark = [pytest.mark.libvirt, pytest.mark.netns]

SYSTEM = "qemu:///system"
PREFIX = "h12lr"  # netlab prefix, cloud name and domain name prefix
CLOUD = PREFIX
HANDMADE = f"{PREFIX}-handmade"
NODES = {"database": 1, "server": 2, "balancer": 1}
NODE_NAMES = [f"lab-{role}-{i}" for role, count in NODES.items() for i in range(1, count + 1)]
GUEST_CACHE = Path("/var/tmp/cloudd-h12-guest")
#: the nodes' image: the host agents list /var/lib/cloudd/images (the guest boots its kernel
#: and initrd; the image only has to be present for the planner to place a node)
IMAGE = Path("/var/lib/cloudd/images") / f"{PREFIX}-node.img"
#: generous: the machine is shared and the guests run under TCG
BOUND = 120.0
RESTART_LIBVIRTD = os.environ.get("CLOUDD_LAB_RESTART_LIBVIRTD") == "1"
ENSURE_LIBVIRTD = Path(__file__).resolve().parents[3] / "scripts" / "ensure-libvirtd.sh"


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return agentlab.virsh(SYSTEM, *args)


def snapshot() -> dict[str, LabDomain]:
    """Every domain of the lab's cloud (and the hand-made one), by domain name."""
    return lab_domains(SYSTEM, f"{PREFIX}-")


def remove_domains() -> None:
    agentlab.remove_domains(SYSTEM, f"{PREFIX}-")


def domain(node: str) -> str:
    return f"{CLOUD}-{node}"


def wait(what: str, check: Callable[[], Any], *, bound: float = BOUND,
         every: Callable[[], None] | None = None) -> tuple[Any, float]:
    """Poll `check` (and the invariant `every`) until truthy; the value and seconds taken."""
    t0 = time.monotonic()
    while True:
        if every is not None:
            every()
        value = check()
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > bound:
            listing = virsh("list", "--all")
            raise AssertionError(f"not within {bound} s: {what}; domains: {snapshot()}; "
                                 f"virsh list: {listing.stdout}{listing.stderr}")
        time.sleep(0.2)


def all_running(*, hosts: set[str], nodes: list[str] = NODE_NAMES,
                ) -> dict[str, LabDomain] | None:
    snap = snapshot()
    doms = [snap.get(domain(n)) for n in nodes]
    if all(d is not None and d.running and d.host in hosts for d in doms):
        return snap
    return None


def handmade_xml(lab: AgentLab, image: testguest.GuestImage) -> str:
    return testguest.domain_xml(testguest.TestGuestDomain(
        name=HANDMADE, image=image, bridge=lab.net.bridge, mac="52:54:00:12:12:12",
        boot=testguest.GuestBoot(address=f"{lab.net.allocate()}", command="true"),
        serial_log=Path(f"/var/log/libvirt/qemu/{HANDMADE}.serial.log"), memory_mib=96))


def make_lab(tmp_path: Path, nodes: dict[str, int]) -> tuple[AgentLab, testguest.GuestImage]:
    GUEST_CACHE.mkdir(parents=True, exist_ok=True)
    image = testguest.build_minimal_guest(GUEST_CACHE)
    record = tmp_path / "fences"
    lab = AgentLab(
        PREFIX, hosts=3, nodes=nodes, subnet="10.234.12.0/24", cloud_name=CLOUD,
        libvirt_uri=SYSTEM, template=testguest.TEMPLATE,
        template_values={"kernel": str(image.kernel), "initrd": str(image.initrd),
                         "bridge": f"{PREFIX}br"},
        node_image=str(IMAGE), node_memory_mib=128,
        fence=lambda host: [sys.executable, "-m", "cloudd_lab.labfence", "--uri", SYSTEM,
                            "--host", host, "--cloud", CLOUD, "--record", str(record)])
    return lab, image


@contextlib.contextmanager
def running_lab(tmp_path: Path, nodes: dict[str, int]) -> Iterator[AgentLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    lab, image = make_lab(tmp_path, nodes)
    # The lab holds its prefix's lock from here: another run of this test waits, instead of
    # removing this run's domains.
    with lab:
        try:
            remove_domains()  # a crashed earlier run's
            IMAGE.parent.mkdir(parents=True, exist_ok=True)
            IMAGE.write_bytes(b"")
            hand = tmp_path / "handmade.xml"
            hand.write_text(handmade_xml(lab, image))
            for step in (("define", str(hand)), ("start", HANDMADE)):
                done = virsh(*step)
                assert done.returncode == 0, done.stderr
            lab.start_all()
            yield lab
        finally:
            for name in list(lab.agents):
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    lab.kill(name)
            remove_domains()  # before the lab's bridge goes away
            IMAGE.unlink(missing_ok=True)
            for log in Path("/var/log/libvirt/qemu").glob(f"{PREFIX}-*.log"):
                log.unlink(missing_ok=True)


def test_leader_keeps_the_cloud_alive_on_real_libvirt(tmp_path: Path) -> None:
    with running_lab(tmp_path, NODES) as lab:
        scenarios(lab, tmp_path / "fences")


def scenarios(lab: AgentLab, record: Path) -> None:
    pool = {"pm1", "pm2", "pm3"}

    # 1. the cloud comes up, spread across the hosts
    snap, took = wait("every node's domain running", lambda: all_running(hosts=pool))
    hosts = {snap[domain(n)].host for n in NODE_NAMES}
    print(f"\n1. {len(NODE_NAMES)} domains running after {took:.1f} s, on {sorted(hosts)}")
    # spread: never all on one host (which hosts the first pass can use depends on timing)
    assert len(hosts) >= 2, snap

    # 2. kill -9 a node's qemu: restarted in place
    name = domain("lab-server-1")
    old = snap[name]
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    _, took = wait("the killed domain restarted", lambda: (
        (d := snapshot().get(name)) is not None and d.running and d.pid not in (None, old.pid)))
    print(f"2. kill -9 qemu of {name} -> running again after {took:.1f} s "
          "(libvirt takes ~1.8 s to notice here)")

    # 3. virsh destroy a node's domain: restarted
    name = domain("lab-database-1")
    old = snapshot()[name]
    done = virsh("destroy", name)
    assert done.returncode == 0, done.stderr
    _, took = wait("the destroyed domain restarted", lambda: (
        (d := snapshot().get(name)) is not None and d.running and d.pid not in (None, old.pid)))
    print(f"3. virsh destroy {name} -> running again after {took:.1f} s")

    # 5. power loss of the host that runs two nodes
    snap = snapshot()
    per_host: dict[str, list[str]] = {}
    for n in NODE_NAMES:
        per_host.setdefault(snap[domain(n)].host, []).append(n)
    lost = max(sorted(per_host), key=lambda h: len(per_host[h]))
    assert len(per_host[lost]) >= 2, per_host
    moved = per_host[lost]
    survivors = pool - {lost}
    since = time.time()
    lab.kill(lost)
    for n in moved:
        virsh("destroy", domain(n))
    t0 = time.monotonic()

    def safe() -> None:
        fenced = record.exists() and f" fenced {lost}" in record.read_text()
        for n, d in snapshot().items():
            if d.running:
                assert d.host != lost, f"{n} runs again on the lost host {lost}"
                if n in {domain(m) for m in moved}:
                    assert fenced, f"{n} running on {d.host} before {lost} was fenced"

    wait(f"{moved} re-placed off {lost}", lambda: all_running(hosts=survivors), every=safe)
    print(f"5. power loss of {lost} (ran {moved}) -> re-placed on the survivors after "
          f"{time.monotonic() - t0:.1f} s")
    fence_lines = [line.split() for line in record.read_text().splitlines()]
    fenced_at = min(float(f[0]) for f in fence_lines if f[2] == lost)
    defines = lab.actions("define", since=since)
    for n in moved:
        mine = [e for e in defines if e.get("node") == n]
        assert len(mine) == 1, f"{n} defined {len(mine)} times after the power loss: {mine}"
        assert mine[0]["host"] in survivors
        assert mine[0]["at"] > fenced_at, f"{n} defined before {lost} was fenced"
    assert not any(e.get("node") not in moved for e in defines), defines

    # 6. libvirtd drops the host agents' connections: they reconnect, nothing is respawned
    check_reconnect(lab, survivors, how=drop_connections)

    # 7. ensure: stopped -> every domain of the cloud goes; the hand-made one stays
    lab.write_manifest(ensure="stopped")
    _, took = wait("the cloud's domains removed", lambda: set(snapshot()) == {HANDMADE})
    print(f"7. ensure: stopped -> every domain of {CLOUD} gone after {took:.1f} s "
          "(the guests ignore ACPI: destroyed after the shutdown timeout)")
    # 4. the hand-made domain was never touched
    assert snapshot()[HANDMADE].running


def connected_count(lab: AgentLab, host: str) -> int:
    return sum(1 for e in lab.log_events()
               if e["agent"] == host and e.get("event") == "libvirt connected")


def check_reconnect(lab: AgentLab, hosts: set[str], *, how: Callable[[AgentLab], str]) -> None:
    before = snapshot()
    pids = {n: d.pid for n, d in before.items()}
    counts = {h: connected_count(lab, h) for h in hosts}
    since = time.time()
    what = how(lab)
    _, took = wait("every host agent reconnected", lambda: all(
        connected_count(lab, h) > counts[h] for h in hosts))
    # a few resync periods: whatever a reconnect would wrongly restart shows by then
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        after = snapshot()
        assert {n: d.pid for n, d in after.items()} == pids, (before, after)
        time.sleep(0.2)
    assert lab.actions("start", since=since) == []
    assert lab.actions("define", since=since) == []
    print(f"6. {what} -> host agents reconnected after {took:.1f} s; nothing respawned")


def drop_connections(lab: AgentLab) -> str:
    """Make libvirtd close the connections of this lab's agents (and nobody else's)."""
    agent_pids = {a.proc.pid for a in lab.agents.values()
                  if a.proc is not None and a.proc.poll() is None}
    listing = subprocess.run(["virt-admin", "-c", "libvirtd:///system", "srv-clients-list",
                              "libvirtd"], capture_output=True, text=True, check=True)
    dropped = 0
    for line in listing.stdout.splitlines()[2:]:
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        info = subprocess.run(["virt-admin", "-c", "libvirtd:///system", "client-info",
                               "libvirtd", fields[0]], capture_output=True, text=True)
        pid = next((int(row.split(":")[1]) for row in info.stdout.splitlines()
                    if row.strip().startswith("unix_process_id")), None)
        if pid in agent_pids:
            subprocess.run(["virt-admin", "-c", "libvirtd:///system", "client-disconnect",
                            "libvirtd", fields[0]], capture_output=True, check=True)
            dropped += 1
    assert dropped >= 1, listing.stdout
    return f"libvirtd closed {dropped} agent connections"


def restart_libvirtd(_lab: AgentLab) -> str:
    pid = int(Path("/run/libvirtd.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    wait("libvirtd stopped", lambda: not Path(f"/proc/{pid}").exists(), bound=60)
    subprocess.run(["libvirtd", "-d"], check=True)
    wait("libvirtd answers", lambda: virsh("version").returncode == 0, bound=60)
    return "libvirtd restarted"


@pytest.mark.skipif(not RESTART_LIBVIRTD, reason="restarts the machine's libvirtd: set "
                    "CLOUDD_LAB_RESTART_LIBVIRTD=1 where nothing else uses it (CI)")
def test_libvirtd_restart(tmp_path: Path) -> None:
    with running_lab(tmp_path, {"database": 1, "server": 1, "balancer": 1}) as lab:
        pool = {"pm1", "pm2", "pm3"}
        nodes = ["lab-database-1", "lab-server-1", "lab-balancer-1"]
        wait("every node's domain running", lambda: all_running(hosts=pool, nodes=nodes))
        try:
            check_reconnect(lab, pool, how=restart_libvirtd)
        finally:
            if virsh("version").returncode != 0:
                subprocess.run([str(ENSURE_LIBVIRTD)], check=False, timeout=60)


def test_one_lab_per_prefix_at_a_time() -> None:
    """Two runs of one lab would remove each other's domains: the second waits, then fails
    with the lock's name when the first holds on too long."""
    with LabLock(f"{PREFIX}t"):
        other = LabLock(f"{PREFIX}t", timeout=0.6)
        with pytest.raises(AssertionError, match=r"another lab holds .*cloudd-lab-h12lrt.lock"):
            other.acquire()
    with LabLock(f"{PREFIX}t", timeout=0.6):  # released: free again
        pass

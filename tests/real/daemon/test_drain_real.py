"""Draining a host for real: the leader stops a web server's VM and re-places it on another
host while a client polling the balancer sees no failed request.

Three pool host agents in namespaces share this machine's libvirtd (qemu:///system). The web
cloud: the database, the balancer and a first server are `managed: false` nodes in namespaces
with their own agents (real MariaDB, nginx, WEBrick); the second server is a managed VM, the
project's test guest (TCG) whose /init runs the agent, which converges the server role inside
the guest. Once the site serves from both servers, the operator drains the host that runs the
VM (`cloudd-cli drain HOST` on a pool host): the leader moves it only because the other
server is ready, by a shutdown, an undefine, and a new domain on a host that is not drained;
the new VM's agent converges again. `inspect` shows the drain's progress meanwhile. Then
`undrain` lets the host take placements again and moves nothing back.

A drain outlives its leader: the pool lists its hosts last first, so that pm3 leads while the
VM starts on pm1 (`AgentLab.hosts_last_first`). Once the first drain has moved the VM to pm2,
pm2 is drained and the leader's agent is killed (kill -9) as soon as the drain is recorded: the
next leader reads the drain from the record it gathers and finishes the move, to pm1 (pm2 is
drained, pm3 dead).

"Serving throughout": a client reads `/entries` through the balancer every 0.2 s with a 10 s
timeout from before the drain until the moved server serves again. Every request must answer
200 (one may take up to nginx's `proxy_connect_timeout`, 2 s, longer while nginx retries the
other server after the stopped one stopped answering), with one exception per move: the test
guest ignores the shutdown request and is destroyed 10 s later, so a read that nginx had
passed to it at that instant waits for an answer that never comes (nginx's read timeout is
60 s) and the client gives up. So at most one read per move may fail, and only one that began
before the moved server's old VM was seen gone; every other read must succeed. Waits are
bounded polls; the timings are printed, never asserted. Run under `flock
/tmp/cloudd-vm.lock` with other VM labs.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cloudd_lab.background import Background
from cloudd_lab.vmlab import VmLab, agent_command, poll, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.netns, pytest.mark.services]

PREFIX = "h25d"
SUBNET = "10.239.46.0/24"
VM = "lab-server-2"
IN_NAMESPACES = ("lab-database-1", "lab-server-1", "lab-balancer-1")
#: generous: MariaDB's first start, a guest booting under TCG on 2 shared cores
BOUND = 420.0


class DrainLab(VmLab):
    """A web cloud: every node in a namespace with its agent, but the second server, a VM."""

    node_memory_mib: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in IN_NAMESPACES:
            self.own_fields[name] = "managed: false"

    def boot_values(self) -> dict[str, str]:
        values = super().boot_values()
        # the guest's agent imports the same checkout as the lab's agents
        path = os.environ.get("PYTHONPATH", "")
        if path:
            command = f"export PYTHONPATH={path}; {agent_command()}"
            values["agent_cmd64"] = base64.b64encode(command.encode()).decode()
        return values

    def manifest_extra(self) -> str:
        secret = self.root / "db-password"
        secret.write_text("s3cret-for-tests\n")
        secret.chmod(0o600)
        return ("settings: {app_port: 8080, balancer_port: 80, database_name: lab,\n"
                "           database_user: lab, database_password_ref: db}\n"
                f"secrets: {{db: {{file: {secret}}}}}\n")


@pytest.fixture
def lab() -> Iterator[DrainLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    with DrainLab(PREFIX, hosts=3, subnet=SUBNET, cloud_name=PREFIX,
                  nodes={"database": 1, "server": 2, "balancer": 1},
                  agent_nodes=IN_NAMESPACES, hosts_last_first=True) as lab:
        lab.start_all()
        yield lab


class Poller(Background):
    """Reads `/entries` through the balancer every 0.2 s from a thread: (start, seconds
    taken, status, the server that answered) of each request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[float, float, int, str]] = []
        self._background("reader")

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.time()
            status, served = 0, ""
            try:
                with urllib.request.urlopen(f"{self.url}/entries", timeout=10) as reply:
                    reply.read()
                    status, served = reply.status, reply.headers.get("X-Served-By", "")
            except OSError as e:
                served = str(e)
            self.results.append((start, time.time() - start, status, served))
            self._stop.wait(0.2)

    def failures(self) -> list[tuple[float, float, int, str]]:
        return [r for r in self.results if r[2] != 200]

    def beyond_tolerance(self, *, drained_at: float, gone_at: float,
                         ) -> list[tuple[float, float, int, str]]:
        """The failed reads the test does not tolerate: all but one that began between the
        drain and the moment the moved server's old VM was seen gone (in flight to it)."""
        failed = self.failures()
        in_flight = [r for r in failed if drained_at <= r[0] <= gone_at]
        return [r for r in failed if r not in in_flight[:1]]


def watch_move(lab: DrainLab, *, source: str, targets: set[str]) -> tuple[Any, float]:
    """Wait until `VM` runs on one of `targets`: its domain then, and when its domain on
    `source` was first seen not running (unix time)."""
    gone_at: list[float] = []

    def moved() -> Any:
        d = lab.domains().get(VM)
        now = time.time()
        if not gone_at and (d is None or d.host != source or not d.running):
            gone_at.append(now)
        return d if d is not None and d.running and d.host in targets else None

    dom = poll(f"{VM} running on one of {sorted(targets)}", moved, bound=BOUND,
               interval=0.5)[0]
    return dom, gone_at[0]


def leader_inspect(lab: DrainLab) -> dict[str, Any]:
    view = lab.leader_view()
    assert view is not None, "no acting leader answered"
    return view


def phases(view: dict[str, Any] | None) -> dict[str, str]:
    """What each node's agent last reported, as inspect shows it ("" for nothing waiting)."""
    return {n["name"]: n["waiting"] for n in (view or {}).get("nodes", ())}


def serves_from(lab: DrainLab, server: str, *, tries: int = 12) -> bool:
    """Whether `server` answers some of a few reads through the balancer."""
    url = f"http://{lab.node_addresses['lab-balancer-1']}"
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"{url}/entries", timeout=10) as reply:
                if server in reply.headers.get("X-Served-By", ""):
                    return True
        except OSError:
            pass
    return False


def cli(lab: DrainLab, host: str, *args: str) -> str:
    done = lab.cli(host, *args)
    assert done.returncode == 0, f"cloudd-cli {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_a_drain_moves_the_web_server_vm_with_the_site_serving(lab: DrainLab) -> None:
    t0 = time.monotonic()
    url = f"http://{lab.node_addresses['lab-balancer-1']}"
    poll("the site serving from both servers",
         lambda: serves_from(lab, "lab-server-1") and serves_from(lab, VM), bound=BOUND,
         interval=2.0)
    first = lab.domains()[VM]
    print(f"\n[drain] both servers serve after {time.monotonic() - t0:.1f} s; {VM} runs on "
          f"{first.host}")
    others = {"pm1", "pm2", "pm3"} - {first.host}
    # any pool host takes the operator's command and hands it to the leader
    asker = sorted(others)[0]
    with Poller(url) as poller:
        time.sleep(2.0)
        t_drain = time.time()
        out = cli(lab, asker, "drain", first.host)
        print(f"[drain] cloudd-cli drain {first.host}: {out.strip()}")
        assert f"drained: {first.host}" in out
        # the drain's progress in inspect, while the VM is still on the drained host
        progress = poll("inspect showing the drain", lambda: next(
            (d for d in leader_inspect(lab).get("drains", ()) if d["host"] == first.host),
            None), bound=60)[0]
        print(f"[drain] inspect --json, its drain: {json.dumps(progress)}")
        print("[drain] " + "\n[drain] ".join(cli(lab, asker, "inspect").splitlines()))
        # the leader stops the VM and starts a new domain elsewhere
        moved, gone_at = watch_move(lab, source=first.host, targets=others)
        t_moved = time.time()
        print(f"[drain] {VM} runs on {moved.host} {t_moved - t_drain:.1f} s after the drain")
        poll(f"{VM} serving again", lambda: serves_from(lab, VM, tries=4), bound=BOUND,
             interval=2.0)
        t_back = time.time()
        print(f"[drain] {VM} serves again {t_back - t_drain:.1f} s after the drain")
        time.sleep(2.0)
    during = [r for r in poller.results if r[0] >= t_drain]
    slowest = max(r[1] for r in during)
    print(f"[drain] {len(poller.results)} reads through the balancer, {len(during)} since the "
          f"drain, {len(poller.failures())} failed, slowest {slowest:.2f} s; the old VM seen "
          f"gone {gone_at - t_drain:.1f} s after the drain")
    assert poller.beyond_tolerance(drained_at=t_drain, gone_at=gone_at) == [], \
        poller.failures()[:5]
    assert {r[3] for r in during} >= {"lab-server-1"}
    # the drain is complete: nothing of the cloud is left on the host
    view = poll("the drain complete in inspect", lambda: next(
        (d for d in leader_inspect(lab).get("drains", ())
         if d["host"] == first.host and d["left"] == []), None), bound=60)[0]
    assert view["by"] == asker
    assert all(d.host != first.host for d in lab.domains().values())
    text = cli(lab, asker, "inspect")
    print("[drain] " + "\n[drain] ".join(text.splitlines()))
    assert f"{first.host}: empty: drain complete" in text
    # a drain of every other host is refused: no host would be left
    second = sorted(others - {moved.host})[0]
    cli(lab, asker, "drain", second)
    done = lab.cli(asker, "drain", moved.host)
    assert done.returncode != 0
    assert done.stderr.strip().endswith(
        f"host {moved.host} is the last pool host of cloud {PREFIX} not drained: no host "
        "would be left to place a node on"), done.stderr
    # undrain: placements come back, nothing moves back
    for host in (first.host, second):
        out = cli(lab, asker, "undrain", host)
    assert out.strip().endswith("drained: nothing")
    time.sleep(5.0)
    assert lab.domains()[VM].host == moved.host

    # a drain outlives its leader
    leader = leader_inspect(lab)["leadership"]["leader"]
    assert leader not in (moved.host, first.host), (leader, moved.host)
    asker = first.host
    with Poller(url) as poller:
        time.sleep(2.0)
        t_drain = time.time()
        cli(lab, asker, "drain", moved.host)
        lab.kill(leader)
        print(f"[drain] drain {moved.host} recorded; the leader {leader} killed")
        again, gone_at = watch_move(lab, source=moved.host, targets={first.host})
        view = leader_inspect(lab)
        print(f"[drain] {VM} runs on {again.host} {time.time() - t_drain:.1f} s after the "
              f"drain; leader now {view['leadership']['leader']} (term "
              f"{view['leadership']['term']})")
        assert view["leadership"]["leader"] != leader
        poll(f"{VM} serving again", lambda: serves_from(lab, VM, tries=4), bound=BOUND,
             interval=2.0)
        print(f"[drain] {VM} serves again {time.time() - t_drain:.1f} s after the drain")
        time.sleep(2.0)
    during = [r for r in poller.results if r[0] >= t_drain]
    print(f"[drain] {len(during)} reads since the second drain, {len(poller.failures())} "
          f"failed, slowest {max(r[1] for r in during):.2f} s")
    assert poller.beyond_tolerance(drained_at=t_drain, gone_at=gone_at) == [], \
        poller.failures()[:5]
    done = poll("the second drain complete in the new leader's inspect", lambda: next(
        (d for d in leader_inspect(lab).get("drains", ())
         if d["host"] == moved.host and d["left"] == []), None), bound=60)[0]
    assert done["by"] == asker

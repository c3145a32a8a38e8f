"""A web cloud of `managed: false` nodes, each in its own namespace with its own agent: the
leader assigns roles in order (database, servers, balancer), each node's agent converges its
role on real MariaDB, WEBrick and nginx, and the cloud keeps serving through failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudd_lab.agentlab import AgentLab

pytestmark = [pytest.mark.netns, pytest.mark.services]

BOUND = 180.0  # first convergence installs nothing but initialises MariaDB: generous


class WebLab(AgentLab):
    def __post_init__(self) -> None:
        super().__post_init__()
        # The services run as their own users (mysql, www-data): the nodes' state folders
        # must be reachable by them.
        self.root.chmod(0o755)

    def manifest(self, members):  # type: ignore[no-untyped-def]
        secret = self.root / "db-password"
        secret.write_text("s3cret-for-tests\n")
        secret.chmod(0o600)
        return (super().manifest(members)
                + "settings: {app_port: 8080, balancer_port: 80, database_name: lab,\n"
                  "           database_user: lab, database_password_ref: db}\n"
                + f"secrets: {{db: {{file: {secret}}}}}\n")


@pytest.fixture
def lab() -> Iterator[WebLab]:
    with WebLab("web4", hosts=1, subnet="10.234.6.0/24", node_agents=True,
                nodes={"database": 1, "server": 2, "balancer": 1}) as lab:
        lab.start_all()
        yield lab


def request(lab: AgentLab, method: str, path: str, body: str = "") -> tuple[int, str, str]:
    address = lab.node_addresses["lab-balancer-1"]
    req = urllib.request.Request(f"http://{address}{path}", method=method,
                                 data=body.encode() if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("X-Served-By", ""), resp.read().decode()
    except OSError as e:
        return 0, "", str(e)


def leader_view(lab: AgentLab) -> dict:
    for status in lab.statuses().values():
        if status and status.get("acting"):
            return status
    return {}


def leader_inspect(lab: AgentLab) -> dict | None:
    """The leader's view of the cloud, as `cloudd-cli inspect --json` gives it."""
    for name, status in lab.statuses().items():
        if status and status.get("acting"):
            done = lab.cli(name, "inspect", "--json")
            return json.loads(done.stdout)["clouds"][0] if done.returncode == 0 else None
    return None


def phases(lab: AgentLab) -> dict[str, str]:
    return {n: v["phase"] for n, v in leader_view(lab).get("nodes", {}).items()}


def all_ready(lab: AgentLab) -> bool:
    p = phases(lab)
    return len(p) == 4 and all(v == "ready" for v in p.values())


def entries(lab: AgentLab) -> list[str] | None:
    status, _, body = request(lab, "GET", "/entries")
    return [e["body"] for e in json.loads(body)] if status == 200 else None


def pids_of(program: str, ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         check=False).stdout.split()
    found = []
    for pid in out:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if program in exe or any(program.encode() in c for c in cmd[:2]):
            found.append(int(pid))
    return found


def test_web_cloud_converges_and_survives(lab: WebLab) -> None:
    t0 = time.monotonic()
    lab.wait_for("every node ready", lambda: all_ready(lab), timeout=BOUND, interval=0.5)
    print(f"\nweb cloud ready after {time.monotonic() - t0:.1f} s: {phases(lab)}")
    # least secret: the password came in the assignments of the roles that use it, 0600
    for name, has in (("lab-database-1", True), ("lab-server-1", True),
                      ("lab-balancer-1", False)):
        secret = lab.agents[name].folder / "state" / "nodes" / name / "secrets" / "db"
        assert secret.exists() == has, name
        if has:
            assert secret.read_text() == "s3cret-for-tests\n"
            assert secret.stat().st_mode & 0o777 == 0o600

    # the web provider's monitor, run by the leader: its upstream check beside the balancer
    upstream = lab.wait_for("the balancer's upstream check in inspect", lambda: next((
        f for n in (leader_inspect(lab) or {}).get("nodes", []) if n["name"] == "lab-balancer-1"
        for f in n["findings"] if f["check"] == "upstream" and f["ok"]), None), timeout=60)
    print(f"upstream check: {upstream['message']}")

    status, _, body = request(lab, "POST", "/entries", "first")
    assert status in (200, 201), body
    served = {lab.wait_for("GET through the balancer",
                           lambda: request(lab, "GET", "/entries")[1]) for _ in range(6)}
    assert served, "no server named itself"
    assert lab.wait_for("the entry reads back", lambda: entries(lab) == ["first"] or None)

    # kill -9 each service: it is restarted and nothing committed is lost
    for label, program in (("database1", "mariadbd"), ("server1", "ruby"),
                           ("balancer1", "nginx")):
        ns = f"web4-{label}"
        before = pids_of(program, ns)
        assert before, f"no {program} in {ns}"
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        lab.wait_for(f"{program} restarted in {ns}", lambda p=program, n=ns, b=before: (
            (now := pids_of(p, n)) and not set(now) & set(b)), timeout=60)
        lab.wait_for(f"entries readable after killing {program}",
                     lambda: (e := entries(lab)) is not None and "first" in e, timeout=60)
        status, _, body = request(lab, "POST", "/entries", f"after {program}")
        assert status in (200, 201), body
    assert entries(lab) == ["first", "after mariadbd", "after ruby", "after nginx"]

    # a server's whole namespace goes away: the balancer drops it and keeps answering
    lab.kill("lab-server-2")
    lab.cut("lab-server-2")
    lab.wait_for("served by server 1 only", lambda: all(
        request(lab, "GET", "/entries")[1] not in ("", "lab-server-2") for _ in range(4)),
        timeout=60)
    # it comes back: added again
    lab.restore("lab-server-2")
    lab.start("lab-server-2")
    lab.wait_for("served by server 2 again", lambda: any(
        "server-2" in request(lab, "GET", "/entries")[1] for _ in range(6)), timeout=120)

    # kill -9 a node's agent: its services keep running; the restarted agent adopts them
    ruby_before = pids_of("ruby", "web4-server1")
    assert len(ruby_before) == 1
    lab.kill("lab-server-1")
    assert pids_of("ruby", "web4-server1") == ruby_before
    assert entries(lab) is not None
    lab.start("lab-server-1")
    lab.wait_for("server 1 reports ready again", lambda: (
        (s := lab.status("lab-server-1")) is not None and s.get("node")
        and s["node"]["phase"] == "ready"), timeout=120)
    assert pids_of("ruby", "web4-server1") == ruby_before, "a duplicate was started"

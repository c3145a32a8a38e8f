"""One node, two roles, for real: a web cloud whose first server is also its balancer.

Three `managed: false` nodes in namespaces, each with its own agent: the database, and two
servers, the first of which the manifest also lists under `balancer` by its address alone. The
leader assigns that node once, with both roles; its agent runs WEBrick and then nginx under one
supervisor (the balancer's services after the server's), and nginx balances over both servers,
the node's own among them. Then nginx is killed: it is restarted on the same node while the
node's WEBrick keeps running, and the site answers again.

A node's later role may need another node's: the database that is also the balancer, its
servers elsewhere. It runs MariaDB first (the servers need it ready), is given the balancer
once a server is ready, and its nginx is added beside the MariaDB that keeps running (the
same process, adopted by the node's new supervisor).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab
from test_web_cloud_real import WebLab, leader_view, pids_of

pytestmark = [pytest.mark.netns, pytest.mark.services]

BOUND = 180.0
FRONT = "lab-server-1"


class SharedLab(WebLab):
    def manifest(self, members: Sequence[Any]) -> str:
        text = super().manifest(members)
        return text.replace("roles:\n", "roles:\n  balancer:\n"
                            f"    - {{address: {self.node_addresses[FRONT]}}}\n", 1)


@pytest.fixture
def lab() -> Iterator[SharedLab]:
    with SharedLab("web6", hosts=1, subnet="10.234.12.0/24", node_agents=True,
                   nodes={"database": 1, "server": 2}) as lab:
        lab.start_all()
        yield lab


def get(lab: AgentLab, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{lab.node_addresses[FRONT]}{path}",
                                    timeout=10) as resp:
            return resp.status, resp.headers.get("X-Served-By", ""), resp.read().decode()
    except OSError as e:
        return 0, "", str(e)


def test_a_node_that_is_server_and_balancer_runs_both(lab: SharedLab) -> None:
    t0 = time.monotonic()
    lab.wait_for("every node ready", lambda: (
        (p := {n: v["phase"] for n, v in leader_view(lab).get("nodes", {}).items()})
        and len(p) == 3 and all(v == "ready" for v in p.values())), timeout=BOUND,
        interval=0.5)
    print(f"\nready after {time.monotonic() - t0:.1f} s")
    ns = "web6-server1"
    assert pids_of("nginx", ns) and pids_of("ruby", ns)
    assert not pids_of("nginx", "web6-server2")  # the other server is a server only
    # the balancer on the shared node sends requests to both servers, its own among them
    served = {lab.wait_for("GET through the shared node's nginx",
                           lambda: get(lab, "/entries")[1] or None) for _ in range(12)}
    assert served == {FRONT, "lab-server-2"}, served
    # nginx killed: restarted on the node, its WEBrick untouched
    ruby, nginx = pids_of("ruby", ns), pids_of("nginx", ns)
    for pid in nginx:
        os.kill(pid, signal.SIGKILL)
    lab.wait_for("nginx restarted on the shared node", lambda: (
        (now := pids_of("nginx", ns)) and not set(now) & set(nginx)), timeout=60)
    assert pids_of("ruby", ns) == ruby
    assert lab.wait_for("the site answers again", lambda: get(lab, "/entries")[0] == 200
                        or None, timeout=60)


class BackLab(WebLab):
    """The balancer on the database's node."""

    def manifest(self, members: Sequence[Any]) -> str:
        text = super().manifest(members)
        return text.replace("roles:\n", "roles:\n  balancer:\n"
                            f"    - {{address: {self.node_addresses[BACK]}}}\n", 1)


BACK = "lab-database-1"


def test_a_database_that_is_the_balancer_gets_nginx_once_a_server_is_ready() -> None:
    with BackLab("web7", hosts=1, subnet="10.234.13.0/24", node_agents=True,
                 nodes={"database": 1, "server": 2}) as lab:
        lab.start_all()
        ns = "web7-database1"
        # ready with its database alone (its one-time initialisation's server gone by then)
        lab.wait_for("the database's node ready", lambda: leader_view(lab).get(
            "nodes", {}).get(BACK, {}).get("phase") == "ready" or None, timeout=BOUND,
            interval=0.2)
        first = pids_of("mariadbd", ns)
        assert first and not pids_of("nginx", ns)  # no server is ready yet: no balancer
        lab.wait_for("nginx added on the database's node", lambda: pids_of("nginx", ns),
                     timeout=BOUND, interval=0.5)
        assert pids_of("mariadbd", ns) == first  # kept running, not restarted
        address = lab.node_addresses[BACK]

        def served() -> str | None:
            try:
                with urllib.request.urlopen(f"http://{address}/entries", timeout=10) as resp:
                    return resp.headers.get("X-Served-By") or None
            except OSError:
                return None
        who = {lab.wait_for("GET through the database's nginx", served, timeout=60)
               for _ in range(12)}
        assert who <= {"lab-server-1", "lab-server-2"} and who, who

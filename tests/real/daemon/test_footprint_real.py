"""A node agent's footprint, seen from outside: a running node agent has neither libvirt nor
cryptography mapped, while the pool host beside it has libvirt (the same check finds it).

A pool host and a `managed: false` node whose agent runs in its own namespace; once both
follow one leader and the node's side runs, the shared libraries of each agent process are
read from /proc/PID/maps. tests/daemon/test_footprint.py checks the
import closure; this checks what the running agents really loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudd_lab.agentlab import AgentLab

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "h25fp", "10.239.48.0/26"
BOUND = 90.0  # generous: the machine is shared
NODE = "lab-balancer-1"
#: a mark in /proc/PID/maps of each library
LIBVIRT, CRYPTOGRAPHY = "libvirt.so", "_rust.abi3.so"


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab(PREFIX, hosts=1, subnet=SUBNET, agent_nodes=(NODE,)) as lab:
        lab.start_all()
        yield lab


def mapped(lab: AgentLab, name: str) -> str:
    proc = lab.agents[name].proc
    assert proc is not None and proc.poll() is None, lab.exits()
    return Path(f"/proc/{proc.pid}/maps").read_text()


def test_a_running_node_agent_maps_neither_libvirt_nor_cryptography(lab: AgentLab) -> None:
    lab.wait_for("a leader every agent follows", lambda: lab.one_leader(["pm1", NODE]),
                 timeout=BOUND)

    def phase() -> str | None:
        node = (lab.status(NODE) or {}).get("node") or {}
        return node.get("phase") or None

    # its node side runs (the balancer waits, unassigned, for a database without an agent)
    lab.wait_for(f"{NODE}'s node side", phase, timeout=BOUND)
    host, node = mapped(lab, "pm1"), mapped(lab, NODE)
    assert LIBVIRT in host  # the check sees a library where it is loaded
    assert LIBVIRT not in node
    assert CRYPTOGRAPHY not in node

"""NodeLab against the real kernel: per-node hostname, private folders and network, entered
by `exec_prefix`, and nothing left behind (also after a run that never cleaned up)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cloudd_lab.nodens import NodeLab, NodeLabError

pytestmark = pytest.mark.netns

PREFIX = "h22sn"
SUBNET = "10.239.39.128/25"


def _shell(argv: str) -> str:
    return subprocess.run(argv, shell=True, capture_output=True, text=True, check=False).stdout


def _leftovers() -> str:
    """Whatever of a lab with PREFIX exists on the machine."""
    return (_shell(f"ip -o link | grep -o '{PREFIX}[a-z0-9]*'")
            + _shell(f"ip netns list | grep '^{PREFIX}-'")
            + _shell(f"grep -e cloudd-nodens-{PREFIX} /proc/self/mountinfo")
            + _shell(f"ls -d /var/tmp/{PREFIX}-nodes-* /run/cloudd-nodens-{PREFIX} 2>/dev/null"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_nodes_have_their_own_hostname_folders_and_address_then_vanish() -> None:
    with NodeLab(PREFIX, subnet=SUBNET) as lab:
        a, b = lab.add("a", hostname="n-a"), lab.add("b", hostname="n-b")
        assert a.run(["hostname"]).stdout.strip() == "n-a"
        assert b.run(["hostname"]).stdout.strip() == "n-b"
        # /tmp and /run are each node's own, and the host's side of them is known.
        assert a.run(["sh", "-c", "echo mine > /tmp/f && mkdir -p /run/x"]).returncode == 0
        assert a.outside("/tmp/f").read_text() == "mine\n"
        assert b.run(["test", "-e", "/tmp/f"]).returncode == 1
        assert b.run(["test", "-e", "/run/x"]).returncode == 1
        assert not Path("/run/x").exists()
        assert a.outside("/usr/bin") == Path("/usr/bin")  # the rest is shared
        # Each node's /etc/hosts names every node of the lab; one added later too.
        c = lab.add("c", hostname="n-c")
        for node in (a, b, c):
            hosts = node.run(["cat", "/etc/hosts"]).stdout
            assert f"{a.ip}\tn-a" in hosts and f"{c.ip}\tn-c" in hosts
        # The network is the node's own: b reaches a by name, on a's address only.
        listen = subprocess.Popen(a.argv(["busybox", "nc", "-l", "-p", "7777"]),
                                  stdout=subprocess.PIPE, text=True)
        try:
            sent = None
            for _ in range(50):  # until the listener is up (bounded)
                sent = b.run(["sh", "-c", "echo hi | busybox nc -w 2 n-a 7777"])
                if sent.returncode == 0:
                    break
                time.sleep(0.1)
            assert sent is not None and sent.returncode == 0, sent
            out, _ = listen.communicate(timeout=10)
            assert out == "hi\n"
        finally:
            listen.kill()
            listen.wait()
        # A command run as a user is that user, in the node.
        who = a.run(["sh", "-c", "id -un; hostname; pwd"], user="nobody", cwd=lab.root)
        assert who.stdout.split() == ["nobody", "n-a", str(lab.root)], who
        # A process left running is found by its namespaces, and killed on close.
        left = subprocess.Popen(b.argv(["sleep", "300"]))
        inside: list[int] = []
        for _ in range(100):  # until nsenter has entered the node's namespaces (bounded)
            inside = b.pids()
            if inside:
                break
            time.sleep(0.05)
        assert inside == [left.pid]
        assert lab.add("d").hostname == "d"
        with pytest.raises(NodeLabError, match="already exists"):
            lab.add("a")
    left.wait(timeout=10)
    assert left.returncode == -9
    assert _leftovers() == ""


def test_a_crashed_runs_leftovers_are_swept_by_the_next_lab() -> None:
    crashed = NodeLab(PREFIX, subnet=SUBNET).open()
    node = crashed.add("a")
    left = subprocess.Popen(node.argv(["sleep", "300"]), start_new_session=True)
    assert _leftovers() != ""
    # Never closed: the next lab with the same prefix removes everything first.
    with NodeLab(PREFIX, subnet=SUBNET) as lab:
        assert left.wait(timeout=15) == -9
        fresh = lab.add("a")
        assert fresh.run(["hostname"]).stdout.strip() == "a"
        assert not any(_alive(p) for p in fresh.pids())
    assert _leftovers() == ""


def test_a_private_path_may_not_hide_the_labs_own_folder() -> None:
    with pytest.raises(NodeLabError, match="hidden inside the nodes"):
        NodeLab(PREFIX, subnet=SUBNET, base=Path("/tmp"))

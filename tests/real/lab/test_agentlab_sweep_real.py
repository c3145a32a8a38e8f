"""A lab finds what a killed run of its prefix left behind, removes it, and starts; a living
lab's folder (one waiting for the prefix's lock) stays."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from cloudd_lab.agentlab import AgentLab, LabLock, lab_root


def _exists(path: str) -> bool:
    return Path(path).exists()


@pytest.mark.netns
def test_a_dead_runs_bridge_namespaces_agents_and_folder_are_swept_and_the_lab_opens() -> None:
    prefix = "h7s" + uuid.uuid4().hex[:4]
    # What a run killed mid-way leaves: its bridge (same subnet), a namespace with a process in
    # it, an agent process of its folder, and the folder.
    subprocess.run(["ip", "link", "add", f"{prefix}br", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.231.77.1/24", "dev", f"{prefix}br"], check=True)
    subprocess.run(["ip", "link", "set", f"{prefix}br", "up"], check=True)
    subprocess.run(["ip", "netns", "add", f"{prefix}-pm1"], check=True)
    in_ns = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-pm1", "sleep", "300"])
    dead = Path(tempfile.mkdtemp(prefix=f"cloudd-{prefix}-"))
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                              f"{dead}/cloudd.toml"])
    kept = Path(tempfile.gettempdir()) / f"cloudd-{prefix}-guest"  # not a lab folder's shape
    kept.mkdir()
    waiting = lab_root(prefix)  # a living lab's, made before the lock (it waits for it)
    try:
        # `ip netns exec` enters the namespace after it started: the dead run's process is
        # one already in there.
        for _ in range(200):
            if str(in_ns.pid) in _netns_pids(f"{prefix}-pm1"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("ip netns exec did not enter the namespace within 10 s")
        with AgentLab(prefix, hosts=2, subnet="10.231.77.0/24") as lab:
            assert set(lab.agents) == {"pm1", "pm2"}
            assert not _exists(str(dead))
            assert kept.exists() and waiting.exists()
        assert agent.wait(timeout=10) == -9
        assert in_ns.wait(timeout=10) == -9
        assert not _exists(f"/sys/class/net/{prefix}br")
        assert f"{prefix}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                  text=True, check=True).stdout
    finally:
        for p in (agent, in_ns):
            if p.poll() is None:
                p.kill()
        subprocess.run(["ip", "link", "del", f"{prefix}br"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", f"{prefix}-pm1"], capture_output=True, check=False)
        kept.rmdir()
        shutil.rmtree(waiting, ignore_errors=True)
        LabLock(prefix).path.unlink(missing_ok=True)  # the prefix is this run's alone


def _netns_pids(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                          check=False).stdout.split()

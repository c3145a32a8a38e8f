"""Real agents in namespaces against their own state files: a full disk and corrupt files never
take a healthy host down.

- The leader's state folder is a small tmpfs, filled until the disk says ENOSPC: the leader
  keeps leading, a follower killed and restarted meanwhile follows it again, the operator's
  commands still work (their events are dropped, counted, and shown by `inspect`), and once
  the space is freed events are stored again; a command the record must keep (maintenance)
  is refused in one sentence meanwhile, nothing written. No agent exits.
- A host stopped and given a garbage `highest-term`, an empty `term` and a corrupt
  `events.sqlite3` starts all the same, sets the three aside (the files stay, renamed), and
  says in `status` and `inspect` that it relearns its terms: with the third host down it
  cannot, and nobody leads. Once the third host is back it relearns, a leader is elected, the
  host runs the leader's commands again, and from its start on nobody tries to fence a host.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "h13s", "10.239.31.0/24"
#: Generous bounds: the machine is shared.
BOUND = 60.0


def state_of(lab: AgentLab, name: str) -> Path:
    return lab.agents[name].folder / "state"


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab(PREFIX, hosts=3, subnet=SUBNET) as lab:
        yield lab


def leader_of(lab: AgentLab) -> tuple[str, int]:
    leader: tuple[str, int] = lab.wait_for("one leader followed by all", lab.one_leader,
                                           timeout=BOUND)
    return leader


def log_events(lab: AgentLab, name: str, event: str) -> list[dict[str, Any]]:
    return [e for e in lab.log_events() if e["agent"] == name and e.get("event") == event]


def inspect(lab: AgentLab, name: str) -> dict[str, Any]:
    done = lab.cli(name, "inspect", "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system refuses: dd ends with ENOSPC."""
    done = subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'filler'}", "bs=64K"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "No space left" in done.stderr, done.stderr


def test_a_full_state_disk_drops_events_and_nothing_else(lab: AgentLab) -> None:
    mounts: list[Path] = []
    try:
        for name in lab.agents:  # every host on a tmpfs: any of them may lead
            folder = state_of(lab, name)
            folder.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0711", "tmpfs",
                            str(folder)], check=True)
            mounts.append(folder)
        lab.start_all()
        leader, term = leader_of(lab)
        follower = next(n for n in lab.agents if n != leader)
        fill(state_of(lab, leader))

        # the operator's command works; its event finds no room
        done = lab.cli(leader, "cleanup", "lab-server-1")
        assert done.returncode == 0, done.stderr
        status = lab.wait_for("the leader counts the event it dropped", lambda: (
            (s := lab.status(leader)) is not None and s["events_dropped"] > 0 and s))
        assert (status["leader"], status["term"], status["acting"]) == (leader, term, True)
        assert inspect(lab, leader)["agent"]["events_dropped"] > 0

        # the election goes on: a follower killed and restarted follows the same leader
        lab.kill(follower)
        lab.start(follower)
        assert leader_of(lab) == (leader, term)
        done = lab.cli(leader, "cleanup", "lab-server-1")
        assert done.returncode == 0, done.stderr
        (failed,) = log_events(lab, leader, "event_log_write_failed")  # once for the burst
        assert "full" in failed["reason"]
        # a command the record must keep is refused in one sentence: nothing is written
        done = lab.cli(leader, "maintenance", "on", "lab-server-1")
        assert done.returncode != 0
        assert done.stderr.strip().endswith(
            "No space left on device; nothing was written, try again once it has room"), \
            done.stderr

        # room again: the next event is stored, and the log says how many were lost
        (state_of(lab, leader) / "filler").unlink()
        done = lab.cli(leader, "cleanup", "lab-database-1")
        assert done.returncode == 0, done.stderr
        events = lab.cli(leader, "events", "--json", "--limit", "50")
        assert events.returncode == 0, events.stderr
        reasons = [json.loads(line)["reason"] for line in events.stdout.splitlines()]
        assert "cleanup lab-database-1" in reasons
        (resumed,) = log_events(lab, leader, "event_log_write_resumed")
        assert resumed["dropped"] >= 2
        assert leader_of(lab) == (leader, term)
        assert sorted(lab.running()) == sorted(lab.agents), "an agent exited"
    finally:
        for name in lab.agents:
            lab.kill(name)
        for folder in mounts:
            subprocess.run(["umount", str(folder)], check=False)


def test_a_host_with_corrupt_state_files_starts_relearns_and_is_never_fenced(
        lab: AgentLab) -> None:
    lab.start_all()
    leader, _ = leader_of(lab)
    host, third = (n for n in sorted(lab.agents) if n != leader)
    lab.kill(host, signal.SIGTERM)
    lab.kill(third, signal.SIGTERM)  # without it the host cannot relearn, and nobody leads
    cloud = state_of(lab, host) / "clouds" / "lab"
    (cloud / "highest-term").write_bytes(b"\x00\x17garbage\xff")
    (cloud / "term").write_bytes(b"")
    (state_of(lab, host) / "events.sqlite3").write_bytes(b"not a database " * 100)

    back = time.time()  # the two hosts were dead meanwhile: a leader may have tried to fence
    lab.start(host)
    status = lab.wait_for("the host says it relearns its terms", lambda: (
        (s := lab.status(host)) is not None and "relearning" in s.get("unproven", "") and s))
    assert status["leader"] is None and not status["acting"]
    assert "relearning" in inspect(lab, host)["agent"]["unproven"]
    aside = {Path(e["path"]).name for e in log_events(lab, host, "state_file_set_aside")}
    assert aside == {"highest-term", "term", "events.sqlite3"}
    for folder, name in ((cloud, "highest-term"), (cloud, "term"),
                         (state_of(lab, host), "events.sqlite3")):
        (kept,) = (p for p in folder.glob(f"{name}.corrupt-*")
                   if not p.name.endswith(("-wal", "-shm", "-journal")))
        assert kept.stat().st_size > 0 or name == "term"
    assert (cloud / "term").read_text().startswith("unproven")

    lab.start(third)
    new, term = leader_of(lab)
    lab.wait_for("the host relearned its terms", lambda: (
        (s := lab.status(host)) is not None and s.get("unproven") == ""))
    lab.wait_for("the host runs the leader's commands again", lambda: log_events(
        lab, host, "host_fence_relearned"))
    view = lab.wait_for("the leader reaches the host", lambda: next(
        (h for h in inspect(lab, new)["clouds"][0]["hosts"]
         if h["name"] == host and h["reachable"]), None))
    assert view["liveness"] == "alive"
    (relearned,) = log_events(lab, host, "terms_relearned")
    (fence,) = log_events(lab, host, "host_fence_relearned")
    assert relearned["at"] <= fence["at"] and fence["term"] <= term
    refused = [e for e in log_events(lab, host, "command_refused")
               if "lost its fencing term" in e["reason"]]
    assert all(e["at"] <= fence["at"] for e in refused)
    assert int((cloud / "term").read_text()) >= fence["term"]
    fenced = [e for e in lab.log_events()
              if e.get("event") in ("host_fenced", "fence_failed") and e["at"] >= back]
    assert fenced == [], fenced
    assert sorted(lab.running()) == sorted(lab.agents), "an agent exited"

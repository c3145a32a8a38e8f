"""An elastic Slurm compute role in real VMs: it grows for a job that needs more nodes than
run, the job runs across them, and once idle the extra node is drained and its VM removed.

A head VM and the elastic compute role's first candidate boot from the node image (the role's
`min: 1`); the lab's second compute node is a candidate only, with no domain. A job of the
manifest's user asking for two nodes waits in Slurm (`Resources`); the leader's elastic loop
reads the queue from the head, takes the second candidate into use (recorded on the pool
hosts), the planner defines and starts its VM, its slurmd registers, and the job runs on both.
After the job, the node stays idle past `idle_after`: the leader drains it in Slurm with its
own reason, and once drained with no job it leaves: its domain is removed and Slurm forgets it.
Every change is in the event log with its reason, and `inspect` shows the role's state.

In `make test`, after the batch module (this module's name sorts after it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cloudd_lab.batchlab import BACK, JOB, UP, BatchLab, Job, pool_size
from cloudd_lab.vmlab import leftovers, poll, virsh

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt, pytest.mark.netns, pytest.mark.services,
              pytest.mark.timeout(3600)]

PREFIX, SUBNET = "h25e", "10.239.49.0/24"
#: Short enough for a test, long enough that a node is not drained between two jobs' starts.
BOUNDS = {"min": 1, "max": 2, "idle_after": 30, "cooldown": 10}
FIRST, SECOND = "lab-compute-1", "lab-compute-2"

Say = Callable[[str], None]


@pytest.fixture(scope="module")
def lab() -> Iterator[BatchLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    try:
        with BatchLab(PREFIX, hosts=pool_size("slurm"), cloud_type="slurm", subnet=SUBNET,
                      cloud_name=PREFIX, elastic=BOUNDS) as it:
            it.start_all()
            yield it
    finally:
        left = leftovers(PREFIX)
        assert left == [], f"the elastic e2e left these behind: {left}"


def _elastic(lab: BatchLab) -> dict[str, Any] | None:
    """The leader's finding of the elastic role (in inspect's JSON)."""
    view = lab.leader_view()
    for f in (view or {}).get("findings", ()):
        if f["check"] == "elastic compute":
            return dict(f)
    return None


def _events(lab: BatchLab) -> list[str]:
    host = next(n for n in lab.running() if n.startswith("pm"))
    done = lab.cli(host, "events", "--json", "--limit", "1000")
    if done.returncode != 0:
        return []
    return [json.loads(line)["reason"] for line in done.stdout.splitlines() if line.strip()]


def test_the_role_grows_for_a_job_and_shrinks_back_once_idle(lab: BatchLab, say: Say) -> None:
    # The minimum: the head and the first candidate, ready; the second has no domain.
    _, took = poll("the head and the first compute node ready", lambda: (
        (p := lab.phases()).get(lab.head) == "ready" and p.get(FIRST) == "ready"),
        bound=UP, interval=5.0)
    assert SECOND not in lab.domains()
    poll(f"{FIRST} idle in Slurm", lambda: lab.free(FIRST), bound=BACK, interval=5.0)
    found = _elastic(lab)
    assert found is not None and found["message"] == "1 node(s) in use, of 1 to 2", found

    # A job asking for two nodes waits for them; the role grows to fit.
    job = lab.scheduler._client(lab, "sbatch", "--parsable", "-J", "wide", "--chdir=/tmp",
                                "-N", "2", "-o", "/tmp/wide-%N.out",
                                "--wrap", "srun hostname", user=lab.user)
    job_id = job.strip().split(";")[0]
    _, grew = poll(f"{SECOND}'s domain defined by the leader",
                   lambda: SECOND in lab.domains(), bound=BACK, interval=3.0)
    _, ran = poll(f"job {job_id} started", lambda: lab.started_on(Job(job_id, "")),
                  bound=JOB + UP, interval=5.0)
    host = next(n for n in lab.running() if n.startswith("pm"))
    say("inspect while grown:\n" + lab.cli(host, "inspect").stdout)
    hosts = lab.scheduler._client(lab, "scontrol", "show", "job", job_id, "-o")
    fields = dict(f.split("=", 1) for f in hosts.split() if "=" in f)
    assert fields.get("NodeList") in ("lab-compute-[1-2]", f"{FIRST},{SECOND}"), fields

    # Idle past idle_after: the second node is drained with cloudd's reason, then leaves.
    _, shrank = poll(f"{SECOND}'s domain removed once idle", lambda: (
        SECOND not in lab.domains()), bound=BACK, interval=5.0)
    poll(f"Slurm forgets {SECOND}", lambda: SECOND not in lab.scheduler.states(lab),
         bound=BACK, interval=5.0)
    found = _elastic(lab)
    assert found is not None and found["message"] == "1 node(s) in use, of 1 to 2", found
    reasons = _events(lab)
    assert any(r.startswith(f"take {SECOND}: 1 job(s) wait for nodes") for r in reasons), reasons
    assert any(r.startswith(f"drain {SECOND}: no job for") for r in reasons), reasons
    assert f"leave {SECOND}: drained in the scheduler, no job left" in reasons, reasons
    say(f"elastic slurm in VMs: minimum ready after {took:.0f} s; a 2-node job made the "
        f"leader define {SECOND} {grew:.0f} s after it was submitted, the job started "
        f"{ran:.0f} s later; the idle node's domain was removed {shrank:.0f} s after")

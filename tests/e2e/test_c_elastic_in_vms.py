"""An elastic compute role in real VMs, for each scheduler: it grows for a job that waits
for more nodes than run, the job runs, and once idle the extra node is drained and its VM
removed.

A head VM and the elastic compute role's first candidate boot from the node image (the role's
`min: 1`); the lab's second compute node is a candidate only, with no domain. A job of the
manifest's user waits for nodes: in Slurm one asking for two nodes (`PartitionConfig`); in
TORQUE (whose pbs_server refuses a job asking for more nodes than it lists) a second
node-exclusive job queued behind one that holds the first node. The leader's elastic loop
reads the queue from the head, takes the second candidate into use (recorded on the pool
hosts), the planner defines and starts its VM, it registers with the scheduler, and the job
runs. After the jobs, the node stays idle past `idle_after`: the leader drains it in the
scheduler with its own note, and once drained with no job it leaves: its domain is removed
and the scheduler forgets it. Every change is in the event log with its reason, and
`inspect` shows the role's state.

In `make test` for Slurm, after the batch module (this module's name sorts after it);
TORQUE (`e2e_full`) in `make e2e`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cloudd_lab.batchlab import BACK, JOB, UP, BatchLab, Job, pool_size
from cloudd_lab.paths import checkout
from cloudd_lab.vmlab import leftovers, poll, virsh

from cloudd.images.torque import default_source

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt, pytest.mark.netns, pytest.mark.services,
              pytest.mark.timeout(3600)]

#: Each scheduler's lab: its prefix and subnet.
LABS = {"slurm": ("h25e", "10.239.49.0/24"), "torque": ("h26t", "10.239.54.0/24")}
#: Short enough for a test, long enough that a node is not drained between two jobs' starts.
BOUNDS = {"min": 1, "max": 2, "idle_after": 30, "cooldown": 10}
FIRST, SECOND = "lab-compute-1", "lab-compute-2"

Say = Callable[[str], None]


@pytest.fixture(scope="module", params=["slurm", pytest.param("torque",
                                                              marks=pytest.mark.e2e_full)])
def lab(request: pytest.FixtureRequest) -> Iterator[BatchLab]:
    kind: str = request.param
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    if kind == "torque":
        tarball = default_source(checkout())
        if tarball is None or not tarball.is_file():
            pytest.skip(f"no TORQUE source tarball at {tarball}: the node image has no "
                        "TORQUE (set CLOUDD_TORQUE_SOURCE to the tarball's path)")
    prefix, subnet = LABS[kind]
    try:
        with BatchLab(prefix, hosts=pool_size(kind), cloud_type=kind, subnet=subnet,
                      cloud_name=prefix, elastic=BOUNDS) as it:
            it.start_all()
            yield it
    finally:
        left = leftovers(prefix)
        assert left == [], f"the elastic {kind} e2e left these behind: {left}"


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
    poll(f"{FIRST} idle in {lab.cloud_type}", lambda: lab.free(FIRST), bound=BACK, interval=5.0)
    found = _elastic(lab)
    assert found is not None and found["message"] == "1 node(s) in use, of 1 to 2", found

    # A job waits for a node more; the role grows to fit.
    waits = (_wide_slurm_job if lab.cloud_type == "slurm" else _second_torque_job)(lab)
    _, grew = poll(f"{SECOND}'s domain defined by the leader",
                   lambda: SECOND in lab.domains(), bound=BACK, interval=3.0)
    _, ran = poll(f"job {waits.id} started", lambda: lab.started_on(waits),
                  bound=JOB + UP, interval=5.0)
    host = next(n for n in lab.running() if n.startswith("pm"))
    say("inspect while grown:\n" + lab.cli(host, "inspect").stdout)
    if lab.cloud_type == "slurm":
        shown = lab.scheduler._client(lab, "scontrol", "show", "job", waits.id, "-o")
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        assert fields.get("NodeList") in ("lab-compute-[1-2]", f"{FIRST},{SECOND}"), fields
    else:
        assert lab.started_on(waits) == SECOND

    # Idle past idle_after: the second node is drained with cloudd's reason, then leaves.
    _, shrank = poll(f"{SECOND}'s domain removed once idle", lambda: (
        SECOND not in lab.domains()), bound=BACK, interval=5.0)
    poll(f"{lab.cloud_type} forgets {SECOND}",
         lambda: SECOND not in lab.scheduler.states(lab), bound=BACK, interval=5.0)
    found = _elastic(lab)
    assert found is not None and found["message"] == "1 node(s) in use, of 1 to 2", found
    reasons = _events(lab)
    assert any(r.startswith(f"take {SECOND}: 1 job(s) wait for nodes") for r in reasons), reasons
    assert any(r.startswith(f"drain {SECOND}: no job for") for r in reasons), reasons
    assert f"leave {SECOND}: drained in the scheduler, no job left" in reasons, reasons
    say(f"elastic {lab.cloud_type} in VMs: minimum ready after {took:.0f} s; a job waiting "
        f"for a node made the leader define {SECOND} {grew:.0f} s after it was submitted, "
        f"the job started there {ran:.0f} s later; the idle node's domain was removed "
        f"{shrank:.0f} s after")


def _wide_slurm_job(lab: BatchLab) -> Job:
    """A job asking for two nodes (Slurm holds it in `PartitionConfig` until the partition
    has them): it runs across both."""
    job = lab.scheduler._client(lab, "sbatch", "--parsable", "-J", "wide", "--chdir=/tmp",
                                "-N", "2", "-o", "/tmp/wide-%N.out",
                                "--wrap", "srun hostname", user=lab.user)
    return Job(job.strip().split(";")[0], "")


def _second_torque_job(lab: BatchLab) -> Job:
    """Two node-exclusive jobs (`qsub -n`), the first holding the only node for a while: the
    second waits queued for a node, and runs on the one the role takes."""
    ids = []
    for name, seconds in (("holds", 120), ("waits", 5)):
        ids.append(lab.run_on(lab.head, ("/opt/torque/bin/qsub", "-N", name, "-n", "-k", "oe"),
                              env={"PBS_DEFAULT": lab.head}, user=lab.user,
                              stdin=f"exec >/tmp/{name}.out 2>&1\nsleep {seconds}\n"
                                    f"hostname\n").strip())
    poll(f"job {ids[0]} started on {FIRST}",
         lambda: FIRST in (lab.started_on(Job(ids[0], "")) or ""), bound=JOB, interval=3.0)
    return Job(ids[1], "")


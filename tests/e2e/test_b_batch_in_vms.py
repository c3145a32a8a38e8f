"""A batch cluster in real VMs, per scheduler: jobs as a user, and a compute VM killed and back.

Pool host agents in namespaces share this machine's libvirtd (as many as the shipped manifest
lists); a head and two compute nodes run in VMs booted from the one node image with the
shipped domain template of the type, and the cloud's manifest is the shipped one
(manifests/slurm.yaml, manifests/torque.yaml) with only the lab's names, addresses, disks and
secret files put in (cloudd_lab.batchlab). Everything is seen from inside the guests, over
SSH: a job submitted as the manifest's user from the head runs on a compute node, as that
user, without the agent unit's no_new_privs (the node image's drop-in), and its output is read
back from that node; then a compute VM's qemu is killed with SIGKILL: the leader brings it
back, the scheduler shows it free (sinfo idle, pbsnodes free) and a job pinned to it runs.

Slurm runs in `make test`; TORQUE (`e2e_full`) in `make e2e`, skipped with its reason when
the machine has no TORQUE source tarball to build the image's TORQUE from. One cluster at a
time (the fixture is parametrized by scheduler: pytest ends one before it makes the next), and
after the web module's (this module's name sorts after it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from cloudd_lab.batchlab import BACK, JOB, JOB_SCRIPT, LABS, UP, BatchLab, pool_size
from cloudd_lab.paths import checkout
from cloudd_lab.vmlab import leftovers, poll, virsh

from cloudd.images.torque import default_source

#: pytest-timeout's per-test bound is too short for a cold start of three Debian guests on a
#: busy machine; each wait below is bounded on its own.
pytestmark = [pytest.mark.e2e, pytest.mark.libvirt, pytest.mark.netns, pytest.mark.services,
              pytest.mark.timeout(3600)]

Say = Callable[[str], None]


def _torque_or_skip() -> None:
    tarball = default_source(checkout())
    if tarball is None or not tarball.is_file():
        pytest.skip(f"no TORQUE source tarball at {tarball}: the node image has no TORQUE "
                    "(set CLOUDD_TORQUE_SOURCE to the tarball's path)")


@pytest.fixture(scope="module", params=["slurm", pytest.param("torque",
                                                              marks=pytest.mark.e2e_full)])
def cluster(request: pytest.FixtureRequest) -> Iterator[BatchLab]:
    kind: str = request.param
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    if kind == "torque":
        _torque_or_skip()
    prefix, subnet = LABS[kind]
    try:
        with BatchLab(prefix, hosts=pool_size(kind), cloud_type=kind, subnet=subnet,
                      cloud_name=prefix) as lab:
            lab.start_all()
            yield lab
    finally:
        left = leftovers(prefix)
        assert left == [], f"the {kind} e2e left these behind: {left}"


def _check_job(lab: BatchLab, where: str, lines: list[str]) -> None:
    assert lines[:2] == [where, lab.user], lines  # on a compute VM, as the submitting user
    # The node image's drop-in lifts the agent unit's NoNewPrivileges for the jobs.
    assert lines[2].split() == ["NoNewPrivs:", "0"], lines
    assert lines[-1] == "done"


def scheduler_view(lab: BatchLab) -> dict[str, str]:
    """Each node's state as the scheduler says it, in the leader's `cloudd-cli inspect --json`
    asked through a pool host's agent (empty while no leader view answers)."""
    host = next(n for n in lab.running() if n.startswith("pm"))
    done = lab.cli(host, "inspect", "--json")
    if done.returncode != 0:
        return {}
    cloud = json.loads(done.stdout)["clouds"][0]
    if cloud.get("source") != "leader":
        return {}
    return {n["name"]: f["state"] for n in cloud["nodes"] for f in n["findings"] if f["state"]}


def test_a_job_of_the_user_runs_on_a_compute_vm(cluster: BatchLab, say: Say) -> None:
    lab = cluster
    _, took = poll("every node ready", lab.ready, bound=UP, interval=5.0)
    _, idle = poll("both compute nodes free in the scheduler",
                   lambda: lab.free(*lab.computes), bound=BACK, interval=5.0)
    where, lines = lab.run_job(name="first")
    assert where in lab.computes
    _check_job(lab, where, lines)
    # The leader's monitor asks the head (a NodeAction over mTLS) for the scheduler's view, and
    # inspect shows it beside cloudd's: both compute nodes free there too.
    free = lab.scheduler.free_word
    view, _ = poll("the scheduler's view in inspect", lambda: (
        (v := scheduler_view(lab)) and all(v.get(c) == free for c in lab.computes) and v),
        bound=BACK, interval=5.0)
    text = lab.cli(next(n for n in lab.running() if n.startswith("pm")), "inspect").stdout
    assert "SCHEDULER" in text, text
    say(f"{lab.cloud_type} in VMs: every node ready {took:.0f} s after the agents started, "
        f"both compute nodes {lab.scheduler.free_word} {idle:.0f} s later; a job of "
        f"{lab.user} ran on {where}: {lines[:3]}; inspect's scheduler view: {view}")


def test_kill_9_a_compute_vm_it_comes_back_free_and_takes_the_next_job(cluster: BatchLab,
                                                                       say: Say) -> None:
    lab = cluster
    poll("both compute nodes free in the scheduler", lambda: lab.free(*lab.computes),
         bound=BACK, interval=5.0)
    node = lab.computes[-1]
    recovery = lab.kill_and_recover(node, bound=BACK)
    assert recovery.ran_on == node
    _check_job(lab, node, list(recovery.lines))
    say(f"{lab.cloud_type}: {recovery.line()}")


def test_draining_a_compute_vm_s_host_lets_its_job_finish_then_moves_it(cluster: BatchLab,
                                                                        say: Say) -> None:
    lab = cluster
    poll("both compute nodes free in the scheduler", lambda: lab.free(*lab.computes),
         bound=BACK, interval=5.0)
    node = lab.computes[0]
    drained = lab.domains()[node].host
    job = lab.submit(f"sleep 60; {JOB_SCRIPT}", name="under-drain", node=node)
    poll(f"job {job.id} started on {node}", lambda: lab.started_on(job) == node, bound=JOB,
         interval=3.0)
    pm = next(n for n in lab.running() if n.startswith("pm") and n != drained)
    done = lab.cli(pm, "drain", drained)
    assert done.returncode == 0, done.stderr
    started = time.monotonic()

    # The scheduler drains it, at the leader's word for a move; its job runs on where it is.
    poll(f"{node} drained in the scheduler, its job running", lambda: (
        "drain" in lab.scheduler.states(lab).get(node, "")
        or "offline" in lab.scheduler.states(lab).get(node, "")), bound=BACK, interval=3.0)
    assert f"drain {node}: on a drained host: its jobs end before it moves" in lab.events()
    dom = lab.domains()[node]
    assert dom.host == drained and dom.running and lab.finished(job) is None
    poll(f"{node} running on another host", lambda: (
        (d := lab.domains().get(node)) is not None and d.host != drained and d.running),
        bound=BACK, interval=5.0)
    moved = time.monotonic() - started
    ended = lab.finished(job)
    assert ended is not None and ended.split(",")[0].lower() == "completed", ended

    # Ready there, its drain undone: it takes jobs again.
    _, back = poll(f"{node} free in the scheduler again", lambda: lab.free(node), bound=BACK,
                   interval=5.0)
    where, lines = lab.run_job(name="after-move", node=node)
    _check_job(lab, where, lines)
    reasons = [r for r in lab.events() if r.startswith((f"drain {node}", f"keep {node}"))]
    assert reasons[:2] == [
        f"drain {node}: on a drained host: its jobs end before it moves",
        f"keep {node}: moved off its drained host (or the host undrained): it takes jobs "
        "again"], reasons
    assert lab.cli(pm, "undrain", drained).returncode == 0
    say(f"{lab.cloud_type}: host {drained} drained under a 60 s job on {node}: the job "
        f"ended ({ended}), the node ran on {lab.domains()[node].host} {moved:.0f} s after the "
        f"drain and was free in the scheduler {back:.0f} s later; a job pinned to it ran")


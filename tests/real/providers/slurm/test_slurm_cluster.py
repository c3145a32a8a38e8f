"""The Slurm provider for real: munged, slurmctld and slurmd in three test nodes, jobs as a user."""

from __future__ import annotations

import pwd

import pytest
from cloudd_lab.nodens import open_to_others
from slurmlab import USER, SlurmLab, until

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import Release
from cloudd.providers.slurm import sched
from cloudd.providers.slurm.provider import PROVIDER

pytestmark = [pytest.mark.services, pytest.mark.netns]


async def _configured(lab: SlurmLab, role: str) -> bool:
    try:
        await PROVIDER.configure(lab.cluster(), role)
    except TemporaryError:
        return False
    return True


async def _states(lab: SlurmLab) -> dict[str, str]:
    """node -> the scheduler's state of it, as monitor reports it."""
    return {f.node: f.state for f in await PROVIDER.monitor(lab.cluster())
            if f.check == "scheduler"}


async def _idle(lab: SlurmLab, *names: str) -> bool:
    states = await _states(lab)
    return all(states.get(n) == "idle" for n in names)


async def _true(value: bool) -> bool:
    return value


async def _no_queue(lab: SlurmLab) -> bool:
    *_, queue = await PROVIDER.monitor(lab.cluster())
    return queue.state == "no job waiting"


@pytest.mark.timeout(240)
async def test_jobs_run_through_kills_joins_drains_and_leaves(slurmlab: SlurmLab) -> None:
    lab = slurmlab
    lab.add("sl-head", "head")
    lab.add("sl-c1", "compute")
    lab.add("sl-c2", "compute")
    # Nothing runs yet: configuring the head is refused, to be retried.
    with pytest.raises(TemporaryError, match="slurmctld on sl-head did not answer"):
        await PROVIDER.configure(lab.cluster(), "head")
    await lab.converge("sl-head")
    await PROVIDER.configure(lab.cluster(), "head")
    for name in ("sl-c1", "sl-c2"):
        await lab.converge(name)
    await until(lambda: _configured(lab, "compute"), "both compute nodes registered")
    await until(lambda: _idle(lab, "sl-c1", "sl-c2"), "both compute nodes idle")

    # A job submitted as a normal user runs on a compute node, as that user.
    job = lab.submit("hostname; id -un")
    host, user = (await lab.output(job)).split()
    assert host in ("sl-c1", "sl-c2") and user == USER

    # The scheduler's view, as the leader's monitor sees it.
    findings = await PROVIDER.monitor(lab.cluster())
    assert [(f.check, f.node, f.ok) for f in findings] == [
        ("slurmctld", "sl-head", True), ("scheduler", "sl-c1", True),
        ("scheduler", "sl-c2", True), ("queue", "", True)]

    # kill -9 of each daemon: supervised back, and a new job still runs.
    for name, service in (("sl-head", "slurmctld"), ("sl-c1", "slurmd"), ("sl-c2", "munged"),
                          ("sl-head", "munged")):
        old = await lab.kill9(name, service)
        assert lab.service(name, service).pid != old
        where = name if name != "sl-head" else None
        job = lab.submit("hostname", where=where)
        assert (await lab.output(job)).strip() in (where or "sl-c1", "sl-c2")

    # Slurm drains a node itself (its own user sets the reason): monitor resumes it. An
    # operator's drain is left alone.
    drained = lab.slurm("scontrol", "update", "nodename=sl-c1", "state=drain",
                        "reason=Kill task failed", user="slurm")
    assert drained.returncode == 0, drained.stderr
    assert lab.slurm("scontrol", "update", "nodename=sl-c2", "state=drain",
                     "reason=maintenance").returncode == 0
    by_node = {f.node: f for f in await PROVIDER.monitor(lab.cluster())
               if f.check == "scheduler"}
    assert by_node["sl-c1"].message == (
        "drained in Slurm (Kill task failed, set by slurm): resumed")
    assert by_node["sl-c2"].message == (
        "drained in Slurm (maintenance, set by root): left to its operator")
    await until(lambda: _idle(lab, "sl-c1"), "sl-c1 idle again")
    assert (await _states(lab))["sl-c2"] == "drained"
    assert lab.slurm("scontrol", "update", "nodename=sl-c2", "state=resume").returncode == 0

    # A compute node added joins by itself and takes jobs.
    lab.add("sl-c3", "compute")
    await lab.converge("sl-c3")
    await until(lambda: _configured(lab, "compute"), "sl-c3 registered")
    job = lab.submit("hostname", where="sl-c3")
    assert (await lab.output(job)).strip() == "sl-c3"

    # One removed leaves the scheduler: its services stop, configure deletes it.
    await lab.stop("sl-c2")
    del lab.roles["sl-c2"]
    await PROVIDER.configure(lab.cluster(), "compute")
    sinfo = lab.slurm("sinfo", "-h", "-N", "-o", "%N").stdout.split()
    assert sinfo == ["sl-c1", "sl-c3"]
    assert await _idle(lab, "sl-c1", "sl-c3")
    job = lab.submit("hostname")
    assert (await lab.output(job)).strip() in ("sl-c1", "sl-c3")

    # Jobs that cannot start yet are summed for the whole cloud, with Slurm's reasons: one
    # waits for nodes (both are taken), the others for something no node would change.
    busy = lab.slurm("sbatch", "--parsable", "-N", "2", "--exclusive", "--wrap", "sleep 120",
                     user=USER)
    assert busy.returncode == 0, busy.stderr
    busy_id = busy.stdout.strip().split(";")[0]
    await until(lambda: _true(lab.job(busy_id, "%T") == "RUNNING"), "both nodes taken")
    waits = [lab.slurm("sbatch", "--parsable", *extra, "--wrap", "true", user=USER)
             for extra in (("-N", "1", "-n", "2"), ("--hold", "-N", "2"), ("--hold", "-N", "2"),
                           ("--begin=now+1hour", "-n", "2"))]
    assert all(done.returncode == 0 for done in waits), waits

    async def summed() -> bool:
        *_, queue = await PROVIDER.monitor(lab.cluster())
        return "Resources 1" in queue.state or "Priority 1" in queue.state
    await until(summed, "slurmctld to give the waiting job its reason")
    *_, queue = await PROVIDER.monitor(lab.cluster())
    assert (queue.check, queue.ok, queue.message) == ("queue", True, "jobs waiting")
    assert queue.state.startswith(
        "4 job(s) waiting, 1 for nodes asking 1 node(s) and 2 CPU(s); 3 for something else "
        "(JobHeldUser 2, "), queue.state
    ids = [busy_id, *(done.stdout.strip().split(";")[0] for done in waits)]
    assert lab.slurm("scancel", *ids, user=USER).returncode == 0
    await until(lambda: _no_queue(lab), "the queue empty again")


async def _head_and_two_computes(lab: SlurmLab) -> None:
    """The head and two compute nodes converged, both computes registered and idle."""
    for name, role in (("sl-head", "head"), ("sl-c1", "compute"), ("sl-c2", "compute")):
        lab.add(name, role)
        await lab.converge(name)
    await until(lambda: _configured(lab, "compute"), "both compute nodes registered")
    await until(lambda: _idle(lab, "sl-c1", "sl-c2"), "both compute nodes idle")


@pytest.mark.timeout(180)
async def test_an_agent_restart_keeps_the_daemons_and_a_dead_node_requeues(
        slurmlab: SlurmLab) -> None:
    lab = slurmlab
    await _head_and_two_computes(lab)

    # Each daemon's pid file is in a folder only root may write (slurmctld and slurmd read it
    # as root when they start); slurmctld's state is the slurm user's alone.
    for name, pid_file in (("sl-head", "slurmctld.pid"), ("sl-c1", "slurmd.pid"),
                           ("sl-c2", "slurmd.pid")):
        run = lab.root(name) / "slurm" / "run"
        assert (run / pid_file).is_file(), f"{name}: no {pid_file}"
        assert open_to_others(run) == [], name
    state = (lab.root("sl-head") / "slurm" / "state").stat()
    assert (pwd.getpwuid(state.st_uid).pw_name, state.st_mode & 0o777) == ("slurm", 0o700)

    # The head's agent goes away; a job queued meanwhile runs; the new agent adopts the
    # daemons that kept running (the same processes, nothing started twice).
    pids = {s: lab.service("sl-head", s).pid for s in ("munged", "slurmctld")}
    lab.sups["sl-head"].detach()
    job = lab.submit("hostname")
    sup = await lab.restart_agent("sl-head")
    assert {n: (s.pid, s.adopted) for n, s in sup.status().items()} == {
        n: (pid, True) for n, pid in pids.items()}
    assert (await lab.output(job)).strip() in ("sl-c1", "sl-c2")

    # A compute node dies under a running job: Slurm marks it down once it stops answering
    # and requeues the job (to start again once the job's credentials have expired).
    job = lab.submit("sleep 600")
    await until(lambda: _async(lab.job(job, "%T") == "RUNNING"), f"job {job} running")
    dead = lab.job(job, "%N")
    lab.crash(dead)
    await until(lambda: _async(lab.job(job, "%T") == "PENDING"), f"job {job} requeued",
                limit=90)
    shown = lab.slurm("scontrol", "-o", "show", "job", job).stdout
    assert "Restarts=1" in shown and "Requeue=1" in shown, shown
    by_node = {f.node: f for f in await PROVIDER.monitor(lab.cluster())
               if f.check == "scheduler"}
    assert by_node[dead].state == "down*" and not by_node[dead].ok
    assert by_node[dead].message.startswith("down* in Slurm (Not responding")

    # It comes back (its agent converges again): Slurm returns it to service by itself.
    await lab.converge(dead)
    await until(lambda: _idle(lab, dead), f"{dead} idle again", limit=60)
    job = lab.submit("hostname", where=dead)
    assert (await lab.output(job)).strip() == dead


def _shown(lab: SlurmLab, node: str) -> str:
    """The node's state, the reason's user and the reason, as sinfo prints them now."""
    return lab.slurm("sinfo", "-h", "-N", "-n", node, "-o", "%T|%u|%E").stdout.strip()


@pytest.mark.timeout(180)
async def test_the_head_reads_the_node_again_and_leaves_an_operators_drain(
        slurmlab: SlurmLab) -> None:
    lab = slurmlab
    await _head_and_two_computes(lab)
    cluster = lab.cluster()

    # cloudd's own drain, and its undoing; a node that serves already is left so.
    await PROVIDER.release(cluster, "compute", "sl-c1", Release.LEAVE)
    assert _shown(lab, "sl-c1") == f"drained|root|{sched.ELASTIC_REASON}"
    await PROVIDER.release(cluster, "compute", "sl-c1", Release.LEAVE)  # nothing to do
    await PROVIDER.keep(cluster, "compute", "sl-c1")
    await until(lambda: _idle(lab, "sl-c1"), "sl-c1 idle again")  # idle* until pinged
    assert _shown(lab, "sl-c1") == "idle|Unknown|none"
    assert await lab.ask("sl-head", "resume_node", {"node": "sl-c1"}) == {
        "node": "sl-c1", "state": "resumed"}
    assert _shown(lab, "sl-c1") == "idle|Unknown|none"

    # The leader reads the nodes: sl-c1 leaving (cloudd's drain), sl-c2 idle. Before its
    # `keep` of sl-c1 and its `release` of sl-c2 reach the head, an operator drains both for
    # a reason of their own: the head, reading them again, leaves both drains as they are.
    await PROVIDER.release(cluster, "compute", "sl-c1", Release.LEAVE)
    use = (await PROVIDER.demand(cluster, "compute")).use
    assert (use["sl-c1"].released, use["sl-c2"].ready) == (True, True)
    for name in ("sl-c1", "sl-c2"):
        done = lab.slurm("scontrol", "update", f"nodename={name}", "state=drain",
                         "reason=bad disk")
        assert done.returncode == 0, done.stderr
    with pytest.raises(PermanentError) as refused:
        await lab.ask("sl-head", "resume_node", {"node": "sl-c1"})
    assert str(refused.value) == (
        "action 'resume_node' failed: resume_node: sl-c1 is drained by its operator's word "
        "(reason 'bad disk', set by root): left as it is")
    with pytest.raises(PermanentError) as refused:
        await lab.ask("sl-head", "drain_node", {"node": "sl-c2", "why": "move"})
    assert str(refused.value) == (
        "action 'drain_node' failed: drain_node: sl-c2 is drained by its operator's word "
        "(reason 'bad disk', set by root): left as it is")
    # The leader's calls: refused alike (it logs them and decides again from its next read).
    with pytest.raises(TemporaryError, match=r"^resume_node sl-c1 on sl-head: action "
                                             "'resume_node' failed: resume_node: sl-c1 is "
                                             "drained by its operator's word"):
        await PROVIDER.keep(cluster, "compute", "sl-c1")
    with pytest.raises(TemporaryError, match=r"^drain_node sl-c2 on sl-head: action "
                                             "'drain_node' failed: drain_node: sl-c2 is "
                                             "drained by its operator's word"):
        await PROVIDER.release(cluster, "compute", "sl-c2", Release.LEAVE)
    for name in ("sl-c1", "sl-c2"):
        assert _shown(lab, name) == "drained|root|bad disk", name

    # Once the operator resumes them, they serve again. An operator's DOWN is left alike; a
    # node slurmctld does not know is not acted on.
    for name in ("sl-c1", "sl-c2"):
        assert lab.slurm("scontrol", "update", f"nodename={name}",
                         "state=resume").returncode == 0
    await until(lambda: _idle(lab, "sl-c1", "sl-c2"), "both compute nodes idle again")
    assert lab.slurm("scontrol", "update", "nodename=sl-c2", "state=down",
                     "reason=pulled").returncode == 0
    with pytest.raises(PermanentError, match="^action 'resume_node' failed: resume_node: "
                                             "sl-c2 is down by its operator's word "
                                             r"\(reason 'pulled', set by root\): left as it "
                                             "is$"):
        await lab.ask("sl-head", "resume_node", {"node": "sl-c2"})
    assert _shown(lab, "sl-c2") == "down|root|pulled"
    with pytest.raises(TemporaryError, match=r"^drain_node: sl-c9 is not registered with "
                                             "slurmctld$"):
        await lab.ask("sl-head", "drain_node", {"node": "sl-c9", "why": "leave"})
    assert _shown(lab, "sl-c9") == ""

    # cloudd's drain of a node the operator gave back is cloudd's again.
    assert lab.slurm("scontrol", "update", "nodename=sl-c2", "state=resume").returncode == 0
    await until(lambda: _idle(lab, "sl-c2"), "sl-c2 idle again")
    await PROVIDER.release(cluster, "compute", "sl-c2", Release.MOVE)
    assert _shown(lab, "sl-c2") == f"drained|root|{sched.MOVING_REASON}"
    await PROVIDER.keep(cluster, "compute", "sl-c2")
    await until(lambda: _idle(lab, "sl-c2"), "sl-c2 idle again")
    assert _shown(lab, "sl-c2") == "idle|Unknown|none"


async def _async(value: bool) -> bool:
    return value

"""TORQUE for real: a head and compute nodes in namespaces, jobs from a normal user, daemons
killed and supervised back, compute nodes added and removed, the head's agent killed -9 and
restarted, and a compute node whose services die under a running job."""

from __future__ import annotations

import time

import pytest
from cloudd_lab.nodens import open_to_others
from torquelab import USER, TorqueLab, open_folders, until

from cloudd.errors import TemporaryError
from cloudd.providers.base import Finding, NodeUse
from cloudd.providers.torque import programs
from cloudd.providers.torque.layout import Home
from cloudd.providers.torque.nodes import LEAVING
from cloudd.providers.torque.provider import PROVIDER

pytestmark = [pytest.mark.services, pytest.mark.netns]


async def _bring_up(lab: TorqueLab) -> None:
    """Roles in the provider's order, each configured by the leader's hook once it runs."""
    for role in PROVIDER.role_order:
        for label in [lb for lb, r in lab.roles.items() if r == role]:
            await lab.converge(label)
        await PROVIDER.configure(lab.cluster(), role)


def _pbsnodes(lab: TorqueLab) -> str:
    done = lab.client("head", "pbsnodes", "-a")
    return done.stdout + done.stderr


@pytest.mark.timeout(330)
async def test_jobs_run_through_kill_9_of_every_daemon_and_nodes_come_and_go(
        torquelab: TorqueLab) -> None:
    lab = torquelab
    # Nothing runs yet: the leader's hook is refused, to be retried.
    lab.health["head"] = False
    with pytest.raises(TemporaryError, match="has no healthy TORQUE head"):
        await PROVIDER.configure(lab.cluster(), "compute")
    lab.health["head"] = True

    started = time.monotonic()
    await _bring_up(lab)
    # A fresh pbs_mom reads `down` for a while before `free`: waited for, never asserted.
    await until(lab.all_free, "both compute nodes free in pbs_server's view")
    print(f"\n[torque] head and two computes up, nodes free after "
          f"{time.monotonic() - started:.1f} s")
    # The server database is created once: preparing the head again keeps it (and its queue).
    head = lab.assignment("head")
    await PROVIDER.role("head").prepare(head)
    assert not await programs.create_server_db(head, Home(head.root))
    assert "batch" in lab.client("head", "qstat", "-Q").stdout
    findings = await lab.findings()
    assert sorted(findings) == ["tq-c1", "tq-c2"]
    assert all(f.message.startswith("free") for f in findings.values())

    # A normal user's job runs on a compute node; its output comes back.
    host, user = await lab.ran(lab.submit("first"))
    assert (host, user) in {("tq-c1", USER), ("tq-c2", USER)}

    # Jobs that wait are summed for the whole cloud: one held, one to start in an hour.
    script = lab.shared / "waits.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    later = time.strftime("%Y%m%d%H%M", time.localtime(time.time() + 3600))
    waiting = [lab.client("head", "qsub", *extra, str(script), user=USER) for extra in (
        ("-h", "-l", "nodes=2:ppn=2"), ("-a", later, "-l", "nodes=1"))]
    assert all(done.returncode == 0 for done in waiting), waiting
    queue = await lab.queue()
    assert (queue.ok, queue.message, queue.state) == (
        True, "jobs waiting", "2 job(s) waiting, 0 for nodes asking 0 node(s) and 0 CPU(s); "
        "2 for something else (held 1, waiting for its start time 1)"), queue
    assert lab.client("head", "qdel", *(done.stdout.strip() for done in waiting),
                      user=USER).returncode == 0

    # kill -9 of each daemon: the supervisor brings it back, and a new job still runs.
    for label, service in (("head", "pbs_server"), ("head", "pbs_sched"),
                           ("head", "trqauthd"), ("c1", "pbs_mom"), ("c2", "pbs_mom"),
                           ("c1", "trqauthd")):
        killed = time.monotonic()
        old = await lab.kill9(label, service)
        print(f"[torque] kill -9 {service} on {label} (pid {old}): running again after "
              f"{time.monotonic() - killed:.1f} s")
    killed = time.monotonic()
    # A new leader configures the head again: the server's settings are applied again,
    # harmlessly (the queue exists), and pbs_mom answers the head's nudge.
    await PROVIDER.configure(lab.cluster(), "head")
    await until(lab.all_free, "both compute nodes free again after the kills")
    assert await lab.ask("tq-head", "cycle_node", {"name": "tq-c1"}) == {"node": "tq-c1"}
    print(f"[torque] nodes free again {time.monotonic() - killed:.1f} s after the last kill")
    host, user = await lab.ran(lab.submit("after-kills"))
    assert (host, user) in {("tq-c1", USER), ("tq-c2", USER)}

    # A compute node added: registered by the leader's hook, and it takes jobs.
    lab.add("c3", "compute")
    await lab.converge("c3")
    await PROVIDER.configure(lab.cluster(), "compute")
    assert "tq-c3" in _pbsnodes(lab)
    await until(lab.all_free, "the new compute node free")
    assert await lab.ran(lab.submit("on-c3", where="tq-c3")) == ["tq-c3", USER]

    # One removed while a job runs there: set offline (no new job lands on it), deleted once
    # its job ended (qmgr delete node would hang on a busy node); then its services stop.
    running = lab.submit("last-on-c3", where="tq-c3", sleep=8)
    await until(lambda: _runs_on(lab, "tq-c3"), "a job running on tq-c3")
    lab.forget("c3")
    with pytest.raises(TemporaryError, match="offline in TORQUE until their jobs end"):
        await PROVIDER.configure(lab.cluster(), "compute")
    assert "offline" in _pbsnodes(lab).split("tq-c3", 1)[1].split("\n\n")[0]
    assert await lab.ran(running) == ["tq-c3", USER]
    await until(lambda: _configured(lab), "tq-c3 deleted once its job ended")
    assert "tq-c3" not in _pbsnodes(lab)
    await lab.stop("c3")
    assert sorted(await lab.findings()) == ["tq-c1", "tq-c2"]
    host, _ = await lab.ran(lab.submit("after-removal"))
    assert host in {"tq-c1", "tq-c2"}


@pytest.mark.timeout(300)
async def test_an_elastic_node_drained_to_leave_finishes_its_job_and_can_be_taken_back(
        torquelab: TorqueLab) -> None:
    lab = torquelab
    await _bring_up(lab)
    await until(lab.all_free, "both compute nodes free in pbs_server's view")
    assert (await PROVIDER.demand(lab.cluster(), "compute")).use == {
        "tq-c1": NodeUse(ready=True), "tq-c2": NodeUse(ready=True)}

    # Drained under a running job: offline with cloudd's note, the job goes on.
    running = lab.submit("under-drain", where="tq-c1", sleep=8)
    await until(lambda: _runs_on(lab, "tq-c1"), "a job running on tq-c1")
    await PROVIDER.release(lab.cluster(), "compute", "tq-c1")
    demand = await PROVIDER.demand(lab.cluster(), "compute")
    assert demand.use["tq-c1"] == NodeUse(busy=True, released=True), demand
    leaving = (await lab.findings())["tq-c1"]
    assert leaving.ok and leaving.message.endswith(": leaving the cloud, no longer needed")
    assert LEAVING in _pbsnodes(lab).split("tq-c1", 1)[1].split("\n\n")[0]
    # No new job lands there; the one it runs finishes there.
    assert (await lab.ran(lab.submit("beside-drain")))[0] == "tq-c2"
    assert await lab.ran(running) == ["tq-c1", USER]

    async def no_job_left() -> bool:
        return (await PROVIDER.demand(lab.cluster(), "compute")).use["tq-c1"] == NodeUse(
            released=True)
    await until(no_job_left, "tq-c1 drained with no job left")

    # Taken back (jobs wait for nodes again): online, and it takes a job.
    await PROVIDER.keep(lab.cluster(), "compute", "tq-c1")
    await until(lab.all_free, "tq-c1 free again")
    assert await lab.ran(lab.submit("taken-back", where="tq-c1")) == ["tq-c1", USER]

    # An operator's offline is the operator's: neither drained over nor resumed.
    assert lab.client("head", "pbsnodes", "-o", "-N", "bad disk", "tq-c2").returncode == 0
    for call in (PROVIDER.release, PROVIDER.keep):
        with pytest.raises(TemporaryError, match="tq-c2 is offline by its operator's word "
                                                 "\\(note 'bad disk'\\): left as it is"):
            await call(lab.cluster(), "compute", "tq-c2")
    assert "bad disk" in _pbsnodes(lab).split("tq-c2", 1)[1]


async def _runs_on(lab: TorqueLab, node: str) -> bool:
    finding = (await lab.findings()).get(node)
    return finding is not None and bool(finding.jobs)


async def _configured(lab: TorqueLab) -> bool:
    try:
        await PROVIDER.configure(lab.cluster(), "compute")
    except TemporaryError:
        return False
    return True


#: The folders of a PBS_HOME that TORQUE's own install leaves world-writable (sticky): where
#: users' jobs put their files. Nothing of a daemon's is there.
JOB_FOLDERS = {"torque/checkpoint": 0o1777, "torque/spool": 0o1777,
               "torque/undelivered": 0o1777}
#: The lock file (with the daemon's pid) that each TORQUE daemon keeps in its home.
LOCKS = {"head": ("server_priv/server.lock", "sched_priv/sched.lock"),
         "compute": ("mom_priv/mom.lock",)}


@pytest.mark.timeout(300)
async def test_the_head_s_agent_killed_9_leaves_its_daemons_running_and_its_successor_adopts(
        torquelab: TorqueLab) -> None:
    lab = torquelab
    # The head's services run under a supervisor in a process of its own: the agent's.
    await lab.converge("head", own_process=True)
    await PROVIDER.configure(lab.cluster(), "head")
    for label in ("c1", "c2"):
        await lab.converge(label)
    await PROVIDER.configure(lab.cluster(), "compute")
    await until(lab.all_free, "both compute nodes free in pbs_server's view")

    # Every daemon runs as root, and keeps its lock file (its pid) in a folder only root may
    # write, all the way up; the only folders others may write are TORQUE's sticky folders
    # for users' job files.
    for label, role in lab.roles.items():
        root = lab.nodes.root / "roles" / label
        assert open_folders(root) == JOB_FOLDERS, label
        for lock in LOCKS[role]:
            assert (root / "torque" / lock).is_file(), lock
            assert open_to_others(root / "torque" / lock) == [], lock

    daemons = ("trqauthd", "pbs_server", "pbs_sched")
    before = {name: rec.pid for name, rec in lab.saved("head").items()}
    assert set(before) == set(daemons)
    lab.kill_agent("head")
    # The daemons outlived their agent, and TORQUE works without it: a job submitted
    # meanwhile runs.
    assert {name: lab.processes("head", name) for name in daemons} == {
        name: [pid] for name, pid in before.items()}
    host, user = await lab.ran(lab.submit("agentless"))
    assert (host, user) in {("tq-c1", USER), ("tq-c2", USER)}

    # The next agent adopts the same processes: nothing started twice.
    restarted = time.monotonic()
    sup = await lab.restart_agent("head")
    print(f"\n[torque] the head's agent killed -9: a job ran without it; the next agent "
          f"adopted its daemons (same pids) in {time.monotonic() - restarted:.1f} s")
    assert {n: (s.pid, s.adopted, s.starts) for n, s in sup.status().items()} == {
        name: (pid, True, 1) for name, pid in before.items()}
    assert {name: lab.processes("head", name) for name in daemons} == {
        name: [pid] for name, pid in before.items()}
    # ... and supervises them: a daemon killed -9 is started again, by the new agent.
    for service in ("pbs_sched", "pbs_server"):
        old = await lab.kill9("head", service)
        assert lab.processes("head", service) == [lab.status("head", service).pid] != [old]
    await until(lab.all_free, "both compute nodes free after pbs_server's restart")
    host, _ = await lab.ran(lab.submit("after-adoption"))
    assert host in {"tq-c1", "tq-c2"}


@pytest.mark.timeout(480)
async def test_a_node_whose_services_die_under_a_rerunnable_job(torquelab: TorqueLab) -> None:
    lab = torquelab
    await _bring_up(lab)
    # pbs_server checks its nodes every node_check_rate (the cloud's 30 s), except for its
    # first check, which comes the rate in force when it started after its start: TORQUE's
    # default 150 s for a fresh head, whose settings come later. Here it runs with them.
    await lab.kill9("head", "pbs_server")
    await until(lab.all_free, "both compute nodes free in pbs_server's view")
    _, job = lab.qsub("long", sleep=600, rerunnable=True)

    async def running(job: str) -> bool:
        return lab.job(job).get("job_state") == "R"
    await until(lambda: running(job), f"job {job} running")
    first = lab.job(job)
    dead = first["exec_host"].split("/", 1)[0]
    other = ({"tq-c1", "tq-c2"} - {dead}).pop()
    label = lab.label_of(dead)
    # A job that may not run twice (`qsub -r n`) beside it.
    _, kept = lab.qsub("kept", where=dead, sleep=600, rerunnable=False)
    await until(lambda: running(kept), f"job {kept} running on {dead}")
    print(f"\n[torque] {job} (-r y) and {kept} (-r n) run on {dead}: its pbs_mom and "
          "trqauthd die")

    # pbs_mom and trqauthd die for good, with the node's agent; the jobs' processes go on.
    killed = time.monotonic()
    lab.services_die(label)
    assert lab.job_processes(label, job) and lab.job_processes(label, kept)

    seen: list[Finding] = []

    async def down() -> bool:
        # (A monitor pass without pbs_server's view, one pbsnodes that failed, has no
        # finding of the node: the next pass has.)
        finding = (await lab.findings()).get(dead)
        if finding is None or "down" not in finding.state.split(","):
            return False
        seen.append(finding)
        return True
    await until(down, f"{dead} down in pbs_server's view", limit=150)
    print(f"[torque] {dead} down in pbs_server's view {time.monotonic() - killed:.1f} s "
          "after its pbs_mom died")
    # TORQUE keeps the jobs running on the node it last heard of: nothing is requeued by
    # itself, and cloudd's monitor reports the node down with them (job-exclusive if full).
    finding = seen[0]
    assert not finding.ok
    assert finding.message == (f"{finding.state}, 2 job(s): {job}, {kept} "
                               "(its agent is not healthy either)")
    for j, rerunnable in ((job, "True"), (kept, "False")):
        now = lab.job(j)
        assert (now["job_state"], now["exec_host"].split("/")[0], now["Rerunable"]) == (
            "R", dead, rerunnable)
    # qrerun needs the job's pbs_mom to kill it; with -f pbs_server requeues a rerunnable
    # job without it (TORQUE's own remedy), and it runs on the other node. A job that may
    # not run twice is refused even so.
    refused = lab.client("head", "qrerun", job)
    assert refused.returncode != 0 and lab.job(job)["job_state"] == "R"
    print(f"[torque] qrerun {job}: {(refused.stdout + refused.stderr).strip()}")
    forced = lab.client("head", "qrerun", "-f", kept)
    assert forced.returncode != 0 and "not rerunnable" in forced.stdout + forced.stderr
    forced = lab.client("head", "qrerun", "-f", job)
    assert forced.returncode == 0, forced.stdout + forced.stderr

    async def rerun_elsewhere() -> bool:
        now = lab.job(job)
        return now.get("job_state") == "R" and now["exec_host"].startswith(f"{other}/")
    await until(rerun_elsewhere, f"job {job} requeued and running on {other}")
    print(f"[torque] qrerun -f: {job} running on {other} "
          f"{time.monotonic() - killed:.1f} s after the kill")
    assert lab.job(kept)["exec_host"].startswith(f"{dead}/")

    # The node comes back (its agent converges again): pbs_mom recovers the jobs it ran
    # (TORQUE's default, `pbs_mom -p`), pbs_server tells it that the requeued one runs
    # elsewhere now, and that copy is killed; the other job goes on where it was.
    lab.health[label] = True
    await lab.converge(label)
    await until(lab.all_free, f"{dead} free again")

    async def leftover_gone() -> bool:
        return not lab.job_processes(label, job)
    await until(leftover_gone, f"the old copy of {job} gone from {dead}")
    assert lab.job(job)["exec_host"].startswith(f"{other}/")
    assert lab.job(kept)["job_state"] == "R" and lab.job_processes(label, kept)
    assert lab.client("head", "qdel", kept).returncode == 0

    async def kept_gone() -> bool:
        return not lab.job_processes(label, kept)
    await until(kept_gone, f"{kept} killed on {dead} by its recovered pbs_mom")
    assert await lab.ran(lab.submit("back", where=dead)) == [dead, USER]

"""A batch cluster (Slurm or TORQUE) in real VMs booted from the node image, as shipped.

`BatchLab` is an `ImageLab` (pool host agents in namespaces on this machine's libvirtd, nodes
booted from the one node image with the shipped domain template of the type) whose manifest is
the shipped example (`manifests/slurm.yaml`, `manifests/torque.yaml`) with only what belongs
to the lab replaced: the cloud's and nodes' names, the pool hosts (their addresses, libvirt
connection and the lab's fence), the nodes' addresses and disks (overlays of the image), the
template's values (the image's kernel, initramfs, the lab's bridge), the secrets' files (made
in the lab's folder) and the lab's SSH key as `node_access`. Roles, resources, settings,
users and secret names stay as shipped, so what runs is what an operator would run.

A `Scheduler` speaks to the cluster from inside its guests, over the lab's SSH (`guest_ssh`):
submit a job as the manifest's first user from the head (pinned to a node or not), read its
output back from the compute node that ran it, and tell whether the scheduler shows a node
free (`sinfo` idle, `pbsnodes -x` free); submit a burst of one-node jobs in one command and
read every job's state (`burst`, `job_states`: bench/elastic_burst.py). `kill_and_recover` is
the fault the e2e test and bench/batch_recovery.py share: kill -9 a compute VM's qemu, wait
until the scheduler shows the node free again, then until a job pinned to it starts, and say
how long each took.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from cloudd_lab.imagelab import ImageLab
from cloudd_lab.netlab import Netns
from cloudd_lab.paths import checkout
from cloudd_lab.vmlab import poll, qemu_pid

#: Every node of a cloud on a node keeps its files in the agent's state folder.
NODE_ROOT = "/var/lib/cloudd/nodes"
#: Generous bounds: TCG guests on two cores shared with other work.
UP = 1800.0
BACK = 1200.0
JOB = 600.0
#: scheduler -> (lab prefix, which is also the cloud's name; the lab's subnet): the e2e
#: test's and the bench's (the machine runs one lab of VMs at a time)
LABS = {"slurm": ("h23b", "10.239.42.0/24"), "torque": ("h23t", "10.239.43.0/24")}


#: A job's state as `Scheduler.job_states` says it, the same words for every scheduler.
WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"


@dataclass(frozen=True)
class JobState:
    """A job as the head shows it: WAITING, RUNNING, DONE or FAILED, and the scheduler's own
    record of when it was submitted, started and ended (unix seconds by the head's clock, to
    the second; None where the scheduler shows none yet)."""

    state: str
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None


def _slurm_time(text: str | None) -> float | None:
    """A time of `scontrol show job` (local time of the head, to the second; None for its
    `Unknown`/`None`): unix seconds if the head's zone is UTC, as the node image's is, and in
    any case comparable with the others of the same head."""
    try:
        return dt.datetime.fromisoformat(text or "").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _epoch(text: str | None) -> float | None:
    return float(text) if text and text.isdigit() else None


@dataclass(frozen=True)
class Job:
    """A job submitted from the head: its id, and the file its script writes on the node."""

    id: str
    out: str


class Scheduler:
    """How the e2e test reaches one scheduler from inside the guests."""

    cloud_type: ClassVar[str] = ""
    #: how `free` calls a node the scheduler would give a job now
    free_word: ClassVar[str] = ""

    def submit(self, lab: BatchLab, script: str, *, name: str, node: str | None) -> Job:
        raise NotImplementedError

    def states(self, lab: BatchLab) -> dict[str, str]:
        """node -> the scheduler's state of it, as seen from the head."""
        raise NotImplementedError

    def burst(self, lab: BatchLab, script: str, *, names: list[str]) -> list[Job]:
        """One job per name, each asking one node, submitted as the user in one command on
        the head (one SSH connection): as close to at once as a user's loop of submissions."""
        raise NotImplementedError

    def job_states(self, lab: BatchLab) -> dict[str, JobState]:
        """job id -> its state, for every job the head still shows (a scheduler forgets an
        ended job after a while)."""
        raise NotImplementedError

    def running_on(self, lab: BatchLab, job: Job) -> str | None:
        """The node `job` runs (or ran) on, once the scheduler has started it."""
        raise NotImplementedError

    def finished(self, lab: BatchLab, job: Job) -> str | None:
        """How `job` ended, in the scheduler's words ("COMPLETED", "completed, exit 0"), None
        while it has not ended."""
        raise NotImplementedError

    def incarnation(self, lab: BatchLab, node: str) -> str:
        """What the scheduler's head last heard from `node`'s daemon that changes when a new
        daemon speaks: a node the scheduler still shows free after its VM was killed (it has
        not noticed yet) keeps the old value."""
        raise NotImplementedError

    def anew(self, before: str, now: str, *, killed_at: float) -> bool:
        """Whether `now` (an `incarnation` read after a kill at `killed_at`) comes from a new
        daemon: any change, where the value names the daemon itself."""
        return now != before


class SlurmOnVms(Scheduler):
    cloud_type = "slurm"
    free_word = "idle"

    def _client(self, lab: BatchLab, *argv: str, user: str | None = None) -> str:
        head = lab.head
        env = {"SLURM_CONF": f"{NODE_ROOT}/{head}/slurm/slurm.conf"}
        return lab.run_on(head, argv, env=env, user=user)

    def submit(self, lab: BatchLab, script: str, *, name: str, node: str | None) -> Job:
        out = f"/tmp/{name}.out"
        where = ["-w", node] if node else []
        answer = self._client(lab, "sbatch", "--parsable", "-J", name, "--chdir=/tmp",
                              "-o", out, *where, "--wrap", script, user=lab.user)
        return Job(answer.strip().split(";")[0], out)

    def states(self, lab: BatchLab) -> dict[str, str]:
        listing = self._client(lab, "sinfo", "-h", "-N", "-o", "%N %T")
        return dict(line.split()[:2] for line in listing.splitlines() if len(line.split()) >= 2)

    def burst(self, lab: BatchLab, script: str, *, names: list[str]) -> list[Job]:
        submits = [shlex.join(["sbatch", "--parsable", "-J", name, "-N", "1", "--exclusive",
                               "--chdir=/tmp", "-o", f"/tmp/{name}.out", "--wrap", script])
                   for name in names]
        answer = self._client(lab, "sh", "-ec", "\n".join(submits), user=lab.user)
        ids = [line.strip().split(";")[0] for line in answer.splitlines() if line.strip()]
        return [Job(i, f"/tmp/{name}.out") for i, name in zip(ids, names, strict=True)]

    #: Slurm's job states (`scontrol show job`): the ones a job waits in, runs in, or ended
    #: well in (COMPLETING: its script ended, the node is being cleaned); any other ended it
    #: otherwise (FAILED, CANCELLED, NODE_FAIL, TIMEOUT, ...).
    SLURM_STATES: ClassVar[dict[str, str]] = {
        "PENDING": WAITING, "CONFIGURING": WAITING, "REQUEUED": WAITING,
        "REQUEUE_HOLD": WAITING, "REQUEUE_FED": WAITING, "SUSPENDED": WAITING,
        "RESV_DEL_HOLD": WAITING, "RUNNING": RUNNING, "COMPLETING": DONE, "COMPLETED": DONE}

    def job_states(self, lab: BatchLab) -> dict[str, JobState]:
        listing = self._client(lab, "scontrol", "show", "job", "-o")
        out: dict[str, JobState] = {}
        for line in listing.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "JobId" not in fields:
                continue
            state = self.SLURM_STATES.get(fields.get("JobState", ""), FAILED)
            # a waiting job's StartTime is Slurm's guess, a running one's EndTime its limit
            out[fields["JobId"]] = JobState(
                state, _slurm_time(fields.get("SubmitTime")),
                _slurm_time(fields.get("StartTime")) if state in (RUNNING, DONE) else None,
                _slurm_time(fields.get("EndTime")) if state == DONE else None)
        return out

    def running_on(self, lab: BatchLab, job: Job) -> str | None:
        # squeue forgets a job soon after it ends; scontrol keeps it for MinJobAge (300 s).
        # COMPLETING is no proof of a start: a launch on a node that died ends there too.
        shown = self._client(lab, "scontrol", "show", "job", job.id, "-o")
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        state, where = fields.get("JobState", ""), fields.get("BatchHost", "")
        return where if state in ("RUNNING", "COMPLETED") and where else None

    def finished(self, lab: BatchLab, job: Job) -> str | None:
        shown = self._client(lab, "scontrol", "show", "job", job.id, "-o")
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        state = fields.get("JobState", "")
        return None if state in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING") else (
            f"{state}, exit {fields.get('ExitCode', '?')}")

    def incarnation(self, lab: BatchLab, node: str) -> str:
        shown = self._client(lab, "scontrol", "show", "node", node, "-o")
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        return fields.get("SlurmdStartTime", "")


class TorqueOnVms(Scheduler):
    cloud_type = "torque"
    free_word = "free"

    def _client(self, lab: BatchLab, *argv: str, user: str | None = None) -> str:
        return lab.run_on(lab.head, (f"/opt/torque/bin/{argv[0]}", *argv[1:]),
                          env={"PBS_DEFAULT": lab.head}, user=user)

    def submit(self, lab: BatchLab, script: str, *, name: str, node: str | None) -> Job:
        out = f"/tmp/{name}.out"
        where = ["-l", f"nodes={node}"] if node else []
        # The job writes its output on the node itself, and TORQUE keeps its own stdout and
        # stderr there too (-k oe): copying them back to the head would need SSH between nodes.
        wrapped = f"exec >{shlex.quote(out)} 2>&1\n{script}\n"
        answer = lab.run_on(lab.head, ("/opt/torque/bin/qsub", "-N", name, "-k", "oe",
                                       *where), env={"PBS_DEFAULT": lab.head}, user=lab.user,
                            stdin=wrapped)
        return Job(answer.strip(), out)

    def burst(self, lab: BatchLab, script: str, *, names: list[str]) -> list[Job]:
        submits = []
        for name in names:
            wrapped = f"exec >{shlex.quote(f'/tmp/{name}.out')} 2>&1\n{script}\n"
            submits.append(f"printf %s {shlex.quote(wrapped)} | " + shlex.join(
                ["/opt/torque/bin/qsub", "-N", name, "-n", "-k", "oe"]))  # -n: a whole node
        answer = lab.run_on(lab.head, ("sh", "-ec", "\n".join(submits)),
                            env={"PBS_DEFAULT": lab.head}, user=lab.user)
        ids = [line.strip() for line in answer.splitlines() if line.strip()]
        return [Job(i, f"/tmp/{name}.out") for i, name in zip(ids, names, strict=True)]

    def job_states(self, lab: BatchLab) -> dict[str, JobState]:
        # qstat's states: Q queued, H held, W waiting for its time, T moving, R running,
        # E exiting after its script ended, C completed (kept for keep_completed seconds,
        # with its comp_time); qtime, start_time and comp_time are unix seconds
        root = ET.fromstring(self._client(lab, "qstat", "-x") or "<Data/>")
        out: dict[str, JobState] = {}
        for job in root.iter("Job"):
            code, status = job.findtext("job_state") or "", job.findtext("exit_status")
            if code == "C":
                state = DONE if status in (None, "0") else FAILED
            else:
                state = RUNNING if code in ("R", "E") else WAITING
            out[job.findtext("Job_Id") or ""] = JobState(
                state, _epoch(job.findtext("qtime")),
                _epoch(job.findtext("start_time")) if state != WAITING else None,
                _epoch(job.findtext("comp_time")) if state == DONE else None)
        return out

    def states(self, lab: BatchLab) -> dict[str, str]:
        root = ET.fromstring(self._client(lab, "pbsnodes", "-x") or "<Data/>")
        return {(n.findtext("name") or ""): (n.findtext("state") or "")
                for n in root.iter("Node")}

    def running_on(self, lab: BatchLab, job: Job) -> str | None:
        shown = self._client(lab, "qstat", "-f", "-1", job.id)
        fields = dict(line.strip().split(" = ", 1) for line in shown.splitlines()
                      if " = " in line)
        where = fields.get("exec_host", "").split("/")[0]
        return where if fields.get("job_state") in ("R", "E", "C") and where else None

    def finished(self, lab: BatchLab, job: Job) -> str | None:
        # pbs_server keeps a completed job for its keep_completed seconds (TORQUE's 300).
        shown = self._client(lab, "qstat", "-f", "-1", job.id)
        fields = dict(line.strip().split(" = ", 1) for line in shown.splitlines()
                      if " = " in line)
        if fields.get("job_state") != "C":
            return None
        return f"completed, exit {fields.get('exit_status', '?')}"

    def incarnation(self, lab: BatchLab, node: str) -> str:
        # pbs_mom reports no start time of its own; `rectime` is when pbs_server received
        # its last status report (every $status_update_time, 10 s): a value later than the
        # kill can only come from a new pbs_mom.
        root = ET.fromstring(self._client(lab, "pbsnodes", "-x", node) or "<Data/>")
        status = root.findtext("Node/status") or ""
        return next((item.split("=", 1)[1] for item in status.split(",")
                     if item.startswith("rectime=")), "")

    def anew(self, before: str, now: str, *, killed_at: float) -> bool:
        # a time: a report received after the kill, by the head's clock (which follows the
        # pool hosts'), with 2 s of slack
        return now != before and now.isdigit() and int(now) > killed_at + 2


SCHEDULERS: dict[str, Scheduler] = {"slurm": SlurmOnVms(), "torque": TorqueOnVms()}


def shipped(cloud_type: str) -> dict[str, Any]:
    """The checkout's example manifest of `cloud_type` (manifests/TYPE.yaml), as data."""
    doc = yaml.safe_load((checkout() / "manifests" / f"{cloud_type}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def pool_size(cloud_type: str) -> int:
    """How many pool hosts the shipped manifest lists: the lab runs as many."""
    return len(shipped(cloud_type)["pool"])


@dataclass
class BatchLab(ImageLab):
    """`hosts` pool host agents and a head and two compute VMs of a batch cloud, its manifest
    the shipped one of `cloud_type` with the lab's names and places."""

    nodes: dict[str, int] = field(default_factory=lambda: {"head": 1, "compute": 2})
    #: Given: the compute role is elastic with these bounds (`elastic:` of the manifest),
    #: its candidates the lab's compute nodes.
    elastic: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.shipped = shipped(self.cloud_type)
        super().__post_init__()
        self.scheduler = SCHEDULERS[self.cloud_type]

    @property
    def head(self) -> str:
        return "lab-head-1"

    @property
    def computes(self) -> list[str]:
        return sorted(n for n in self.node_addresses if n.startswith("lab-compute-"))

    @property
    def user(self) -> str:
        """The manifest's first user: who submits the jobs."""
        return str(self.shipped["users"][0]["name"])

    def prepare_nodes(self) -> None:
        """The shipped secrets' files, made in the lab's folder, and the lab's SSH key."""
        self.remove_node_files()
        secrets = self.root / "secrets"
        secrets.mkdir(mode=0o700)
        for name in self.shipped.get("secrets") or {}:
            path = secrets / name
            path.write_bytes(os.urandom(1024))  # a munge key is 1024 random bytes, as mungekey
            path.chmod(0o600)
        self.make_ssh_key()

    def manifest(self, members: list[tuple[str, Netns | None, str]]) -> str:  # type: ignore[override]
        doc: dict[str, Any] = dict(self.shipped)
        doc["name"] = self.cloud_name
        doc["ensure"] = self.ensure
        doc["domain_template"] = "templates/domain.xml"
        hosts = [(n, a) for n, _, a in members if n.startswith("pm")]
        doc["pool"] = [{"name": n, "address": a, "libvirt_uri": self.libvirt_uri,
                        **({"fence": list(self.fence(n))} if self.fence else {})}
                       for n, a in hosts]
        roles: dict[str, Any] = {}
        for role, shipped in self.shipped["roles"].items():
            entries = shipped if isinstance(shipped, list) else []  # a list file's are bare
            roles[role] = []
            for i, (n, a) in enumerate((n, a) for n, _, a in members
                                       if n.startswith(f"lab-{role}-")):
                keep = dict(entries[i]) if i < len(entries) else {}
                keep.update(name=n, address=a, **self._disk(n))
                roles[role].append(keep)
        if self.elastic is not None:
            roles["compute"] = {
                "elastic": dict(self.elastic), "template": self._disk("{name}"),
                "addresses": [a for n, _, a in members if n.startswith("lab-compute-")],
                "names": "lab-compute-{index}"}
        doc["roles"] = roles
        doc["network"] = {"prefix_length": self.net.subnet.prefixlen}
        doc["template_values"] = dict(self.template_values)
        doc["secrets"] = {name: {**ref, "file": str(self.root / "secrets" / name)}
                          for name, ref in (self.shipped.get("secrets") or {}).items()}
        if self.ssh_key.with_suffix(".pub").exists():
            doc["node_access"] = {"ssh_authorized_keys": [
                self.ssh_key.with_suffix(".pub").read_text().strip()]}
        return yaml.safe_dump(doc, sort_keys=False)

    def _disk(self, node: str) -> dict[str, Any]:
        if self.image is None:
            return {"image": self.node_image}
        return {"image": str(self.overlay(node)), "base_image": str(self.image.qcow2),
                "overlay": True}

    # -- inside the guests -----------------------------------------------------------------
    def run_on(self, node: str, argv: tuple[str, ...] | list[str], *,
               env: dict[str, str] | None = None, user: str | None = None,
               stdin: str | None = None, timeout: float = 60) -> str:
        """`argv` run on `node` (as `user`, with `env`): its output; AssertionError naming
        the command and its error when it fails."""
        command = ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv]
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        if stdin is not None:
            command = ["sh", "-c", f"printf %s {shlex.quote(stdin)} | {shlex.join(command)}"]
        done = self.guest_ssh(node, *command, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{node}: {shlex.join(command)} failed (exit "
                                 f"{done.returncode}): {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def incarnation(self, node: str) -> str | None:
        """`Scheduler.incarnation` of `node` (None while the head cannot answer)."""
        try:
            return self.scheduler.incarnation(self, node)
        except (AssertionError, OSError, ValueError, ET.ParseError, subprocess.TimeoutExpired):
            return None

    def free(self, *nodes: str) -> bool:
        """The scheduler shows each of `nodes` free to take a job (False while it cannot
        answer, as while the head's scheduler starts)."""
        try:
            states = self.scheduler.states(self)
        except (AssertionError, OSError, ValueError, ET.ParseError, subprocess.TimeoutExpired):
            return False
        return all(states.get(n) == self.scheduler.free_word for n in nodes)

    def submit(self, script: str, *, name: str, node: str | None = None) -> Job:
        return self.scheduler.submit(self, script, name=name, node=node)

    def burst(self, script: str, *, names: list[str]) -> list[Job]:
        """`Scheduler.burst`: one job per name, each asking one node, submitted at once."""
        return self.scheduler.burst(self, script, names=names)

    def job_states(self) -> dict[str, JobState] | None:
        """`Scheduler.job_states` (None while the head cannot answer)."""
        try:
            return self.scheduler.job_states(self)
        except (AssertionError, OSError, ValueError, ET.ParseError, subprocess.TimeoutExpired):
            return None

    def finished(self, job: Job) -> str | None:
        """`Scheduler.finished` (None too while the head cannot answer)."""
        try:
            return self.scheduler.finished(self, job)
        except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def started_on(self, job: Job) -> str | None:
        try:
            return self.scheduler.running_on(self, job)
        except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def output(self, job: Job, node: str, *, bound: float = JOB) -> str:
        """The job's output on `node`, once its last line (`done`) is written."""
        def written() -> str | None:
            try:
                done = self.guest_ssh(node, "cat", job.out)
            except subprocess.TimeoutExpired:  # a guest slow to answer: asked again
                return None
            return done.stdout if done.returncode == 0 and "done\n" in done.stdout else None
        text, _ = poll(f"job {job.id}'s output on {node}", written, bound=bound, interval=3.0)
        return str(text)

    def run_job(self, *, name: str, node: str | None = None,
                bound: float = JOB) -> tuple[str, list[str]]:
        """A job submitted as the user (pinned to `node` if given) that prints its host, its
        user and its no_new_privs flag: (the node it ran on, its output's lines)."""
        job = self.submit(JOB_SCRIPT, name=name, node=node)
        where, _ = poll(f"job {job.id} started", lambda: self.started_on(job), bound=bound,
                        interval=3.0)
        return str(where), self.output(job, str(where), bound=bound).splitlines()

    def kill_and_recover(self, node: str, *, bound: float = BACK,
                         progress: Callable[[float], None] | None = None) -> Recovery:
        """kill -9 `node`'s qemu; wait until the scheduler shows it free again, then until a
        job pinned to it has started: the seconds from the kill to each.

        The scheduler notices a dead node only after its own timeouts (Slurm's SlurmdTimeout,
        300 s; TORQUE's node_check_rate, 30 s, which pbs_server was seen to let pass without
        marking the node down), and a VM brought back before may register again first:
        "free again" is free once the scheduler has shown the node not free since the kill,
        or has heard its new daemon (Slurm: a new SlurmdStartTime; TORQUE: a status report
        received after the kill, by the head's clock, which follows the pool hosts')."""
        old = qemu_pid(self.domain(node))
        # What the scheduler heard before the kill, read for sure: an unanswered question
        # (None) would take the old daemon's value for a new one after the kill.
        before, _ = poll(f"what the scheduler last heard from {node}",
                         lambda: self.incarnation(node), bound=bound, interval=2.0)
        gone = False

        def heard_anew(now: str | None) -> bool:
            return bool(now) and self.scheduler.anew(str(before), str(now),
                                                     killed_at=killed_at)

        def free_again() -> bool:
            nonlocal gone
            free = self.free(node)
            if not free or heard_anew(self.incarnation(node)):
                gone = True
            return gone and free

        killed_at = time.time()
        self.kill_vm(node)
        t0 = time.monotonic()
        poll(f"{node}'s domain running again", lambda: (p := qemu_pid(self.domain(node)))
             is not None and p != old and self.domains().get(node, None) is not None
             and self.domains()[node].running, bound=bound, interval=2.0, progress=progress)
        restarted = time.monotonic() - t0
        poll(f"{node} {self.scheduler.free_word} in the scheduler again, after its death",
             free_again, bound=bound, interval=2.0, progress=progress)
        free = time.monotonic() - t0
        job = self.submit(JOB_SCRIPT, name=f"after-kill-{int(time.time())}", node=node)
        where, _ = poll(f"job {job.id} started on {node}", lambda: self.started_on(job),
                        bound=bound, interval=1.0, progress=progress)
        started = time.monotonic() - t0
        lines = self.output(job, str(where), bound=bound).splitlines()
        return Recovery(node, restarted=restarted, free=free, started=started,
                        ran_on=str(where), lines=tuple(lines))


#: What every test job prints: where it ran, as whom, its no_new_privs flag, and `done` last.
JOB_SCRIPT = "hostname; id -un; grep NoNewPrivs /proc/self/status; echo done"


@dataclass(frozen=True)
class Recovery:
    """One compute VM killed and back, as the scheduler saw it (seconds from the kill)."""

    node: str
    #: a new qemu runs the node's domain
    restarted: float
    #: the scheduler shows the node free again
    free: float
    #: a job pinned to the node has started there
    started: float
    ran_on: str
    lines: tuple[str, ...]

    def line(self) -> str:
        return (f"kill -9 of {self.node}'s qemu: its domain running again after "
                f"{self.restarted:.0f} s, free in the scheduler after {self.free:.0f} s, a job "
                f"pinned to it started after {self.started:.0f} s")

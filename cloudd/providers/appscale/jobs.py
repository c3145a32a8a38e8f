"""The AppScale tools' long runs on the master, detached from the agent.

`appscale up` takes many minutes (AppScale starts its datastore and dashboard on every node),
far past what a leader's action may take (`ACT_WITHIN`), and it must not die with the agent
that started it (an upgrade restarts the agent; the tools would leave half a deployment). So
the master's agent starts a run as a job of its own: a shell in a session of its own runs the
tools' commands in order (`tools.plan`), each under `timeout` with its bound, appends their
output to `out`, and writes each command's exit status to `rc` as it ends (renamed into place,
so a reader sees the whole line or nothing). The job's folder says everything about it:

    <deployment>/.cloudd-job/verb   up | down | respawn
    <deployment>/.cloudd-job/pid    the job's shell (its session: every tool it started)
    <deployment>/.cloudd-job/out    the tools' output (its end is kept when read)
    <deployment>/.cloudd-job/rc     one exit status per command, once the job ended

`read` is what the leader hears (`JobView`): running, done or failed (with the tools' last
line), or lost (the job's shell is gone without its status: the machine restarted). A job is
started only when none runs (`start` refuses otherwise). `down` done means the deployment is
down; `up` or `respawn` done means it is up (`deployed`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cloudd import durable
from cloudd.providers.appscale.tools import ToolsCommand, message_of

#: The job folder's name, inside the deployment folder.
FOLDER = ".cloudd-job"
#: Characters of the tools' output kept when a job is read (its end).
TAIL = 4096


class Run(StrEnum):
    """What a job does: `respawn` is the tools' `down` (its failure kept) then `up`."""

    UP = "up"
    DOWN = "down"
    RESPAWN = "respawn"


class JobState(StrEnum):
    NONE = "none"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"


@dataclass(frozen=True)
class JobView:
    verb: str
    state: JobState
    message: str = ""

    @property
    def deployed(self) -> bool:
        """The last job left the deployment up."""
        return self.state is JobState.DONE and self.verb in (Run.UP, Run.RESPAWN)

    def pairs(self) -> dict[str, str]:
        return {"verb": self.verb, "state": self.state.value, "message": self.message}


def script(commands: tuple[ToolsCommand, ...]) -> str:
    """The job's shell script: each command under `timeout` with its bound, in its folder,
    its status appended to `rc`; a command that must succeed and failed ends the job."""
    lines = ["set -u", "umask 077", ": > rc.part"]
    for command in commands:
        required = command.must_succeed
        argv = ["timeout", "-k", "10", f"{command.within:g}", *command.argv]
        lines += [f"(cd {shlex.quote(str(command.cwd))} && exec {shlex.join(argv)}) "
                  ">> out 2>&1 < /dev/null",
                  "code=$?", 'echo "$code" >> rc.part']
        if required:
            lines.append('[ "$code" -eq 0 ] || { mv rc.part rc; exit "$code"; }')
    lines.append("mv rc.part rc")
    return "\n".join(lines) + "\n"


def read(folder: Path) -> JobView:
    """The job of the deployment `folder`, as it stands."""
    job = folder / FOLDER
    try:
        verb = (job / "verb").read_text().strip()
    except FileNotFoundError:
        return JobView("", JobState.NONE)
    try:
        text = (job / "rc").read_text()
    except FileNotFoundError:
        if _alive(job):
            return JobView(verb, JobState.RUNNING)
        try:  # the shell writes `rc` last: it may have done so since the first look
            text = (job / "rc").read_text()
        except FileNotFoundError:
            return JobView(verb, JobState.LOST, "the job's shell is gone without its status")
    out = _tail(job / "out")  # after `rc`: complete by then
    try:
        codes = [int(c) for c in text.split()]
    except ValueError:
        return JobView(verb, JobState.FAILED, "the job's status file is not numbers")
    last = message_of(out)
    if codes and codes[-1] == 0 and (verb != Run.RESPAWN or len(codes) == 2):
        return JobView(verb, JobState.DONE, last)
    code = codes[-1] if codes else -1
    why = "ran past its bound" if code in (124, 137) else f"exited with {code}"
    return JobView(verb, JobState.FAILED, f"appscale {verb} {why}: {last}"[:400])


def start(folder: Path, verb: Run, commands: tuple[ToolsCommand, ...], *,
          env: dict[str, str]) -> JobView:
    """Start `verb` as the deployment's job, unless one runs (then that one's view)."""
    now = read(folder)
    if now.state is JobState.RUNNING:
        return now
    job = folder / FOLDER
    job.mkdir(mode=0o700, exist_ok=True)
    for name in ("rc", "rc.part", "out", "pid"):
        (job / name).unlink(missing_ok=True)
    durable.write_durable(job / "verb", f"{verb.value}\n".encode(), mode=0o600)
    proc = subprocess.Popen(["/bin/sh", "-c", script(commands)], cwd=job, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    durable.write_durable(job / "pid", f"{proc.pid} {_boot()} {_started(proc.pid)}\n".encode(),
                          mode=0o600)
    return JobView(verb.value, JobState.RUNNING)


def _alive(job: Path) -> bool:
    """The job's shell still runs: its pid, in this boot, started when the job's did (a pid
    the system gave to another process since is not the job)."""
    try:
        pid, boot, started = (job / "pid").read_text().split()
    except (FileNotFoundError, ValueError):
        return False
    if boot != _boot() or started != _started(int(pid)):
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(int(pid), os.WNOHANG)  # reaped if it is this agent's and ended
    return _started(int(pid)) == started


def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def _started(pid: int) -> str:
    """The process's start time (clock ticks since boot), "" when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] == "Z" else fields[19]


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""

